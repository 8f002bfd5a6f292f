// Tests of kvq/math/pack.hpp: B-bit codes in 32-bit words. The expected layout is
// checked bit by bit from its definition: for B = 4 and 8, code i of a word occupies bits
// [i·B, (i+1)·B); for B = 2, bit p = 16 h + 8 j + 2 k + b (half h, byte j of the half,
// pair k of the byte, bit b) is bit b of code 8 h + 2 k + j. Least significant bit first.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>

#include <kvq/math/pack.hpp>

namespace {

template <int Bits_>
struct BitsTag {
  static constexpr int kBits = Bits_;
  static constexpr int kSlots = 32 / Bits_;
};

/// The code whose bit (p mod B) is bit p of a word.
template <int B>
int code_of_bit(int p) {
  if (B == 2) return 8 * (p / 16) + 2 * ((p % 8) / 2) + (p % 16) / 8;
  return p / B;
}

/// Bit p of `word` must be bit (p mod B) of code code_of_bit(p).
template <int B>
bool word_holds(std::uint32_t word, const std::uint32_t* codes) {
  for (int p = 0; p < 32; ++p) {
    const std::uint32_t want = (codes[code_of_bit<B>(p)] >> (p % B)) & 1u;
    if (((word >> p) & 1u) != want) return false;
  }
  return true;
}

}  // namespace

TEMPLATE_TEST_CASE("PackTraits derive codes per word and mask from the bitwidth", "[quant][cpu]", BitsTag<2>, BitsTag<4>,
                   BitsTag<8>) {
  using P = kvq::math::PackTraits<TestType::kBits>;
  STATIC_REQUIRE(P::kCodesPerWord == TestType::kSlots);
  STATIC_REQUIRE(P::kMask == (TestType::kBits == 2 ? 0x3u : TestType::kBits == 4 ? 0xfu : 0xffu));
}

TEMPLATE_TEST_CASE("pack and unpack round-trip every code in every slot", "[quant][cpu]", BitsTag<2>, BitsTag<4>,
                   BitsTag<8>) {
  constexpr int B = TestType::kBits, S = TestType::kSlots;
  std::mt19937_64 rng(0x9ac0 + B);
  for (int slot = 0; slot < S; ++slot) {
    for (std::uint32_t code = 0; code < (1u << B); ++code) {
      for (int rep = 0; rep < 4; ++rep) {
        std::uint32_t codes[S];
        for (auto& c : codes) c = static_cast<std::uint32_t>(rng()) & ((1u << B) - 1u);  // random neighbours
        codes[slot] = code;
        const std::uint32_t w = kvq::math::pack_word<B>(codes);
        INFO("slot " << slot << ", code " << code << ", word 0x" << std::hex << w);
        REQUIRE(word_holds<B>(w, codes));
        for (int s = 0; s < S; ++s) REQUIRE(kvq::math::unpack_code<B>(w, s) == codes[s]);
      }
    }
  }
}

TEMPLATE_TEST_CASE("pack_word drops bits above the code width without touching the neighbours", "[quant][cpu]",
                   BitsTag<2>, BitsTag<4>, BitsTag<8>) {
  constexpr int B = TestType::kBits, S = TestType::kSlots;
  std::mt19937_64 rng(0x9ac1 + B);
  for (int rep = 0; rep < 1000; ++rep) {
    std::uint32_t dirty[S], clean[S];
    for (int s = 0; s < S; ++s) {
      dirty[s] = static_cast<std::uint32_t>(rng());  // garbage in the high bits
      clean[s] = dirty[s] & ((1u << B) - 1u);
    }
    const std::uint32_t w = kvq::math::pack_word<B>(dirty);
    REQUIRE(word_holds<B>(w, clean));
  }
}

TEMPLATE_TEST_CASE("insert_code writes one slot and leaves the others alone", "[quant][cpu]", BitsTag<2>, BitsTag<4>,
                   BitsTag<8>) {
  constexpr int B = TestType::kBits, S = TestType::kSlots;
  std::mt19937_64 rng(0x9ac2 + B);
  for (int slot = 0; slot < S; ++slot) {
    for (std::uint32_t code = 0; code < (1u << B); ++code) {
      for (int rep = 0; rep < 4; ++rep) {
        std::uint32_t codes[S];
        for (auto& c : codes) c = static_cast<std::uint32_t>(rng()) & ((1u << B) - 1u);
        std::uint32_t word = 0;
        for (int p = 0; p < 32; ++p) word |= ((codes[code_of_bit<B>(p)] >> (p % B)) & 1u) << p;  // hand-packed
        // The inserted code may carry garbage above its width: it must be masked.
        const std::uint32_t garbage = static_cast<std::uint32_t>(rng()) << B;
        const std::uint32_t w = kvq::math::insert_code<B>(word, slot, code | (rep == 3 ? garbage : 0u));
        codes[slot] = code;
        INFO("slot " << slot << ", code " << code);
        REQUIRE(word_holds<B>(w, codes));
      }
    }
  }
  // Building a word slot by slot from zero equals packing it at once.
  for (int rep = 0; rep < 1000; ++rep) {
    std::uint32_t codes[S];
    std::uint32_t w = 0;
    for (int s = 0; s < S; ++s) {
      codes[s] = static_cast<std::uint32_t>(rng()) & ((1u << B) - 1u);
      w = kvq::math::insert_code<B>(w, s, codes[s]);
    }
    REQUIRE(w == kvq::math::pack_word<B>(codes));
  }
}

TEST_CASE("pack<2> and pack<4> round-trip every 16-bit half word exhaustively", "[quant][cpu]") {
  // Every pattern of the low and of the high 16 bits (the other half random) unpacks and repacks to itself.
  std::mt19937_64 rng(0x9ac3);
  for (std::uint32_t half = 0; half < 0x10000u; ++half) {
    const std::uint32_t other = static_cast<std::uint32_t>(rng()) & 0xffffu;
    for (std::uint32_t w : {half | other << 16, other | half << 16}) {
      std::uint32_t c2[16], c4[8], c8[4];
      for (int s = 0; s < 16; ++s) c2[s] = kvq::math::unpack_code<2>(w, s);
      for (int s = 0; s < 8; ++s) c4[s] = kvq::math::unpack_code<4>(w, s);
      for (int s = 0; s < 4; ++s) c8[s] = kvq::math::unpack_code<8>(w, s);
      if (kvq::math::pack_word<2>(c2) != w || kvq::math::pack_word<4>(c4) != w || kvq::math::pack_word<8>(c8) != w)
        FAIL("word 0x" << std::hex << w << " does not round-trip");
      if (!word_holds<2>(w, c2) || !word_holds<4>(w, c4) || !word_holds<8>(w, c8))
        FAIL("word 0x" << std::hex << w << " unpacks to the wrong codes");
    }
  }
}

TEST_CASE("packed codes follow the documented bit positions", "[quant][cpu]") {
  // 2-bit: slot 0 at bit 0, slot 1 at bit 8, slot 2 at bit 2, slot 9 at bit 24, slot 15 at bit 30.
  const std::uint32_t c2[16] = {1, 2, 3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 3};
  CHECK(kvq::math::pack_word<2>(c2) == 0xc100020du);  // 01 | 10<<8 | 11<<2 | 01<<24 | 11<<30
  const std::uint32_t c4[8] = {0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0xf};
  CHECK(kvq::math::pack_word<4>(c4) == 0xf7654321u);
  const std::uint32_t c8[4] = {0x01, 0xab, 0x00, 0xff};
  CHECK(kvq::math::pack_word<8>(c8) == 0xff00ab01u);
  CHECK(kvq::math::unpack_code<4>(0xf7654321u, 7) == 0xfu);
  CHECK(kvq::math::unpack_code<2>(0xc100020du, 15) == 3u);
  CHECK(kvq::math::unpack_code<2>(0xc100020du, 9) == 1u);
  CHECK(kvq::math::unpack_code<2>(0xc100020du, 1) == 2u);
  CHECK(kvq::math::insert_code<8>(0xff00ab01u, 2, 0x5au) == 0xff5aab01u);
}
