// Shared cases of the short-query attention tests (include/kvq/kernels/decode/): decode (one
// query), 16 queries, GQA 1 to 16, causal and none, odd and zero lengths, LSE and masses,
// with the key sequence split across CTAs (long caches, few CTAs) and unsplit (many CTAs),
// against kvq::reference::attention through the harness of test_attention_common.cuh.
#pragma once

#include "kernels/test_attention_common.cuh"

namespace kvq::test {

/// The short-query shapes every variant is tested on.
inline std::vector<AttentionCase> decode_cases(DType dt, std::uint64_t seed0) {
  std::vector<AttentionCase> v;
  auto add = [&](AttentionCase c) {
    c.dtype = dt;
    c.seed = seed0 + v.size();
    v.push_back(c);
  };
  {  // decode, GQA 4, unequal caches (split), mass
    AttentionCase c;
    c.batch = 2, c.q_heads = 8, c.kv_heads = 2, c.num_q = 1, c.num_chunk = 1, c.cache_lengths = {1000, 37};
    c.mass = true;
    add(c);
  }
  {  // decode, GQA 1, long cache (many splits), causal
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 2, c.num_q = 1, c.num_chunk = 1, c.cache_lengths = {3001};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  {  // decode, GQA 8, no chunk
    AttentionCase c;
    c.batch = 2, c.q_heads = 8, c.kv_heads = 1, c.num_q = 1, c.num_chunk = 0, c.cache_lengths = {513, 129};
    c.mass = true;
    add(c);
  }
  {  // decode, GQA 16 (16 packed rows), peaky softmax
    AttentionCase c;
    c.batch = 1, c.q_heads = 16, c.kv_heads = 1, c.num_q = 1, c.num_chunk = 3, c.cache_lengths = {777};
    c.q_scale = 3.0f;
    add(c);
  }
  {  // 16 queries, GQA 4 (64 packed rows: one CTA), causal, mass
    AttentionCase c;
    c.batch = 2, c.q_heads = 8, c.kv_heads = 2, c.num_q = 16, c.num_chunk = 16, c.cache_lengths = {1500, 200};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  {  // 16 queries, GQA 16 (256 packed rows: 4 row blocks), causal
    AttentionCase c;
    c.batch = 1, c.q_heads = 16, c.kv_heads = 1, c.num_q = 16, c.num_chunk = 16, c.cache_lengths = {500};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  {  // zero lengths: an empty cache, an entry without queries, one without chunk tokens
    AttentionCase c;
    c.batch = 3, c.q_heads = 4, c.kv_heads = 1, c.num_q = 4, c.num_chunk = 4, c.cache_lengths = {0, 300, 65};
    c.q_lengths = {4, 0, 3};
    c.chunk_lengths = {2, 4, 0};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  {  // no cache at all (null lengths), odd shapes
    AttentionCase c;
    c.batch = 1, c.q_heads = 4, c.kv_heads = 2, c.num_q = 3, c.num_chunk = 13;
    add(c);
  }
  {  // causal with more queries than chunk tokens and an empty cache: early rows see no key
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 1, c.num_q = 16, c.num_chunk = 5, c.cache_lengths = {0};
    c.mask = Mask::kCausalLastSegment;
    c.q_scale = 3.0f;
    c.mass = true;
    add(c);
  }
  {  // many CTAs (one split), 7 queries GQA 2
    AttentionCase c;
    c.batch = 16, c.q_heads = 32, c.kv_heads = 16, c.num_q = 7, c.num_chunk = 7;
    c.cache_lengths.assign(16, 0);
    for (int b = 0; b < 16; ++b) c.cache_lengths[static_cast<std::size_t>(b)] = 17 * b + 3;
    c.mask = Mask::kCausalLastSegment;
    add(c);
  }
  {  // long cache with a tail and a chunk, splits ending inside [tail ; chunk]
    AttentionCase c;
    c.batch = 1, c.q_heads = 4, c.kv_heads = 1, c.num_q = 5, c.num_chunk = 150, c.cache_lengths = {4100};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  return v;
}

/// The small case the sanitizers run: decode and a few queries, GQA, split, zero lengths.
inline AttentionCase decode_sanitizer_case(std::uint64_t seed) {
  AttentionCase c;
  c.batch = 3, c.q_heads = 4, c.kv_heads = 2, c.num_q = 3, c.num_chunk = 5, c.cache_lengths = {700, 0, 90};
  c.q_lengths = {3, 1, 0};
  c.mask = Mask::kCausalLastSegment;
  c.mass = true;
  c.seed = seed + 900;
  return c;
}

/// The decode cases of a variant on the short-query kernel (forced), bf16 and fp16, and
/// one where the correction must be visible.
template <class Layout, Correction Mode>
void run_decode_cases(const char* name, std::uint64_t seed0) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    for (const auto& c : decode_cases(dt, seed0 + (dt == DType::kFloat16 ? 500 : 0))) {
      DYNAMIC_SECTION(c.describe()) { run_attention_case<Layout, Mode, ShortQueryConfig>(c, name); }
    }
  }
  if constexpr (Mode != Correction::kNone) {
    AttentionCase c;
    // The chunk kernels' visible-correction case (cache 257, q scale 3, fp16) at 16 queries.
    c.batch = 1, c.q_heads = 4, c.kv_heads = 2, c.num_q = 16, c.num_chunk = 16, c.cache_lengths = {257};
    c.q_scale = 3.0f;
    c.mass = true;
    c.dtype = DType::kFloat16;
    c.seed = seed0 + 1000;
    DYNAMIC_SECTION("correction is visible: " << c.describe()) {
      const AttentionErrors e = run_attention_case<Layout, Mode, ShortQueryConfig>(c, name, true);
      if (Layout::KSpec::kBits <= 4) CHECK(e.mean_vs_none > 2.0 * e.mean_abs);
    }
  }
}

}  // namespace kvq::test

namespace kvq::test {
/// The small sanitizer case of a variant on the short-query kernel, against the reference:
/// the output elements compared.
template <class Layout, Correction Mode>
std::size_t run_decode_sanitizer_case(const char* name, std::uint64_t seed) {
  return run_attention_case<Layout, Mode, ShortQueryConfig>(decode_sanitizer_case(seed), name).checked;
}
}  // namespace kvq::test

/// One variant's short-query cases (the variant's ShortQueryConfig plan is compiled in the
/// including TU; each file lists its sanitizer cases with run_decode_sanitizer_case).
#define KVQ_DECODE_TEST_CASES(Layout, Mode, Name, Seed)                                         \
  TEST_CASE("short-query attention matches the reference: " Name, "[attention][gpu][decode]") { \
    kvq::test::run_decode_cases<Layout, Mode>(Name, Seed);                                       \
  }
