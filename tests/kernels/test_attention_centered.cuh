// Cases of the centered-key layouts (Rotation::kHadamardCentered, μ far from zero: the
// harness's keys have per-channel offsets) beyond the standard ones: q·μ must visibly
// matter, and CTAs whose rows see only quantized tiles must still take it (their LSE).
#pragma once

#include "kernels/test_attention_common.cuh"

namespace kvq::test {

template <class Layout, Correction Mode>
void run_centered_attention_cases(DType dt, const char* name, std::uint64_t seed0) {
  static_assert(Layout::kCenteredKeys, "a centered layout");
  {
    AttentionCase c;
    c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.num_q = 65, c.num_chunk = 33, c.cache_lengths = {300, 130};
    c.mass = true;
    c.dtype = dt;
    c.seed = seed0;
    DYNAMIC_SECTION("q.mu is visible: " << c.describe()) {
      const AttentionErrors e = run_attention_case<Layout, Mode>(c, name);
      // The reference without q·μ is measured (CPU) at mean |Δo| ~3e-2 and max |Δlse| > 2.
      CHECK(e.mean_vs_uncentered > 5.0 * e.mean_abs);
      CHECK(e.max_lse_vs_uncentered > 0.5);
    }
  }
  {
    // Entry 0: no chunk token, the cache a multiple of every key group (no tail). Entry 1:
    // causal, 200 rows and 5 chunk tokens: its first CTA of rows sees no chunk token.
    AttentionCase c;
    c.batch = 2, c.q_heads = 4, c.kv_heads = 1, c.num_q = 200, c.num_chunk = 5, c.cache_lengths = {256, 96};
    c.chunk_lengths = {0, 5};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    c.dtype = dt;
    c.seed = seed0 + 1;
    DYNAMIC_SECTION("quantized tiles only: " << c.describe()) {
      const AttentionErrors e = run_attention_case<Layout, Mode>(c, name);
      CHECK(e.max_lse_vs_uncentered > 0.5);
    }
  }
}

}  // namespace kvq::test

/// The standard cases and the centered ones of a centered variant (bf16 and fp16), given its
/// instantiation in the same TU.
#define KVQ_CENTERED_ATTENTION_TEST_CASES(Layout, Mode, Name, Seed)                                           \
  KVQ_ATTENTION_TEST_CASES(Layout, Mode, Name, Seed)                                                          \
  TEST_CASE("fused attention, centered keys: q.mu visible, quantized-only CTAs: " Name, "[attention][gpu]") { \
    kvq::test::run_centered_attention_cases<Layout, Mode>(kvq::DType::kBFloat16, Name, (Seed) + 800);         \
    kvq::test::run_centered_attention_cases<Layout, Mode>(kvq::DType::kFloat16, Name, (Seed) + 900);          \
  }
