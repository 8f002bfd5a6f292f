// GPU tests of attention through block tables on the mma.sync kernel (forced): identity and
// shuffled tables equal the contiguous cache bit for bit, shared pages and poisoned tables
// (test_paged_common.cuh), every correction mode, PerToken and PerChannel keys, centered
// rotated keys, pages of one and two kernel tiles.
#include "kernels/test_paged_common.cuh"

namespace {

using namespace kvq::test::paged;
using kvq::Correction;
using Sm80 = kvq::kernels::sm80::DefaultTileConfig<128>;
constexpr auto kSm80 = kvq::AttentionPath::kSm80;
namespace variants = kvq::variants;

}  // namespace

TEST_CASE("paged attention, mma.sync kernel: INT2 PerToken, every PerToken correction", "[paged]") {
  for (int pt : {64, 128}) {
    CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor2, Sm80>(pt, kSm80, 0xa770 + pt) > 0);
    CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kNone, Sm80>(pt, kSm80, 0xa771 + pt) > 0);
    CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128, Correction::kTaylor4, Sm80>(pt, kSm80, 0xa772 + pt) > 0);
  }
  CHECK(run_shared_pages<variants::Int2Pt128D128, Correction::kTaylor2, Sm80>(64, kSm80, 0xa773) > 0);
}

TEST_CASE("paged attention, mma.sync kernel: a table column outside the pool skips the entry", "[paged][sanitize]") {
  CHECK(run_poisoned_attention<variants::Int2Pt128D128, Correction::kTaylor2, Sm80>(64, kSm80, 0xa774) > 0);
  CHECK(run_poisoned_attention<variants::Int2Pc32D128, Correction::kExact, Sm80>(128, kSm80, 0xa775) > 0);
}

TEST_CASE("paged attention, mma.sync kernel: INT2 PerChannel keys with tails, Exact and Taylor2", "[paged]") {
  for (int pt : {64, 128}) {
    CHECK(run_paged_vs_contiguous<variants::Int2Pc32D128, Correction::kExact, Sm80>(pt, kSm80, 0xa780 + pt) > 0);
    CHECK(run_paged_vs_contiguous<variants::Int2Pc32D128, Correction::kTaylor2, Sm80>(pt, kSm80, 0xa781 + pt) > 0);
  }
  CHECK(run_shared_pages<variants::Int2Pc32D128, Correction::kExact, Sm80>(64, kSm80, 0xa782) > 0);
}

TEST_CASE("paged attention, mma.sync kernel: centered rotated keys", "[paged]") {
  CHECK(run_paged_vs_contiguous<variants::Int2Pt128D128RotCen, Correction::kTaylor2, Sm80>(64, kSm80, 0xa790) > 0);
  CHECK(run_shared_pages<variants::Int2Pt128D128RotCen, Correction::kTaylor2, Sm80>(128, kSm80, 0xa791) > 0);
}

TEST_CASE("paged attention refuses page sizes the mma.sync tiles do not fit", "[paged][cpu]") {
  using P = PagedOf<variants::Int2Pt128D128>;
  P pl;
  REQUIRE(P::make({1, 2, 32, 8, 4, kvq::DType::kBFloat16}, &pl) == kvq::Status::kSuccess);
  std::vector<std::int32_t> tables(4, 0);
  const auto view = PagedView<P>::bind(pl, tables.data(), 4);
  using Tr = kvq::kernels::sm80::Traits<PagedView<P>, Correction::kTaylor2, kvq::DType::kBFloat16, Sm80>;
  CHECK_FALSE(kvq::detail::attention::paged_tiles_fit<Tr>(view, false));  // 32-token pages, 64-token tiles
  using P2 = P;
  P2 pl2;
  REQUIRE(P2::make({1, 2, 128, 8, 4, kvq::DType::kBFloat16}, &pl2) == kvq::Status::kSuccess);
  CHECK(kvq::detail::attention::paged_tiles_fit<Tr>(PagedView<P2>::bind(pl2, tables.data(), 4), false));
}
