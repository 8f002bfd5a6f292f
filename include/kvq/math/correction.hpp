// The Jensen-bias correction of a quantized key's score (DESIGN.md section 3).
//
// With uniform noise ε_j ~ U(-Δ_j/2, Δ_j/2) on key element j and
// a_j = scale · q_j · Δ_j / 2:
//   log E[exp(scale · q·ε)] = Σ_j log(sinh(a_j)/a_j)        (Exact)
//                           ≈ Σ_j a_j²/6                      (Taylor2)
//                           ≈ Σ_j (a_j²/6 − a_j⁴/180)         (Taylor4)
// The corrected score of a cached key is ŝ − correction (natural-log units; a
// kernel in the exp2 domain multiplies it by log2(e) like the scores).
//
// Grouped forms used by kernels: for a set of elements that share one step Δ
// (a PerToken group of channels), with S2 = Σ q_j² and S4 = Σ q_j⁴ over the group:
//   Taylor2: scale²·Δ²·S2 / 24
//   Taylor4: scale²·Δ²·S2 / 24 − scale⁴·Δ⁴·S4 / 2880
#pragma once

#include <cmath>

#include "kvq/detail/macros.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::math {

namespace detail {
KVQ_HOST_DEVICE float log_f(float x) {
#if KVQ_DEVICE_CODE
  return logf(x);
#else
  return std::log(x);
#endif
}
KVQ_HOST_DEVICE float exp_f(float x) {
#if KVQ_DEVICE_CODE
  return expf(x);
#else
  return std::exp(x);
#endif
}
KVQ_HOST_DEVICE float log1p_f(float x) {
#if KVQ_DEVICE_CODE
  return log1pf(x);
#else
  return std::log1p(x);
#endif
}
}  // namespace detail

/// log(sinh(a)/a) for any real a, accurate in float for small and large |a|.
KVQ_HOST_DEVICE float log_sinhc(float a) {
  const float x = a < 0.0f ? -a : a;
  if (x < 0.25f) {
    // Series: x²/6 − x⁴/180 + x⁶/2835 − x⁸/37800; the next term is below 1e-9 relative.
    const float x2 = x * x;
    return x2 * (1.0f / 6.0f + x2 * (-1.0f / 180.0f + x2 * (1.0f / 2835.0f - x2 * (1.0f / 37800.0f))));
  }
  // sinh(x)/x = e^x (1 − e^{−2x}) / (2x): no overflow for large x.
  return x + detail::log1p_f(-detail::exp_f(-2.0f * x)) - detail::log_f(2.0f * x);
}

/// Double-precision log(sinh(a)/a), for the CPU reference: relative error below 1e-13
/// for every a. The closed form loses relative accuracy as a → 0 (its terms cancel to
/// a²/6; with log1p(−exp(−2a)) the error reached 1.5e-7 relative near a = 1e-3), so the
/// series runs up to |a| = 0.25, with terms through a¹⁶, and the closed form uses expm1.
KVQ_HOST_DEVICE double log_sinhc(double a) {
  const double x = a < 0.0 ? -a : a;
  if (x < 0.25) {
    const double x2 = x * x;
    return x2 * (1.0 / 6.0 +
                 x2 * (-1.0 / 180.0 +
                       x2 * (1.0 / 2835.0 +
                             x2 * (-1.0 / 37800.0 +
                                   x2 * (1.0 / 467775.0 +
                                         x2 * (-691.0 / 3831077250.0 +
                                               x2 * (2.0 / 127702575.0 + x2 * (-3617.0 / 2605132530000.0))))))));
  }
#if KVQ_DEVICE_CODE
  return x + ::log(-::expm1(-2.0 * x)) - ::log(2.0 * x);
#else
  return x + std::log(-std::expm1(-2.0 * x)) - std::log(2.0 * x);
#endif
}

/// The correction term of one element, given a = scale · q · Δ / 2.
template <Correction Mode, class T>
KVQ_HOST_DEVICE T correction_term(T a) {
  if constexpr (Mode == Correction::kNone) {
    return T(0);
  } else if constexpr (Mode == Correction::kTaylor2) {
    return a * a * (T(1) / T(6));
  } else if constexpr (Mode == Correction::kTaylor4) {
    const T a2 = a * a;
    return a2 * (T(1) / T(6)) - a2 * a2 * (T(1) / T(180));
  } else {
    return log_sinhc(a);
  }
}

/// Runtime-mode version of correction_term, for the reference and tests.
template <class T>
inline T correction_term(Correction mode, T a) {
  switch (mode) {
    case Correction::kNone: return correction_term<Correction::kNone>(a);
    case Correction::kTaylor2: return correction_term<Correction::kTaylor2>(a);
    case Correction::kTaylor4: return correction_term<Correction::kTaylor4>(a);
    case Correction::kExact: return correction_term<Correction::kExact>(a);
  }
  return T(0);
}

/// Grouped Taylor forms: the correction of a group of elements sharing step Δ,
/// from s2 = Σ q² and s4 = Σ q⁴ over the group. Exact has no grouped form.
template <Correction Mode>
KVQ_HOST_DEVICE float grouped_correction(float scale, float step, float s2, float s4) {
  static_assert(Mode != Correction::kExact, "Correction::kExact has no grouped form: sum correction_term per element");
  if constexpr (Mode == Correction::kNone) {
    return 0.0f;
  } else {
    const float c2 = scale * scale * step * step;  // (scale·Δ)²
    if constexpr (Mode == Correction::kTaylor2) {
      return c2 * s2 * (1.0f / 24.0f);
    } else {
      return c2 * s2 * (1.0f / 24.0f) - c2 * c2 * s4 * (1.0f / 2880.0f);
    }
  }
}

}  // namespace kvq::math
