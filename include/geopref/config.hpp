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

// Loop unrolling hints for device code: `#pragma unroll` (GEOPREF_UNROLL) and
// `#pragma unroll 1` (GEOPREF_NO_UNROLL) under nvcc; nothing for a host
// compiler (the CPU tests of the arithmetic, the host emulator), which would
// warn about an unknown pragma. Device code uses these, never the bare pragma.
#if defined(__CUDA_ARCH__)
#define GEOPREF_UNROLL _Pragma("unroll")
#define GEOPREF_NO_UNROLL _Pragma("unroll 1")
#else
#define GEOPREF_UNROLL
#define GEOPREF_NO_UNROLL
#endif

#define GEOPREF_VERSION_MAJOR 0
#define GEOPREF_VERSION_MINOR 3
#define GEOPREF_VERSION_PATCH 0
