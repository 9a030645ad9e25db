// geopref/cuda/detail/device.cuh — device helpers shared by the kernels:
// element conversion, 16-byte vectors, deterministic block reductions, the
// status flag.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "geopref/cuda/detail/arith.cuh"
#include "geopref/status.hpp"

// Template kernels get hidden visibility so that two shared libraries that
// both include these headers do not resolve each other's instantiations
// (cuCollections does the same).
#define GEOPREF_KERNEL __attribute__((visibility("hidden"))) __global__

namespace geopref::cuda::detail {

// ---------------------------------------------------------------------------
// Element conversion. fp32 is the arithmetic type of every kernel.

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// W elements of T that fill 16 bytes: one ld.global.v4 / st.global.v4.
template <class T>
struct vec_width {
  static constexpr int value = static_cast<int>(16 / sizeof(T));
};

/// W elements of U moved as whole 16-byte words (W·sizeof(U) is 16 or 32).
template <class U, int W>
struct alignas(16) vec {
  U v[W];
};

/// The W = 16 / sizeof(T) elements of a 16-byte word as floats. bfloat16 is
/// the upper half of a float, so its unpacking is a shift and a mask.
template <class T>
__device__ __forceinline__ void unpack(const uint4& w, float (&x)[16 / sizeof(T)]) {
  const auto& v = *reinterpret_cast<const vec<T, 16 / sizeof(T)>*>(&w);
GEOPREF_UNROLL
  for (int e = 0; e < static_cast<int>(16 / sizeof(T)); ++e) x[e] = to_float(v.v[e]);
}
template <>
__device__ __forceinline__ void unpack<__nv_bfloat16>(const uint4& w, float (&x)[8]) {
  const uint32_t u[4] = {w.x, w.y, w.z, w.w};
GEOPREF_UNROLL
  for (int i = 0; i < 4; ++i) {
    x[2 * i] = bits_float(u[i] << 16);               // element 2i: the low half
    x[2 * i + 1] = bits_float(u[i] & 0xffff0000u);   // element 2i + 1: the high half
  }
}

/// The larger of two values of T (a NaN loses to a number, as with fmaxf).
template <class T>
__device__ __forceinline__ T max_of(T a, T b) {
  return to_float(a) >= to_float(b) || to_float(b) != to_float(b) ? a : b;
}

/// Per 16-bit lane, the larger of the two values packed in a and in b: one
/// max.{bf16,f16}x2 on sm_80 and later (its NaN rule is fmaxf's); lane by
/// lane on older devices (sm_75 has no packed 16-bit max) and on the host
/// (emulator), with the same result.
template <class T>
__device__ __forceinline__ uint32_t max_packed(uint32_t a, uint32_t b) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>,
                "packed 16-bit types only");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm("max.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  else
    asm("max.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
#else
  T ha[2], hb[2];
  memcpy(ha, &a, 4);
  memcpy(hb, &b, 4);
  for (int h = 0; h < 2; ++h) ha[h] = max_of(ha[h], hb[h]);
  uint32_t r;
  memcpy(&r, ha, 4);
  return r;
#endif
}

/// The largest of the values in U 16-byte words of T (fmaxf's NaN rule): a
/// tree of packed maxima for the 16-bit types, fmaxf for float.
template <class T, int U>
__device__ __forceinline__ float max_words(const uint4 (&w)[U]) {
  if constexpr (sizeof(T) == 4) {
    float m = bits_float(w[0].x);
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u) {
      if (u > 0) m = fmaxf(m, bits_float(w[u].x));
      m = fmaxf(m, bits_float(w[u].y));
      m = fmaxf(m, bits_float(w[u].z));
      m = fmaxf(m, bits_float(w[u].w));
    }
    return m;
  } else {
    uint32_t p[U];
GEOPREF_UNROLL
    for (int u = 0; u < U; ++u)
      p[u] = max_packed<T>(max_packed<T>(w[u].x, w[u].y), max_packed<T>(w[u].z, w[u].w));
GEOPREF_UNROLL
    for (int step = 1; step < U; step *= 2)
GEOPREF_UNROLL
      for (int u = 0; u + step < U; u += 2 * step) p[u] = max_packed<T>(p[u], p[u + step]);
    const uint4 last = make_uint4(p[0], 0u, 0u, 0u);
    float x[16 / sizeof(T)];
    unpack<T>(last, x);
    return fmaxf(x[0], x[1]);
  }
}

// ---------------------------------------------------------------------------
// 16-byte global accesses with cache hints, for data that is touched once.
// Written in PTX on the device; plain accesses on the host (emulator).

/// A GPU stops a kernel that makes a misaligned 16-byte access (a misaligned
/// address error); the host emulator faults the same way, so a wrong
/// alignment decision shows as cuda_error there too, not as host behaviour.
__device__ __forceinline__ void check_aligned16(const void* p) {
#if defined(GEOPREF_HOST_EMULATION)
  if (reinterpret_cast<uintptr_t>(p) % 16u != 0) cuda_emu::fault("misaligned 16-byte global access");
#else
  (void)p;
#endif
}

/// A 16-byte load not kept in L1. Coherent = false: read-only for the whole
/// kernel (the forward's logits), the non-coherent path; true: read once by
/// a kernel that may write the same memory (the backward in place).
template <bool Coherent>
__device__ __forceinline__ uint4 load_no_allocate(const uint4* p) {
#if defined(__CUDA_ARCH__)
  uint4 v;
  if constexpr (Coherent)
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  else
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  return v;
#else
  check_aligned16(p);
  return *p;
#endif
}
__device__ __forceinline__ uint4 load_once(const uint4* p) { return load_no_allocate<false>(p); }
__device__ __forceinline__ uint4 load_once_rw(const uint4* p) { return load_no_allocate<true>(p); }

/// A streaming store (evict first). The "memory" clobber keeps every later
/// access, in particular a plain store to the same address, after it.
__device__ __forceinline__ void store_once(uint4* p, const uint4& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
#else
  check_aligned16(p);
  *p = v;
#endif
}

/// Converts W floats to Out and stores them at p (16-byte aligned) as
/// W·sizeof(Out) / 16 streaming 16-byte stores.
template <class Out, int W>
__device__ __forceinline__ void store_vector(Out* p, const float (&y)[W]) {
  vec<Out, W> o;
GEOPREF_UNROLL
  for (int e = 0; e < W; ++e) o.v[e] = from_float<Out>(y[e]);
  constexpr int WORDS = static_cast<int>(sizeof(vec<Out, W>) / 16);
  const auto* words = reinterpret_cast<const uint4*>(&o);
  auto* dst = reinterpret_cast<uint4*>(p);
GEOPREF_UNROLL
  for (int i = 0; i < WORDS; ++i) store_once(dst + i, words[i]);
}

// ---------------------------------------------------------------------------
// Deterministic reductions: a fixed shuffle tree inside each warp, then warp
// 0 combines the per-warp values in warp order. No atomics, so the result
// depends only on the inputs and BLOCK.

__device__ __forceinline__ lse_state shfl_xor(lse_state v, int lane_mask) {
  return {__shfl_xor_sync(0xffffffffu, v.m, lane_mask),
          __shfl_xor_sync(0xffffffffu, v.s, lane_mask)};
}
__device__ __forceinline__ double shfl_xor(double v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}
__device__ __forceinline__ long long shfl_xor(long long v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}

struct merge_lse {
  __device__ lse_state operator()(lse_state a, lse_state b) const { return lse_merge(a, b); }
};
struct plus {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

/// Reduces one value per thread over the block; every thread gets the result.
/// `smem` holds BLOCK / 32 values. Contains two __syncthreads(), so every
/// thread of the block must call it.
template <int BLOCK, class T, class Op>
__device__ T block_reduce(T v, Op op, T identity, T* smem) {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "BLOCK must be a multiple of 32, at most 1024");
  constexpr int WARPS = BLOCK / 32;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
GEOPREF_UNROLL
  for (int o = 16; o > 0; o /= 2) v = op(v, shfl_xor(v, o));
  if (lane == 0) smem[warp] = v;
  __syncthreads();  // all per-warp values are in smem
  T r = identity;
GEOPREF_UNROLL
  for (int w = 0; w < WARPS; ++w) r = op(r, smem[w]);  // every thread, same order
  __syncthreads();  // smem may be reused by the caller after this
  return r;
}

// ---------------------------------------------------------------------------
// The device-side status flag (see workspace.cuh: STATUS_NONE, atomicMin).

__device__ __forceinline__ void record(int* flag, status s) {
  atomicMin(flag, static_cast<int>(s));
}

/// kernel<<<grid, block, 0, stream>>>(args...): every launch of the library
/// goes through here. Under GEOPREF_HOST_EMULATION (dev/emu: a C++ build
/// with the emulator's cuda_runtime.h, dev/emu/README.md) the kernel is queued
/// on the host's emulated stream instead; errors surface as with a real
/// launch (configuration: cudaGetLastError; faults while running: the next
/// synchronising call).
template <class... Params, class... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   Args&&... args) {
#if defined(GEOPREF_HOST_EMULATION)
  ::cuda_emu::launch(grid, block, stream, [=] { kernel(args...); });  // copies, as a launch does
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
#endif
}

/// 64-bit global thread index and stride for grid-stride loops.
__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace geopref::cuda::detail
