// GPU tests of attention through block tables on the Hopper kernel (kvq::AutoConfig on a
// compute capability 9.0 device): 128-token tiles read from one 128-token page or from two
// 64-token pages, bit-identical to the contiguous cache for identity and shuffled tables, shared
// pages and poisoned tables (test_paged_common.cuh); centered rotated keys; split-KV. And the
// short-query kernel through block tables (decode shapes, with and without splits, poisoned
// tables), which AutoConfig takes on any device.
#include "kernels/test_paged_common.cuh"

namespace {

using namespace kvq::test::paged;
using kvq::Correction;
using Auto = kvq::AutoConfig;
constexpr auto kSm90 = kvq::AttentionPath::kSm90;
namespace variants = kvq::variants;

}  // namespace

TEST_CASE("paged attention, Hopper kernel: INT2 PerToken, every PerToken correction", "[paged][sm90]") {
  for (int pt : {64, 128, 256}) {
    CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(pt, kSm90, 0xb770 + pt) > 0);
    CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kNone, Auto>(pt, kSm90, 0xb771 + pt) > 0);
    CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor4, Auto>(pt, kSm90, 0xb772 + pt) > 0);
  }
  CHECK(run_shared_pages<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(64, kSm90, 0xb773) > 0);
  CHECK(run_poisoned_attention<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(64, kSm90, 0xb774) > 0);
}

TEST_CASE("paged attention, Hopper kernel: centered rotated keys", "[paged][sm90]") {
  CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128RotCen, Correction::kTaylor2, Auto>(64, kSm90, 0xb790) > 0);
  CHECK(run_shared_pages<variants::Int2Pt128D128RotCen, Correction::kTaylor2, Auto>(128, kSm90, 0xb791) > 0);
  CHECK(run_poisoned_attention<variants::Int2Pt128D128RotCen, Correction::kTaylor2, Auto>(128, kSm90, 0xb792) > 0);
}

TEST_CASE("paged attention, Hopper kernel: 32-token pages, four bulk copies per tile", "[paged][sm90]") {
  // Too small for the mma.sync kernel's 64-token tiles; the Hopper kernel copies each 128-token
  // tile from four pages (32 tokens x 4 bytes of metadata: 16-byte-aligned pieces).
  CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(32, kSm90, 0xb7a0) > 0);
}

TEST_CASE("paged attention, Hopper kernel: split-KV", "[paged][sm90][split]") {
  Shape s;
  s.splits = 3;
  for (int pt : {64, 128}) CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(pt, kSm90, 0xb7b0 + pt, s) > 0);
  CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128RotCen, Correction::kTaylor2, Auto>(64, kSm90, 0xb7b2, s) > 0);
}

TEST_CASE("paged attention, Hopper kernel, split-KV: a table column outside the pool skips the entry",
          "[paged][sm90][split][sanitize]") {
  Shape s;
  s.splits = 4;
  CHECK(run_poisoned_attention<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(64, kSm90, 0xb7b3, s) > 0);
}

// The short-query kernel through block tables (any compute capability 8.0+: AutoConfig takes
// it for 1..16 queries, on paged views as on contiguous caches).
TEST_CASE("paged attention, short-query kernel: decode shapes, with and without splits", "[paged][decode]") {
  constexpr auto kShort = kvq::AttentionPath::kShort;
  Shape s = short_shape();
  for (int pt : {64, 128}) CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(pt, kShort, 0xb7c0 + pt, s) > 0);
  CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128RotCen, Correction::kTaylor2, Auto>(64, kShort, 0xb7c2, s) > 0);
  s.splits = 5;
  CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(64, kShort, 0xb7c3, s) > 0);
}

TEST_CASE("paged attention, short-query kernel: a table column outside the pool skips the entry", "[paged][decode][sanitize]") {
  constexpr auto kShort = kvq::AttentionPath::kShort;
  Shape s = short_shape();
  for (int splits : {1, 3}) {
    s.splits = splits;
    CHECK(run_poisoned_attention<variants::Int2Pt128D128, Correction::kTaylor2, Auto>(64, kShort, 0xb7c4 + splits, s) > 0);
  }
}
