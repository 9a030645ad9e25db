// dev/emu/include/cublas_v2.h — the part of cuBLAS that geopref's fused-linear
// path uses (geopref/cuda/fused_linear.cuh), for the host emulator: a handle
// with a stream and a pointer mode, and cublasGemmEx over half / bfloat16 /
// float with fp32 accumulation, queued on the handle's stream like a kernel
// (so it is ordered with the library's launches exactly as on a GPU).
//
// Semantics are cuBLAS's (column-major, C = alpha·op(A)·op(B) + beta·C, C not
// read when beta == 0, the result rounded once to C's type, round to nearest
// even). The accumulation order (p = 0 … k−1, one float) is not cuBLAS's:
// the emulator checks indexing, strides and ordering, not GEMM rounding.
#pragma once

#ifndef GEOPREF_HOST_EMULATION
#error "dev/emu/include is the host emulator of CUDA: define GEOPREF_HOST_EMULATION to use it"
#endif

#include <cstdint>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

enum cublasStatus_t : int {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasPointerMode_t : int { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 };
enum cublasComputeType_t : int { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t : int { CUBLAS_GEMM_DEFAULT = -1 };
enum cudaDataType_t : int { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
using cudaDataType = cudaDataType_t;

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasPointerMode_t mode = CUBLAS_POINTER_MODE_HOST;
  // Not cuBLAS: the products this handle accepted (m, n > 0), so a test can
  // count the GEMMs of a call (fused linear: three per segment in one pass,
  // four per chunk in two).
  long long gemm_calls = 0;
};
using cublasHandle_t = cublasContext*;

inline cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext{};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  cudaStreamSynchronize(handle->stream);  // as cuBLAS: work in flight completes first
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

namespace cuda_emu {
/// The handle's setters and getters: one field each, NOT_INITIALIZED for a
/// null handle.
template <class T>
cublasStatus_t set_field(cublasHandle_t handle, T cublasContext::*field, T value) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->*field = value;
  return CUBLAS_STATUS_SUCCESS;
}
template <class T>
cublasStatus_t get_field(cublasHandle_t handle, T cublasContext::*field, T* value) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  *value = handle->*field;
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace cuda_emu

inline cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  return cuda_emu::set_field(handle, &cublasContext::stream, stream);
}
inline cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  return cuda_emu::get_field(handle, &cublasContext::stream, stream);
}
inline cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
  return cuda_emu::set_field(handle, &cublasContext::mode, mode);
}
inline cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t* mode) {
  return cuda_emu::get_field(handle, &cublasContext::mode, mode);
}

namespace cuda_emu {
inline float gemm_load(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
inline void gemm_store(void* p, cudaDataType_t t, int64_t i, float x) {
  switch (t) {
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(x); break;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(x); break;
    default: static_cast<float*>(p)[i] = x;
  }
}
inline bool gemm_type_ok(cudaDataType_t t) {
  return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF;
}
}  // namespace cuda_emu

/// Column-major: C[m, n] (ldc) = alpha · op(A)[m, k] · op(B)[k, n] + beta · C.
inline cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k,
                                   const void* alpha, const void* A, cudaDataType_t Atype, int lda,
                                   const void* B, cudaDataType_t Btype, int ldb, const void* beta,
                                   void* C, cudaDataType_t Ctype, int ldc,
                                   cublasComputeType_t computeType, cublasGemmAlgo_t /*algo*/) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
  if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) ||
      ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  // The combinations cuBLAS documents for CUBLAS_COMPUTE_32F that geopref uses:
  // A and B of one type, C of that type or float.
  if (computeType != CUBLAS_COMPUTE_32F || Atype != Btype || !cuda_emu::gemm_type_ok(Atype) ||
      !(Ctype == Atype || Ctype == CUDA_R_32F))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (handle->mode != CUBLAS_POINTER_MODE_HOST || alpha == nullptr || beta == nullptr)
    return CUBLAS_STATUS_NOT_SUPPORTED;  // the emulator models host scalars only
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  ++handle->gemm_calls;
  // One emulated thread does the whole product, queued like a kernel.
  cuda_emu::launch(dim3(1), dim3(1), handle->stream, [=] {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (int64_t p = 0; p < k; ++p) {
          const int64_t ia = transa == CUBLAS_OP_N ? i + p * lda : p + i * lda;
          const int64_t ib = transb == CUBLAS_OP_N ? p + j * ldb : j + p * ldb;
          acc += cuda_emu::gemm_load(A, Atype, ia) * cuda_emu::gemm_load(B, Btype, ib);
        }
        float r = a * acc;
        if (b != 0.0f) r += b * cuda_emu::gemm_load(C, Ctype, i + j * ldc);
        cuda_emu::gemm_store(C, Ctype, i + j * ldc, r);
      }
  });
  return cudaPeekAtLastError() == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                              : CUBLAS_STATUS_EXECUTION_FAILED;
}
