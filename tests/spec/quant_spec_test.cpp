// Tests of kvq/spec/quant_spec.hpp: the constants a QuantSpec derives from its
// parameters, written out by hand for each spec.
#include <catch2/catch.hpp>

#include <cstdint>

#include <kvq/spec/quant_spec.hpp>

namespace {

using kvq::Granularity;
using kvq::QuantSpec;
using kvq::ScaleType;

/// A spec with its hand-derived constants.
template <class Spec_, int Levels, int CodesPerWord, std::uint32_t Mask, int TokensPerGroup, int ChannelsPerGroup,
          int ScaleBytes, int CodeBytesD128, int MetaPairsD128, bool PerToken>
struct Expect {
  static constexpr bool kPerToken = PerToken;
  using Spec = Spec_;
  static constexpr int kLevels = Levels, kCodesPerWord = CodesPerWord, kTokensPerGroup = TokensPerGroup,
                       kChannelsPerGroup = ChannelsPerGroup, kScaleBytes = ScaleBytes, kCodeBytesD128 = CodeBytesD128,
                       kMetaPairsD128 = MetaPairsD128;
  static constexpr std::uint32_t kMask = Mask;
};

using E1 = Expect<QuantSpec<2, 32, Granularity::kPerChannel>, 3, 16, 0x3u, 32, 1, 2, 32, 128, false>;
using E2 = Expect<QuantSpec<2, 128, Granularity::kPerToken>, 3, 16, 0x3u, 1, 128, 2, 32, 1, true>;
using E3 = Expect<QuantSpec<4, 64, Granularity::kPerToken, ScaleType::kBFloat16>, 15, 8, 0xfu, 1, 64, 2, 64, 2, true>;
using E4 = Expect<QuantSpec<8, 128, Granularity::kPerToken, ScaleType::kFloat32>, 255, 4, 0xffu, 1, 128, 4, 128, 1, true>;
using E5 = Expect<QuantSpec<8, 1024, Granularity::kPerChannel, ScaleType::kFloat32>, 255, 4, 0xffu, 1024, 1, 4, 128, 128, false>;
using E6 = Expect<QuantSpec<4, 1, Granularity::kPerToken, ScaleType::kFloat16>, 15, 8, 0xfu, 1, 1, 2, 64, 128, true>;

}  // namespace

TEMPLATE_TEST_CASE("QuantSpec derives levels, packing and group shape from its parameters", "[quant][cpu]", E1, E2, E3,
                   E4, E5, E6) {
  using S = typename TestType::Spec;
  STATIC_REQUIRE(S::kLevels == TestType::kLevels);
  STATIC_REQUIRE(S::kCodesPerWord == TestType::kCodesPerWord);
  STATIC_REQUIRE(S::kCodeMask == TestType::kMask);
  STATIC_REQUIRE(S::kTokensPerGroup == TestType::kTokensPerGroup);
  STATIC_REQUIRE(S::kChannelsPerGroup == TestType::kChannelsPerGroup);
  STATIC_REQUIRE(S::kScaleBytes == TestType::kScaleBytes);
  STATIC_REQUIRE(S::kMetaBytes == 2 * TestType::kScaleBytes);
  STATIC_REQUIRE(S::template code_bytes_per_token<128>() == TestType::kCodeBytesD128);
  STATIC_REQUIRE(S::template meta_pairs_per_token_group<128>() == TestType::kMetaPairsD128);
  STATIC_REQUIRE(S::kPerToken == TestType::kPerToken);
  STATIC_REQUIRE(S::template check_head_dim<128>());
  STATIC_REQUIRE(kvq::is_quant_spec<S>::value);
}

TEST_CASE("QuantSpec re-exports its template parameters", "[quant][cpu]") {
  using S = QuantSpec<4, 32, Granularity::kPerChannel, ScaleType::kBFloat16>;
  STATIC_REQUIRE(S::kBits == 4);
  STATIC_REQUIRE(S::kGroupSize == 32);
  STATIC_REQUIRE(S::kGranularity == Granularity::kPerChannel);
  STATIC_REQUIRE(S::kScaleType == ScaleType::kBFloat16);
  STATIC_REQUIRE_FALSE(S::kPerToken);
  // The default metadata type is fp16.
  STATIC_REQUIRE(QuantSpec<2, 32, Granularity::kPerToken>::kScaleType == ScaleType::kFloat16);
  // Code bytes for other head dims: D·B/8.
  STATIC_REQUIRE(S::code_bytes_per_token<64>() == 32);
  STATIC_REQUIRE(S::code_bytes_per_token<96>() == 48);
  STATIC_REQUIRE(QuantSpec<2, 32, Granularity::kPerToken>::code_bytes_per_token<96>() == 24);
  STATIC_REQUIRE(QuantSpec<2, 32, Granularity::kPerToken>::meta_pairs_per_token_group<96>() == 3);
}

TEST_CASE("is_quant_spec recognises only QuantSpec instantiations", "[quant][cpu]") {
  STATIC_REQUIRE_FALSE(kvq::is_quant_spec<int>::value);
  STATIC_REQUIRE_FALSE(kvq::is_quant_spec<E1>::value);
  STATIC_REQUIRE(kvq::is_quant_spec<QuantSpec<8, 16, Granularity::kPerChannel, ScaleType::kFloat32>>::value);
}
