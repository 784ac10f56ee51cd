// Element types and their conversion to and from the accumulation type.
// Host code sees half and bfloat16 as 16-bit structs (bit-compatible with at::Half / at::BFloat16);
// CUDA code adds Conv specialisations for __half / __nv_bfloat16 in diffalign/cuda_dtypes.cuh.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DA_HD __host__ __device__ __forceinline__
#define DA_UNROLL _Pragma("unroll")
#else
#define DA_HD inline
#define DA_UNROLL
#endif

namespace diffalign {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_float(bf16_t v) { return bits_to_float(uint32_t(v.bits) << 16); }
inline bf16_t float_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  // a select, not an early return: the CPU loops that store bfloat16 vectorise only without the branch
  return bf16_t{uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
}

inline float half_to_float(half_t v) {
  uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  uint32_t exp = (v.bits >> 10) & 0x1fu, man = v.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    float f = float(man) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}
inline half_t float_to_half(float f) {  // round to nearest even
  uint32_t u = float_to_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return half_t{uint16_t(sign | 0x7e00u)};          // NaN
  if (a >= 0x477ff000u) return half_t{uint16_t(sign | 0x7c00u)};         // overflow to inf
  if (a < 0x38800000u) {                                                   // subnormal or zero
    // value * 2^24 rounded to nearest even integer gives the subnormal mantissa
    float v = bits_to_float(a) * 16777216.0f;
    uint32_t m = uint32_t(v);
    float rem = v - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return half_t{uint16_t(sign | m)};
  }
  uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round
  return half_t{uint16_t(sign | (a >> 13))};
}

template <class T> struct Conv;
template <> struct Conv<float> {
  template <class A> DA_HD static A to(float v) { return A(v); }
  template <class A> DA_HD static float from(A v) { return float(v); }
};
template <> struct Conv<double> {
  template <class A> DA_HD static A to(double v) { return A(v); }
  template <class A> DA_HD static double from(A v) { return double(v); }
};
template <> struct Conv<half_t> {
  template <class A> static A to(half_t v) { return A(half_to_float(v)); }
  template <class A> static half_t from(A v) { return float_to_half(float(v)); }
};
template <> struct Conv<bf16_t> {
  template <class A> static A to(bf16_t v) { return A(bf16_to_float(v)); }
  template <class A> static bf16_t from(A v) { return float_to_bf16(float(v)); }
};

template <class A, class T> DA_HD A to_acc(T v) { return Conv<T>::template to<A>(v); }
template <class T, class A> DA_HD T from_acc(A v) { return Conv<T>::template from<A>(v); }

}  // namespace diffalign
