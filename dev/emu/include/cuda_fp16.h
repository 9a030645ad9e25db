// dev/emu/include/cuda_fp16.h — __half for the host emulator: storage and
// bit-exact round-to-nearest-even conversions (NaN becomes 0x7fff, as CUDA's
// host conversion does). Checked against Eigen::half in dev/emu/test_emu.cpp.
#pragma once

#include <cstdint>

#include "cuda_runtime.h"

struct __half {
  unsigned short __x;
};

inline __half __float2half_rn(float f) {
  const uint32_t x = __float_as_uint(f);
  const auto sign = static_cast<uint32_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  uint32_t r;
  if (ax > 0x7f800000u) {
    r = 0x7fffu;  // NaN
  } else if (ax >= 0x477ff000u) {
    r = sign | 0x7c00u;  // >= 65520 rounds to infinity
  } else if (ax <= 0x33000000u) {
    r = sign;  // <= 2^-25 rounds to (signed) zero: the tie at 2^-25 goes to even
  } else {
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t q, rem, halfway;
    if (e < 113) {  // half subnormal: units of 2^-24
      const uint32_t shift = 126 - e;
      q = m >> shift;
      rem = m & ((1u << shift) - 1);
      halfway = 1u << (shift - 1);
    } else {
      q = ((e - 112) << 10) | ((ax & 0x7fffffu) >> 13);
      rem = ax & 0x1fffu;
      halfway = 0x1000u;
    }
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;  // a carry moves into the exponent
    r = sign | q;
  }
  return __half{static_cast<unsigned short>(r)};
}

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.__x & 0x8000u) << 16;
  const uint32_t e = (h.__x >> 10) & 0x1fu, m = h.__x & 0x3ffu;
  uint32_t x;
  if (e == 0x1f) {
    x = sign | 0x7f800000u | (m << 13);  // inf, NaN keeps its payload
  } else if (e != 0) {
    x = sign | ((e + 112) << 23) | (m << 13);
  } else if (m == 0) {
    x = sign;
  } else {  // subnormal: normalise
    uint32_t mm = m, ee = 113;
    while ((mm & 0x400u) == 0) {
      mm <<= 1;
      --ee;
    }
    x = sign | (ee << 23) | ((mm & 0x3ffu) << 13);
  }
  return __uint_as_float(x);
}

inline __half __float2half(float f) { return __float2half_rn(f); }
