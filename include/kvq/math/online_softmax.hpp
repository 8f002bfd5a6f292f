// Online softmax state of one query row (Milakov & Gimelshein; FlashAttention),
// in the exp2 domain: scores are pre-multiplied by log2(e).
#pragma once

#include <cmath>

#include "kvq/detail/macros.hpp"
#include "kvq/math/float_bits.hpp"

namespace kvq::math {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

KVQ_HOST_DEVICE float exp2_f(float x) {
#if KVQ_DEVICE_CODE
  return exp2f(x);
#else
  return std::exp2(x);
#endif
}

/// Running max m and running sum l of 2^(s − m) over the scores seen so far.
struct OnlineSoftmax {
  float max;  ///< -inf while no score has been seen.
  float sum;

  static KVQ_HOST_DEVICE OnlineSoftmax empty() { return {bits_as_float(0xff800000u), 0.0f}; }

  /// Folds in a block whose largest score is block_max; returns the factor by which
  /// previously accumulated sums and outputs must be multiplied. The caller then adds
  /// 2^(s − max) for each score of the block to `sum` (and to its outputs).
  KVQ_HOST_DEVICE float rescale_to(float block_max) {
    const float new_max = block_max > max ? block_max : max;
    // A row that has seen only -inf scores keeps factor 1 and max -inf (no NaN from inf - inf).
    const float factor = new_max == max ? 1.0f : exp2_f(max - new_max);
    sum *= factor;
    max = new_max;
    return factor;
  }
  /// The weight of a score under the current max (0 for -inf scores and for an empty row).
  KVQ_HOST_DEVICE float weight(float s) const { return max == bits_as_float(0xff800000u) ? 0.0f : exp2_f(s - max); }
  /// Merges another row state; returns the factors for this and the other accumulators.
  KVQ_HOST_DEVICE void merge(const OnlineSoftmax& o, float* self_factor, float* other_factor) {
    const float m = o.max > max ? o.max : max;
    const float ninf = bits_as_float(0xff800000u);
    *self_factor = max == ninf ? 0.0f : exp2_f(max - m);
    *other_factor = o.max == ninf ? 0.0f : exp2_f(o.max - m);
    sum = sum * *self_factor + o.sum * *other_factor;
    max = m;
  }
  /// Natural-log LSE of the row in the original (natural) score units.
  KVQ_HOST_DEVICE float lse() const {
#if KVQ_DEVICE_CODE
    return (max + log2f(sum)) * kLn2;
#else
    return (max + std::log2(sum)) * kLn2;
#endif
  }
};

}  // namespace kvq::math
