// geopref/config.hpp — portability macros shared by host-only and CUDA code.
#pragma once

// GEOPREF_HD marks functions that the CPU reference and the CUDA kernels share
// (the loss functors). Under nvcc they are __host__ __device__; under a plain
// C++ compiler the macro is empty, so the same code builds without CUDA.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define GEOPREF_HD __host__ __device__
#define GEOPREF_HD_INLINE __host__ __device__ __forceinline__
#else
#define GEOPREF_HD
#define GEOPREF_HD_INLINE inline
#endif

#define GEOPREF_VERSION_MAJOR 0
#define GEOPREF_VERSION_MINOR 1
#define GEOPREF_VERSION_PATCH 0
