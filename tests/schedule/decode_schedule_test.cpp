// Tests of kvq/kernels/decode/schedule.hpp: the AutoConfig rule of the short-query path,
// the split count (wave efficiencies counted by hand for the decode shapes on a 132-SM
// GPU) and the tile ranges of the splits (disjoint, covering, whole units).
#include <catch2/catch.hpp>

#include <cstdint>

#include <kvq/kernels/decode/schedule.hpp>

namespace {

using kvq::kernels::decode::ShortQueryShape;

ShortQueryShape decode_shape(std::int64_t num_q) {
  ShortQueryShape s;
  s.batch = 8, s.q_heads = 32, s.kv_heads = 8, s.num_q = num_q, s.max_keys = 32768 + num_q;
  s.sm_count = 132, s.ctas_per_sm = 2;
  return s;
}

}  // namespace

TEST_CASE("short-query rule: up to 16 queries", "[cpu][decode]") {
  using kvq::kernels::decode::prefer_short_query;
  CHECK_FALSE(prefer_short_query(decode_shape(0)));
  CHECK(prefer_short_query(decode_shape(1)));
  CHECK(prefer_short_query(decode_shape(16)));
  CHECK_FALSE(prefer_short_query(decode_shape(17)));
  CHECK_FALSE(prefer_short_query(decode_shape(1560)));
}

TEST_CASE("short-query splits", "[cpu][decode]") {
  using kvq::kernels::decode::short_query_splits;
  // Decode: 64 CTAs (8 x 8 kv heads, one row block of 4 packed rows) on 264 slots. Wave
  // efficiencies 64 s / (ceil(64 s / 264) 264): s = 1..4: .24 .48 .73 .97; s = 33: 1.0 (the
  // best); the smallest s within 0.85 of it is 4.
  CHECK(short_query_splits(decode_shape(1)) == 4);
  // 16 queries x GQA 4 = 64 packed rows: one row block, the same 64 CTAs.
  CHECK(short_query_splits(decode_shape(16)) == 4);
  // 17 queries: 68 rows, two row blocks, 128 CTAs: s = 1: .48, s = 2: .97 -> 2.
  CHECK(short_query_splits(decode_shape(17)) == 2);
  // One slot per SM: 64 CTAs on 132 slots: s = 1: .48, s = 2: .97 -> 2.
  ShortQueryShape one = decode_shape(1);
  one.ctas_per_sm = 1;
  CHECK(short_query_splits(one) == 2);
  // At least 0.8 of the slots filled: no split (frame-level: 25 row blocks x 12 heads = 300).
  ShortQueryShape frame;
  frame.batch = 1, frame.q_heads = 12, frame.kv_heads = 12, frame.num_q = 1560, frame.max_keys = 31200 + 1560;
  frame.sm_count = 132, frame.ctas_per_sm = 2;
  CHECK(short_query_splits(frame) == 1);
  // Short sequences: 300 keys = 5 tiles, at least 4 tiles a split -> at most 2 splits.
  ShortQueryShape small;
  small.batch = 1, small.q_heads = 1, small.kv_heads = 1, small.num_q = 1, small.max_keys = 300;
  small.sm_count = 132, small.ctas_per_sm = 2;
  CHECK(short_query_splits(small) == 2);
  small.max_keys = 0;
  CHECK(short_query_splits(small) == 1);
  // A long sequence and one CTA: efficiencies s / 264 up to the cap of 64 splits; the
  // smallest within 0.85 of 64 / 264 is 55.
  small.max_keys = 1 << 20;
  CHECK(short_query_splits(small) == 55);
  // No CTA at all.
  small.num_q = 0;
  CHECK(short_query_splits(small) == 1);
}

TEST_CASE("split ranges: disjoint, covering, in whole units", "[cpu][decode]") {
  using kvq::kernels::decode::split_range;
  int b = -1, e = -1;
  split_range(10, 4, 1, 0, &b, &e);
  CHECK((b == 0 && e == 3));
  split_range(10, 4, 1, 3, &b, &e);
  CHECK((b == 9 && e == 10));
  split_range(10, 4, 4, 1, &b, &e);  // units of 4 tiles: [0,4) [4,8) [8,10) [10,10)
  CHECK((b == 4 && e == 8));
  split_range(10, 4, 4, 2, &b, &e);
  CHECK((b == 8 && e == 10));
  split_range(10, 4, 4, 3, &b, &e);
  CHECK(b == e);
  for (int n : {0, 1, 2, 5, 63, 64, 65, 513}) {
    for (int splits : {1, 2, 3, 4, 7, 64}) {
      for (int unit : {1, 2, 4}) {
        int next = 0;
        for (int s = 0; s < splits; ++s) {
          split_range(n, splits, unit, s, &b, &e);
          INFO("n " << n << " splits " << splits << " unit " << unit << " split " << s);
          REQUIRE(b == next);  // contiguous, in order, disjoint
          REQUIRE(e >= b);
          REQUIRE(e <= n);
          if (e > b) REQUIRE(b % unit == 0);
          next = e;
        }
        REQUIRE(next == n);  // covering
      }
    }
  }
}
