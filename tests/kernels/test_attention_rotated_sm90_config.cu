// GPU test of the Hopper attention kernel with rotated keys where the query form switches
// (from R·q on quantized tiles to q on [tail ; chunk] tiles): caches of whole tiles, CTAs
// that never reach an unquantized tile, many tiles; in every schedule and CTA shape (forced
// configurations: 128 rows, turns, 192 rows, 192 rows with turns, the unfolded correction,
// 4-bit codes overlapped), and with key groups smaller than the head dim (each group's
// correction then differs between q and R·q: 32-channel groups folded, 16-channel groups
// one FMA per score and group), against the reference.
#include "kernels/test_attention_common.cuh"

namespace kvq::test {
using Int2Pt32D128Rot =
    layout::CacheLayout<variants::PerTokenFp16<2, 32>, variants::PerTokenFp16<2, 128>, 128, Rotation::kHadamard>;
using Int2Pt16D128Rot =
    layout::CacheLayout<variants::PerTokenFp16<2, 16>, variants::PerTokenFp16<2, 128>, 128, Rotation::kHadamard>;
}  // namespace kvq::test

// Instantiated in the other translation units of this binary.
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor4)
KVQ_DECLARE_ATTENTION(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2)

KVQ_INSTANTIATE_ATTENTION(kvq::test::Int2Pt32D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::test::Int2Pt16D128Rot, kvq::Correction::kTaylor4)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::test::Int2Pt32D128Rot, kvq::Correction::kTaylor2, "int2_pt32 rot taylor2", 875001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::test::Int2Pt16D128Rot, kvq::Correction::kTaylor4, "int2_pt16 rot taylor4", 876001)

namespace {
namespace s9 = kvq::kernels::sm90;
using kvq::Correction;
using kvq::DType;
using kvq::test::AttentionCase;

/// Where the query form switches: whole tiles of cache (64 and 128 tokens), rows that see no
/// unquantized tile (causal with more queries than chunk tokens: whole CTAs of them; a batch
/// entry with no chunk tokens), a single quantized token, and many tiles (the warpgroups
/// drift apart).
std::vector<AttentionCase> switch_cases(DType dt, std::uint64_t seed0) {
  std::vector<AttentionCase> v;
  auto add = [&](AttentionCase c) {
    c.dtype = dt;
    c.seed = seed0 + v.size();
    v.push_back(c);
  };
  {  // whole tiles, two CTAs of rows, GQA 2
    AttentionCase c;
    c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.num_q = 200, c.num_chunk = 70, c.cache_lengths = {256, 128};
    c.mass = true;
    add(c);
  }
  {  // causal, 300 queries, 17 chunk tokens: the first CTAs see the quantized cache only
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 1, c.num_q = 300, c.num_chunk = 17, c.cache_lengths = {200};
    c.mask = kvq::Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  {  // a batch entry without chunk tokens
    AttentionCase c;
    c.batch = 2, c.q_heads = 2, c.kv_heads = 2, c.num_q = 64, c.num_chunk = 16, c.cache_lengths = {384, 130};
    c.chunk_lengths = {0, 16};
    c.mass = true;
    add(c);
  }
  {  // one quantized token, GQA 8, peaky softmax
    AttentionCase c;
    c.batch = 1, c.q_heads = 8, c.kv_heads = 1, c.num_q = 129, c.num_chunk = 129, c.cache_lengths = {1};
    c.q_scale = 3.0f;
    add(c);
  }
  {  // many tiles
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 1, c.num_q = 384, c.num_chunk = 384, c.cache_lengths = {2048};
    c.q_scale = 2.0f;
    c.mass = true;
    add(c);
  }
  return v;
}

template <class Layout, Correction Mode, class Config>
void run_switch_cases(DType dt, const char* name, std::uint64_t seed0) {
  for (const auto& c : switch_cases(dt, seed0)) {
    DYNAMIC_SECTION(c.describe()) {
      const auto e = kvq::test::run_attention_case<Layout, Mode, Config>(c, name);
      REQUIRE(e.checked > 0);  // every switch case has rows to compare
    }
  }
}

template <class Layout, Correction Mode, class Config>
void run_config_cases(const char* name, std::uint64_t seed0) {
  kvq::test::run_standard_attention_cases<Layout, Mode, Config>(DType::kBFloat16, name, seed0);
  run_switch_cases<Layout, Mode, Config>(DType::kBFloat16, name, seed0 + 100);
}
}  // namespace

TEST_CASE("Hopper attention kernel, rotated keys, where the query form switches: default configurations",
          "[attention][gpu][sm90]") {
  namespace v = kvq::variants;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    const std::uint64_t s = dt == DType::kBFloat16 ? 0 : 500;
    run_switch_cases<v::Int2Pt128D128Rot, Correction::kNone, kvq::AutoConfig>(dt, "int2_pt128 rot none", 877001 + s);
    run_switch_cases<v::Int2Pt128D128Rot, Correction::kTaylor2, kvq::AutoConfig>(dt, "int2_pt128 rot taylor2", 877101 + s);
    run_switch_cases<v::Int2Pt128D128Rot, Correction::kTaylor4, kvq::AutoConfig>(dt, "int2_pt128 rot taylor4", 877201 + s);
    run_switch_cases<v::Int4Pt128D128Rot, Correction::kTaylor2, kvq::AutoConfig>(dt, "int4_pt128 rot taylor2", 877301 + s);
    run_switch_cases<v::Int2Pt64D64Rot, Correction::kTaylor2, kvq::AutoConfig>(dt, "int2_pt64 d64 rot taylor2", 877401 + s);
  }
}

TEST_CASE("Hopper attention kernel, rotated keys, other schedules and CTA shapes", "[attention][gpu][config][sm90]") {
  using L2 = kvq::variants::Int2Pt128D128Rot;
  using L4 = kvq::variants::Int4Pt128D128Rot;
  SECTION("128 rows") { run_config_cases<L2, Correction::kTaylor2, s9::Config128>("sm90 128 int2 rot t2", 878001); }
  SECTION("turns") { run_config_cases<L2, Correction::kTaylor2, s9::Config128Pingpong>("sm90 pp int2 rot t2", 878201); }
  SECTION("192 rows") { run_config_cases<L2, Correction::kTaylor2, s9::Config192>("sm90 192 int2 rot t2", 878401); }
  SECTION("turns, 192 rows (three warpgroups)") {
    run_config_cases<L2, Correction::kTaylor2, s9::Config<192, 64, 4, s9::SchedulePingpong>>("sm90 pp192 int2 rot t2", 878601);
  }
  SECTION("correction per score (not folded)") {
    run_config_cases<L2, Correction::kTaylor4, s9::Config128NoFold>("sm90 fma int2 rot t4", 878801);
  }
  SECTION("overlapped: int4") { run_config_cases<L4, Correction::kTaylor2, s9::Config128Overlap>("sm90 ov int4 rot t2", 879001); }
}

TEST_CASE("Hopper attention kernel, rotated keys, other schedules, small case for the sanitizers",
          "[attention][gpu][config][sm90][sanitize]") {
  using L2 = kvq::variants::Int2Pt128D128Rot;
  kvq::test::run_attention_case<L2, Correction::kTaylor2, s9::Config128Pingpong>(kvq::test::sanitizer_case(879501),
                                                                                "sm90 pp int2 rot t2");
  kvq::test::run_attention_case<L2, Correction::kTaylor2, s9::Config<192, 64, 4, s9::SchedulePingpong>>(
      kvq::test::sanitizer_case(879601), "sm90 pp192 int2 rot t2");
  kvq::test::run_attention_case<L2, Correction::kTaylor4, s9::Config128NoFold>(kvq::test::sanitizer_case(879701),
                                                                              "sm90 fma int2 rot t4");
}
