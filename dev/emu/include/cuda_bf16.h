// dev/emu/include/cuda_bf16.h — __nv_bfloat16 for the host emulator:
// storage and bit-exact round-to-nearest-even conversions (NaN becomes
// 0x7fff, as CUDA's host conversion does). Checked against Eigen::bfloat16
// in dev/emu/test_emu.cpp.
#pragma once

#include <cstdint>

#include "cuda_runtime.h"

struct __nv_bfloat16 {
  unsigned short __x;
};

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even; overflow reaches infinity
  return __nv_bfloat16{static_cast<unsigned short>(x >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 b) {
  return __uint_as_float(static_cast<uint32_t>(b.__x) << 16);
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
