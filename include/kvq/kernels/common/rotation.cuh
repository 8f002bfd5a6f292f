// The randomized Hadamard rotation of math/rotation.hpp on one row held by a warp: lane
// l holds the E = D/32 consecutive elements [l·E, l·E + E) in float. The arithmetic is
// that of math::hadamard_rotate (signs, butterfly stages h = 1, 2, ..., D/2, one
// multiplication by c), element for element, so the result has the same bits as the
// CPU reference: stages h < E stay in the lane, stages h >= E pair lane l with lane
// l ^ (h/E) through one shuffle per element; the lane of the lower index computes
// a + b, the other a − b with a the partner's element, as the reference does.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/math/rotation.hpp"

namespace kvq::kernels::common {

/// x <- R·x for the row the warp holds (every lane of the warp must call it).
template <int D>
KVQ_DEVICE void warp_hadamard_rotate(float (&x)[D / 32], int lane) {
  static_assert(math::rotation_supports(D), "the Hadamard rotation needs a head dim that is a power of two in [32, 512]");
  constexpr int E = D / 32;
  // Signs: the lane's E elements lie in word (lane·E)/64 of the sign stream (E <= 16 < 64,
  // and E divides 64, so a lane's elements never straddle two words).
  std::uint64_t word = 0;
  KVQ_PRAGMA_UNROLL
  for (int w = 0; w < (D + 63) / 64; ++w)
    if ((lane * E) / 64 == w) word = math::rotation_sign_word(w);
  const unsigned bits = static_cast<unsigned>(word >> ((lane * E) % 64));
  KVQ_PRAGMA_UNROLL
  for (int i = 0; i < E; ++i)
    if ((bits >> i) & 1u) x[i] = -x[i];
  // Butterflies within the lane: the stages h < E, a transform of the lane's E elements.
  math::detail::walsh_hadamard<E>(x);
  // Butterflies across lanes.
  KVQ_PRAGMA_UNROLL
  for (int m = 1; m < 32; m *= 2) {
    const bool upper = (lane & m) != 0;
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i < E; ++i) {
      const float other = __shfl_xor_sync(0xffffffffu, x[i], m);
      x[i] = upper ? other - x[i] : x[i] + other;
    }
  }
  // __fmul_rn: the rounded product is the rotated element; nvcc must not contract it into
  // the caller's next addition.
  constexpr float c = math::rotation_scale<D, float>();
  KVQ_PRAGMA_UNROLL
  for (int i = 0; i < E; ++i) x[i] = __fmul_rn(x[i], c);
}

}  // namespace kvq::kernels::common
