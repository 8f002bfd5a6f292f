// Packing of B-bit codes into 32-bit words: channel j of a token lives in word j / (32/B),
// slot j % (32/B), at bit slot_shift<B>(slot) of the word. 4- and 8-bit codes: slot i at
// bits [i*B, (i+1)*B). 2-bit codes: each 16-bit half holds 8 slots, the even ones in its
// low byte and the odd ones in its high byte (see slot_shift).
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

/// Lowest bit of code `slot` in its word. 4- and 8-bit codes: slot * Bits. 2-bit codes:
/// 16 (slot / 8) + 2 ((slot % 8) / 2) + 8 (slot % 2), i.e. slot s of a 16-bit half at bit
/// 2 (s / 2) of the half's low byte (s even) or high byte (s odd). Then one mask
/// (w >> 2i) & 0x03030303 holds the codes of slots 2i, 2i + 1, 8 + 2i, 9 + 2i, one per
/// byte, and a table lookup (PRMT) turns each byte pair into two adjacent 16-bit channels.
template <int Bits>
KVQ_HOST_DEVICE constexpr int slot_shift(int slot) {
  if constexpr (Bits == 2) {
    return 16 * (slot / 8) + 2 * ((slot % 8) / 2) + 8 * (slot % 2);
  } else {
    return slot * Bits;
  }
}

/// Packs PackTraits<Bits>::kCodesPerWord codes (each < 2^Bits) into one word.
template <int Bits>
KVQ_HOST_DEVICE std::uint32_t pack_word(const std::uint32_t* codes) {
  std::uint32_t w = 0;
  KVQ_PRAGMA_UNROLL
  for (int i = 0; i < PackTraits<Bits>::kCodesPerWord; ++i) w |= (codes[i] & PackTraits<Bits>::kMask) << slot_shift<Bits>(i);
  return w;
}

/// Code number `slot` of a packed word.
template <int Bits>
KVQ_HOST_DEVICE std::uint32_t unpack_code(std::uint32_t word, int slot) {
  return (word >> slot_shift<Bits>(slot)) & PackTraits<Bits>::kMask;
}

/// Writes `code` into slot `slot` of `word` (other slots unchanged).
template <int Bits>
KVQ_HOST_DEVICE std::uint32_t insert_code(std::uint32_t word, int slot, std::uint32_t code) {
  const std::uint32_t m = PackTraits<Bits>::kMask << slot_shift<Bits>(slot);
  return (word & ~m) | ((code << slot_shift<Bits>(slot)) & m);
}

}  // namespace kvq::math
