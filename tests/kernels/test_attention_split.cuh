// Split-KV on the Hopper chunk kernel (AttentionArguments::splits, kernels/sm90/schedule.hpp):
// cases whose split boundaries fall inside the quantized tiles, at the switch to [tail ;
// chunk], past the last tile (empty splits), in batch entries with no cache or no query
// rows, and in rows that see no key; each against the reference (O, LSE, mass) through
// kvq::AutoConfig. And the automatic rule splitting a one-CTA shape.
#pragma once

#include "kernels/test_attention_common.cuh"

namespace kvq::test {

inline std::vector<AttentionCase> split_cases(DType dt, std::uint64_t seed0) {
  std::vector<AttentionCase> v;
  auto add = [&](AttentionCase c) {
    c.dtype = dt;
    c.seed = seed0 + v.size();
    v.push_back(c);
  };
  {  // 9 quantized tiles + 2 chunk tiles (128-token tiles) in 3 splits: the last one crosses into the chunk
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 2, c.num_q = 200, c.num_chunk = 129, c.cache_lengths = {1100};
    c.mass = true;
    c.splits = 3;
    add(c);
  }
  {  // more splits than tiles: one tile each, the rest empty
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 1, c.num_q = 130, c.num_chunk = 70, c.cache_lengths = {700};
    c.mass = true;
    c.splits = 16;
    add(c);
  }
  {  // B = 3: unequal q / chunk / cache lengths (no cache; no query rows), causal
    AttentionCase c;
    c.batch = 3, c.q_heads = 4, c.kv_heads = 4, c.num_q = 17, c.num_chunk = 17, c.cache_lengths = {300, 0, 64};
    c.q_lengths = {5, 17, 0};
    c.chunk_lengths = {17, 3, 9};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    c.splits = 2;
    add(c);
  }
  {  // GQA 8, a single chunk token
    AttentionCase c;
    c.batch = 2, c.q_heads = 8, c.kv_heads = 1, c.num_q = 33, c.num_chunk = 1, c.cache_lengths = {300, 97};
    c.mass = true;
    c.splits = 4;
    add(c);
  }
  {  // causal, more queries than chunk tokens and no cache: early rows see no key in any split
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 1, c.num_q = 64, c.num_chunk = 17;
    c.mask = Mask::kCausalLastSegment;
    c.q_scale = 3.0f;
    c.mass = true;
    c.splits = 2;
    add(c);
  }
  {  // causal, two row blocks of different tile counts, peaky softmax
    AttentionCase c;
    c.batch = 1, c.q_heads = 4, c.kv_heads = 2, c.num_q = 300, c.num_chunk = 200, c.cache_lengths = {2500};
    c.mask = Mask::kCausalLastSegment;
    c.q_scale = 2.0f;
    c.mass = true;
    c.splits = 5;
    add(c);
  }
  return v;
}

/// The split cases (bf16 and fp16) of a variant the Hopper kernel implements, and the
/// automatic rule on one CTA of rows over a long cache. Returns the output elements compared
/// with the reference (each case also checks them itself).
template <class Layout, Correction Mode>
std::size_t run_split_cases(const char* name, std::uint64_t seed0) {
  std::size_t checked = 0;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    for (const auto& c : split_cases(dt, seed0 + (dt == DType::kFloat16 ? 500 : 0))) {
      checked += run_attention_case<Layout, Mode, AutoConfig>(c, name).checked;  // labels itself (INFO)
    }
  }
  AttentionCase c;
  c.batch = 1, c.q_heads = 1, c.kv_heads = 1, c.num_q = 100, c.num_chunk = 100, c.cache_lengths = {8000};
  c.mass = true;
  c.seed = seed0 + 900;
  {
    INFO("the rule splits one CTA over a long cache");
    // kernels/sm90/schedule.hpp: 1 CTA, 64 tiles of 128 tokens (or 127 of 64) -> several splits.
    const int rows = kernels::sm90::DefaultConfig<Layout, Mode>::kRows;
    const int tile = kernels::sm90::DefaultConfig<Layout, Mode>::kTileN;
    kernels::sm90::ChunkSplitShape sh;
    sh.batch = 1, sh.q_heads = 1, sh.num_q = 100, sh.rows = rows, sh.tile_n = tile, sh.head_dim = Layout::kHeadDim;
    sh.sm_count = 132;
    sh.max_keys = (8000 + Layout::kKeyTokensPerGroup - 1) / Layout::kKeyTokensPerGroup * Layout::kKeyTokensPerGroup +
                  Layout::kKeyTokensPerGroup + 100;  // the harness's capacity bound + the chunk
    REQUIRE(kernels::sm90::chunk_splits(sh) > 1);
    checked += run_attention_case<Layout, Mode, AutoConfig>(c, name).checked;
  }
  return checked;
}

/// The small case the sanitizers run, in 3 splits.
template <class Layout, Correction Mode>
std::size_t run_split_sanitizer_case(const char* name, std::uint64_t seed) {
  AttentionCase c = sanitizer_case(seed);
  c.splits = 3;
  return run_attention_case<Layout, Mode, AutoConfig>(c, name).checked;
}

}  // namespace kvq::test
