// Tests of kvq/kernels/sm90/schedule.hpp: the split rule of the Hopper chunk kernel on the
// video shapes of benchmarks/RESULTS.md (132 SMs, 128-row CTAs, 128-token tiles, D 128), with
// the modelled times worked by hand for the frame-level shape.
#include <catch2/catch.hpp>

#include <cstdint>

#include <kvq/kernels/sm90/schedule.hpp>

namespace {

using kvq::kernels::sm90::ChunkSplitShape;

ChunkSplitShape video(int batch, int heads, std::int64_t nq, std::int64_t cache) {
  ChunkSplitShape s;
  s.batch = batch, s.q_heads = heads, s.num_q = nq, s.max_keys = cache + nq;
  s.rows = 128, s.tile_n = 128, s.head_dim = 128, s.sm_count = 132;
  return s;
}

}  // namespace

TEST_CASE("chunk split rule: the modelled times of the frame-level shape", "[cpu][schedule]") {
  using kvq::kernels::sm90::chunk_split_time_ns;
  // 13 row blocks x 12 heads = 156 CTAs; 32760 keys = 256 tiles; a tile 4 x 128^3 / 4500 ns.
  const ChunkSplitShape f = video(1, 12, 1560, 31200);
  const double tile = 4.0 * 128 * 128 * 128 / 4500.0;
  // s = 1: 2 waves x (256 + 2) tiles.
  CHECK(chunk_split_time_ns(f, 1) == Approx(2 * 258 * tile));
  // s = 5: 780 CTAs, 6 waves x (52 + 2) tiles, plus 18720 rows x 5 x 132 floats written and
  // read, 18720 x 128 bf16 written, over 3000 B/ns, plus one launch (3000 ns).
  const double combine5 = (18720.0 * 5 * 132 * 8 + 18720.0 * 256) / 3000.0 + 3000.0;
  CHECK(chunk_split_time_ns(f, 5) == Approx(6 * 54 * tile + combine5));
}

TEST_CASE("chunk split rule: the video shapes", "[cpu][schedule]") {
  using kvq::kernels::sm90::chunk_splits;
  // Frame-level: 1.2 waves -> 5 splits (6 waves of 52 tiles against 2 of 256).
  CHECK(chunk_splits(video(1, 12, 1560, 31200)) == 5);
  // Wan 1.3B chunk: 444 CTAs, 3.4 waves -> 2 splits (7 waves of 92 tiles against 4 of 183).
  CHECK(chunk_splits(video(1, 12, 4680, 18720)) == 2);
  // Many waves: the last wave's loss is smaller than the combine's cost.
  CHECK(chunk_splits(video(1, 24, 8192, 65536)) == 1);   // 1536 CTAs
  CHECK(chunk_splits(video(1, 40, 7800, 46800)) == 1);   // Wan 14B chunk, 2440 CTAs
  CHECK(chunk_splits(video(1, 24, 21600, 64800)) == 1);  // MAGI-1 chunk, 4056 CTAs
}

TEST_CASE("chunk split rule: limits", "[cpu][schedule]") {
  using kvq::kernels::sm90::chunk_splits;
  // One CTA over 65 tiles: at most 65 / 8 = 8 splits, and 8 is the fastest.
  CHECK(chunk_splits(video(1, 1, 100, 8192)) == 8);
  // Fewer than 16 tiles: no split (a split gets at least 8).
  CHECK(chunk_splits(video(1, 1, 100, 1000)) == 1);
  // A very long sequence: at most 16 splits.
  CHECK(chunk_splits(video(1, 1, 100, 1 << 22)) == 16);
  // Nothing to run.
  CHECK(chunk_splits(video(1, 1, 0, 8192)) == 1);
  CHECK(chunk_splits(video(0, 1, 100, 8192)) == 1);
}
