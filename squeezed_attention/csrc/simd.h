// Vector helpers shared by the squeeze_mobile CPU kernels: GCC vector types (one AVX-512 register, or two
// AVX2 ones, or plain loops elsewhere), unaligned loads/stores, horizontal sums and SLEEF's vectorised exp
// (exported by libtorch_cpu; PyTorch's own vectorised math uses it).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) || defined(__AVX512F__)
extern "C" __m256d Sleef_expd4_u10(__m256d);
extern "C" __m256 Sleef_expf8_u10(__m256);
#endif
#if defined(__AVX512F__)
extern "C" __m512d Sleef_expd8_u10(__m512d);
extern "C" __m512 Sleef_expf16_u10(__m512);
#endif

namespace squeeze_simd {

typedef double v8d __attribute__((vector_size(64)));  // 8 doubles
typedef float v16f __attribute__((vector_size(64)));  // 16 floats

inline v8d load8(const double* p) {
  v8d v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(double* p, v8d v) { std::memcpy(p, &v, sizeof v); }

inline v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float hsum(v16f v) {
#if defined(__AVX512F__)
  __m512 x;
  std::memcpy(&x, &v, sizeof x);
  return _mm512_reduce_add_ps(x);
#else
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
#endif
}

// x[i] = exp(x[i]) for a run of floats (exp(-inf) = 0).
inline void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, Sleef_expf16_u10(_mm512_loadu_ps(x + i)));
#endif
#if defined(__AVX2__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, Sleef_expf8_u10(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

// exp of 8 doubles (SLEEF, 1-ulp).
inline v8d exp8(v8d x) {
#if defined(__AVX512F__)
  __m512d v;
  std::memcpy(&v, &x, sizeof v);
  v = Sleef_expd8_u10(v);
  std::memcpy(&x, &v, sizeof v);
#elif defined(__AVX2__)
  __m256d lo, hi;
  std::memcpy(&lo, &x, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof lo, sizeof hi);
  lo = Sleef_expd4_u10(lo);
  hi = Sleef_expd4_u10(hi);
  std::memcpy(&x, &lo, sizeof lo);
  std::memcpy(reinterpret_cast<char*>(&x) + sizeof lo, &hi, sizeof hi);
#else
  for (int i = 0; i < 8; ++i) x[i] = std::exp(x[i]);
#endif
  return x;
}

}  // namespace squeeze_simd
