// The randomized Hadamard rotation of keys (DESIGN.md section 7, "Rotated keys"),
// shared by the CPU reference and the kernels.
//
// For a head dim D (a power of two, 32..512) the rotation is the orthogonal matrix
//
//   R = c · W · S,   c = 1/sqrt(D),  W = the D x D Walsh-Hadamard matrix (entries ±1,
//                    W_ij = (−1)^popcount(i & j), symmetric, W·W = D·I),
//                    S = diag(s_0, ..., s_{D−1}), s_j = rotation_sign(j) = ±1,
//
// applied to one row of D elements (one token of one head): x' = R·x. R is orthogonal
// (Rᵀ·R = c²·S·W·W·S = I), so q·k = (R·q)·(R·k): a query rotated once scores rotated
// keys exactly like the originals. Rotating spreads an outlier channel over all D
// channels (its energy x_j² becomes x_j²/D per channel), so the per-token ranges, and
// with them the quantization steps, shrink and the uniform noise model of the
// correction holds.
//
// Arithmetic, in this order, so that a kernel can produce the same bits:
//   1. signs:  x_j <- −x_j where s_j = −1 (exact: a sign flip, no rounding);
//   2. butterflies, stages h = 1, 2, 4, ..., D/2 in that order; in stage h every pair
//      (i, i + h) with (i & h) == 0 becomes (a + b, a − b), a = x_i, b = x_{i+h}
//      (one float addition and one float subtraction, each rounded; the pairs of a
//      stage are independent, so their order within the stage does not matter);
//   3. one float multiplication of every element by c = rotation_scale<D, float>(), the
//      float nearest to 1/sqrt(D) (the same float as 1.0/sqrt(double(D)) rounded once):
//      2^-k for D = 4^k, 2^-k · 0x1.6a09e6p-1f (1/sqrt(2) in float) for D = 2·4^k;
//      D = 32, 64, 128, 256, 512: 0x1.6a09e6p-3f, 0.125f, 0x1.6a09e6p-4f, 0.0625f,
//      0x1.6a09e6p-5f.
// Only additions, subtractions and one final multiplication: nothing a compiler may
// contract into a fused multiply-add (kvq never builds with fast-math). A kernel must
// keep the stage order and must not fold the final multiplication into a later
// operation (the rotated key is the rounded product).
//
// The inverse Rᵀ = c · S · W: the same butterflies, then the multiplication by c, then
// the signs (sign flips commute with round-to-nearest, so the signs may equally come
// before the multiplication: the bits are the same).
//
// Why a fixed sign vector rather than one supplied by the caller: a cache written with
// rotation then needs no data beyond its layout type (the signs are part of the
// format, like the packing), engines need not create, store or ship a sign vector per
// model or layer, and the kernels read the signs from a compile-time constant. Random
// signs matter only in that they are not aligned with the data (a plain Walsh-Hadamard
// transform maps a constant row to one spike); any fixed pseudo-random choice serves.
// A caller-supplied sign vector (or a learned rotation) is a possible later extension
// of the layout's Rotation parameter.
//
// The sign generator: splitmix64 (Steele, Lea, Flood 2014; the generator that seeds
// xoshiro) started at kRotationSeed. Word w (w = 0, 1, ...) of the stream is
// splitmix64_mix(kRotationSeed + (w + 1)·0x9E3779B97F4A7C15) (modulo 2^64), and
// s_j = −1 if bit (j mod 64) of word (j / 64) is set, +1 otherwise. The vector of a
// smaller D is the prefix of that of a larger D.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"

namespace kvq::math {

/// The seed of the rotation's sign stream: the ASCII bytes of "kvq_rot1".
inline constexpr std::uint64_t kRotationSeed = 0x6b76715f726f7431ull;
/// The largest head dim the rotation supports (the number of signs defined).
inline constexpr int kRotationMaxDim = 512;

/// splitmix64's output function of one state.
KVQ_HOST_DEVICE constexpr std::uint64_t splitmix64_mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Output w (0-based) of splitmix64 started at state `seed`.
KVQ_HOST_DEVICE constexpr std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t w) {
  return splitmix64_mix(seed + (w + 1) * 0x9e3779b97f4a7c15ull);
}

/// Word w of the rotation's signs: bit b set means s_{64w + b} = −1.
KVQ_HOST_DEVICE constexpr std::uint64_t rotation_sign_word(int w) {
  return splitmix64_at(kRotationSeed, static_cast<std::uint64_t>(w));
}

/// Whether s_j = −1.
KVQ_HOST_DEVICE constexpr bool rotation_sign_negative(int j) { return ((rotation_sign_word(j / 64) >> (j % 64)) & 1u) != 0; }

/// s_j = ±1, channel j in [0, kRotationMaxDim).
KVQ_HOST_DEVICE constexpr float rotation_sign(int j) { return rotation_sign_negative(j) ? -1.0f : 1.0f; }

/// Whether D is a head dim the rotation supports: a power of two in [32, 512].
KVQ_HOST_DEVICE constexpr bool rotation_supports(int d) { return d >= 32 && d <= kRotationMaxDim && (d & (d - 1)) == 0; }

/// c = 1/sqrt(D) rounded once to T (float or double) from its exact value: 2^-k for
/// D = 4^k, 2^-k · (1/sqrt(2) rounded to T) for D = 2·4^k (a power-of-two scaling is exact).
/// (For double this is the correctly rounded value; 1.0/std::sqrt(128.0), rounded twice,
/// is one ulp below it.)
template <int D, class T = float>
KVQ_HOST_DEVICE constexpr T rotation_scale() {
  static_assert(rotation_supports(D), "the Hadamard rotation needs a head dim that is a power of two in [32, 512]");
  int log2d = 0;
  while ((1 << log2d) < D) ++log2d;
  T c = (log2d % 2 == 0) ? T(1) : static_cast<T>(0.70710678118654752440084436210485);
  for (int i = 0; i < log2d / 2; ++i) c = c * T(0.5);
  return c;
}

namespace detail {
/// Negates the elements of x whose sign s_j is −1 (exact).
template <int D, class T>
KVQ_HOST_DEVICE void apply_rotation_signs(T* x) {
  KVQ_PRAGMA_UNROLL
  for (int w = 0; w < (D + 63) / 64; ++w) {
    const std::uint64_t bits = rotation_sign_word(w);
    KVQ_PRAGMA_UNROLL
    for (int b = 0; b < 64 && 64 * w + b < D; ++b)
      if ((bits >> b) & 1u) x[64 * w + b] = -x[64 * w + b];
  }
}

/// The unnormalised Walsh-Hadamard transform, stages h = 1, 2, 4, ... in that order.
template <int D, class T>
KVQ_HOST_DEVICE void walsh_hadamard(T* x) {
  KVQ_PRAGMA_UNROLL
  for (int h = 1; h < D; h *= 2) {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i < D; i += 2 * h) {
      KVQ_PRAGMA_UNROLL
      for (int j = i; j < i + h; ++j) {
        const T a = x[j];
        const T b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}
}  // namespace detail

/// x <- R·x = (1/sqrt(D)) · FWHT(s ⊙ x), in place, for one row of D elements. With
/// T = float this is the arithmetic the cache format is defined by (see the top of this
/// file); T = double serves the reference's query rotation.
template <int D, class T>
KVQ_HOST_DEVICE void hadamard_rotate(T* x) {
  static_assert(rotation_supports(D), "the Hadamard rotation needs a head dim that is a power of two in [32, 512]");
  detail::apply_rotation_signs<D>(x);
  detail::walsh_hadamard<D>(x);
  constexpr T c = rotation_scale<D, T>();
  KVQ_PRAGMA_UNROLL
  for (int j = 0; j < D; ++j) x[j] = x[j] * c;
}

/// x <- Rᵀ·x = s ⊙ ((1/sqrt(D)) · FWHT(x)), in place: the inverse of hadamard_rotate
/// (butterflies, then the multiplication, then the signs).
template <int D, class T>
KVQ_HOST_DEVICE void hadamard_rotate_inverse(T* x) {
  static_assert(rotation_supports(D), "the Hadamard rotation needs a head dim that is a power of two in [32, 512]");
  detail::walsh_hadamard<D>(x);
  constexpr T c = rotation_scale<D, T>();
  KVQ_PRAGMA_UNROLL
  for (int j = 0; j < D; ++j) x[j] = x[j] * c;
  detail::apply_rotation_signs<D>(x);
}

}  // namespace kvq::math
