// GPU test of the Hopper attention kernel with centered rotated keys where q·μ enters the
// running max: CTAs whose rows see quantized tiles only (q·μ added after the loop, for the
// LSE), batch entries without chunk tokens, whole tiles, many tiles; in the default
// configurations and in SchedulePingpong (forced), against the reference; and a case that
// shows a kernel ignoring μ would fail (it would match the reference computed with μ = 0).
#include "kernels/test_attention_common.cuh"

// Instantiated in test_attention_centered_sm90.cu.
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kNone)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2)
KVQ_DECLARE_ATTENTION(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2)

namespace {
namespace s9 = kvq::kernels::sm90;
using kvq::Correction;
using kvq::DType;
using kvq::test::AttentionCase;

/// Where the bias enters: rows that never reach an unquantized tile (causal with more
/// queries than chunk tokens: whole CTAs of them; a batch entry with no chunk tokens), whole
/// tiles of cache, a single quantized token, and many tiles.
std::vector<AttentionCase> bias_cases(DType dt, std::uint64_t seed0) {
  std::vector<AttentionCase> v;
  auto add = [&](AttentionCase c) {
    c.dtype = dt;
    c.seed = seed0 + v.size();
    v.push_back(c);
  };
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
  {  // whole tiles, two CTAs of rows, GQA 2
    AttentionCase c;
    c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.num_q = 200, c.num_chunk = 70, c.cache_lengths = {256, 128};
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
void run_bias_cases(DType dt, const char* name, std::uint64_t seed0) {
  for (const auto& c : bias_cases(dt, seed0)) {
    DYNAMIC_SECTION(c.describe()) { kvq::test::run_attention_case<Layout, Mode, Config>(c, name); }
  }
}
}  // namespace

TEST_CASE("Hopper attention kernel, centered keys, where q.mu enters: default configurations", "[attention][gpu][sm90]") {
  namespace v = kvq::variants;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    const std::uint64_t s = dt == DType::kBFloat16 ? 0 : 500;
    run_bias_cases<v::Int2Pt128D128RotCen, Correction::kNone, kvq::AutoConfig>(dt, "int2_pt128 cen none", 883001 + s);
    run_bias_cases<v::Int2Pt128D128RotCen, Correction::kTaylor2, kvq::AutoConfig>(dt, "int2_pt128 cen taylor2", 883101 + s);
    run_bias_cases<v::Int4Pt128D128RotCen, Correction::kTaylor2, kvq::AutoConfig>(dt, "int4_pt128 cen taylor2", 883201 + s);
  }
}

TEST_CASE("Hopper attention kernel, centered keys, turns (SchedulePingpong)", "[attention][gpu][config][sm90]") {
  using L2 = kvq::variants::Int2Pt128D128RotCen;
  kvq::test::run_standard_attention_cases<L2, Correction::kTaylor2, s9::Config128Pingpong>(DType::kBFloat16,
                                                                                          "sm90 pp int2 cen t2", 884001);
  run_bias_cases<L2, Correction::kTaylor2, s9::Config128Pingpong>(DType::kBFloat16, "sm90 pp int2 cen t2", 884101);
}

TEST_CASE("Hopper attention kernel, centered keys: a kernel that ignored mu would fail", "[attention][gpu][sm90]") {
  // Quantized cache and chunk in one softmax: q·μ moves the quantized segment's weight
  // against the chunk's.
  AttentionCase c;
  c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.num_q = 80, c.num_chunk = 80, c.cache_lengths = {300, 97};
  c.mass = true;
  c.seed = 885001;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    c.dtype = dt;
    DYNAMIC_SECTION(c.describe()) {
      const auto e2 = kvq::test::run_attention_case<kvq::variants::Int2Pt128D128RotCen, Correction::kTaylor2, kvq::AutoConfig>(
          c, "int2_pt128 cen taylor2");
      const auto e4 = kvq::test::run_attention_case<kvq::variants::Int4Pt128D128RotCen, Correction::kTaylor2, kvq::AutoConfig>(
          c, "int4_pt128 cen taylor2");
      // Far outside run_attention_case's tolerances (mean |o - ref| 1e-3 max|V|, LSE 1.5e-2 at
      // q_scale 1): on this data the reference with μ = 0 is ~0.03 (mean |o|) and ~0.6 (mean
      // |lse|) away.
      for (const auto& e : {e2, e4}) {
        CHECK(e.mean_vs_uncentered > 4e-3 * e.max_v);
        CHECK(e.mean_lse_vs_uncentered > 0.15);
      }
    }
  }
}
