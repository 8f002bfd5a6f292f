// Packing of B-bit codes into 32-bit words. Code i of a word occupies bits
// [i*B, (i+1)*B): channel j of a token lives in word j / (32/B), slot j % (32/B).
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"

namespace kvq::math {

template <int Bits>
struct PackTraits {
  static_assert(Bits == 2 || Bits == 4 || Bits == 8, "Bits must be 2, 4 or 8 for packing");
  static constexpr int kCodesPerWord = 32 / Bits;
  static constexpr std::uint32_t kMask = (1u << Bits) - 1u;
};

/// Packs PackTraits<Bits>::kCodesPerWord codes (each < 2^Bits) into one word.
template <int Bits>
KVQ_HOST_DEVICE std::uint32_t pack_word(const std::uint32_t* codes) {
  std::uint32_t w = 0;
  KVQ_PRAGMA_UNROLL
  for (int i = 0; i < PackTraits<Bits>::kCodesPerWord; ++i) w |= (codes[i] & PackTraits<Bits>::kMask) << (i * Bits);
  return w;
}

/// Code number `slot` of a packed word.
template <int Bits>
KVQ_HOST_DEVICE std::uint32_t unpack_code(std::uint32_t word, int slot) {
  return (word >> (slot * Bits)) & PackTraits<Bits>::kMask;
}

/// Writes `code` into slot `slot` of `word` (other slots unchanged).
template <int Bits>
KVQ_HOST_DEVICE std::uint32_t insert_code(std::uint32_t word, int slot, std::uint32_t code) {
  const std::uint32_t m = PackTraits<Bits>::kMask << (slot * Bits);
  return (word & ~m) | ((code << (slot * Bits)) & m);
}

}  // namespace kvq::math
