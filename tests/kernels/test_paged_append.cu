// GPU tests of kvq::quantize_append through block tables (layout::PagedView): the whole device
// allocation, sentinel guards around it included, is byte-identical to the host allocation that
// kvq::reference::quantize_append writes through the same tables, after every append; one page
// per entry of a batch-1 cache is the contiguous cache byte for byte; poisoned tables leave the
// entry untouched and report kAppendErrorPage.
#include "kernels/test_paged_common.cuh"

namespace {

using namespace kvq::test::paged;
using kvq::Status;
using kvq::test::DeviceBuffer;
using kvq::test::test_stream;
namespace variants = kvq::variants;

/// Appends of these sizes cross page boundaries, complete and leave PerChannel tails, and start
/// in the middle of a page.
const std::vector<int> kChunks = {100, 37, 1, 200, 64, 29};

template <class C>
void shuffled_sequence(int page_tokens, std::uint64_t seed) {
  using P = PagedOf<C>;
  const int total = std::accumulate(kChunks.begin(), kChunks.end(), 0);
  const int max_pages = (total + page_tokens - 1) / page_tokens + 1;
  PagedCache<P> pc(3, 2, page_tokens, max_pages, 3 * max_pages + 7, true, seed);
  std::mt19937_64 rng(seed + 1);
  Act k(3, total, 2, C::kHeadDim), v(3, total, 2, C::kHeadDim);
  k.fill(rng), v.fill(rng);
  int first = 0;
  for (int n : kChunks) {
    append_both(pc, k, v, first, n);
    first += n;
  }
  require_unlisted_untouched(pc, pc.dev.download(), (first + page_tokens - 1) / page_tokens);
}

}  // namespace

TEMPLATE_TEST_CASE("paged quantize_append with shuffled tables equals the reference byte for byte, unlisted pages untouched",
                   "[paged]", variants::Int2Pt128D128, variants::Int2Pc32D128, variants::Int2Pt128D128RotCen,
                   variants::Int2Pc32D128RotCen) {
  for (int pt : {64, 128}) {
    INFO("page_tokens " << pt);
    shuffled_sequence<TestType>(pt, 0x9a6e0 + static_cast<std::uint64_t>(pt));
  }
}

TEMPLATE_TEST_CASE("one page per entry of a batch-1 paged cache is the contiguous cache byte for byte", "[paged]",
                   variants::Int2Pt128D128, variants::Int2Pc32D128RotCen) {
  using C = TestType;
  using P = PagedOf<C>;
  const int total = std::accumulate(kChunks.begin(), kChunks.end(), 0);
  const int pt = (total + 63) / 64 * 64;
  PagedCache<P> pc(1, 3, pt, 1, 1, false, 1);
  C cl;
  REQUIRE(C::make({1, 3, pt, kvq::DType::kBFloat16}, &cl) == Status::kSuccess);
  REQUIRE(cl.bytes() == pc.pl.bytes());
  DeviceBuffer<unsigned char> contiguous(std::vector<unsigned char>(static_cast<std::size_t>(cl.bytes()), kSentinel));
  DeviceBuffer<std::int32_t> lens(std::vector<std::int32_t>{0});
  std::mt19937_64 rng(0x9a6e1);
  Act k(1, total, 3, C::kHeadDim), v(1, total, 3, C::kHeadDim);
  k.fill(rng), v.fill(rng);
  int first = 0;
  for (int n : kChunks) {
    append_both(pc, k, v, first, n);
    kvq::AppendArguments a;
    a.cache = contiguous.get();
    a.k = k.view(true, first);
    a.v = v.view(true, first);
    a.num_tokens = n;
    a.lengths = lens.get();
    REQUIRE(kvq::quantize_append(cl, a, test_stream()) == Status::kSuccess);
    KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
    first += n;
  }
  const std::vector<unsigned char> paged = pc.dev.download();
  const std::vector<unsigned char> inner(paged.begin() + kGuard, paged.end() - kGuard);
  std::size_t at = 0;
  CHECK(count_diff(inner, contiguous.download(), &at) == 0);
}

TEMPLATE_TEST_CASE("paged quantize_append skips an entry whose table lists a page outside the pool and reports it", "[paged][sanitize]",
                   variants::Int2Pt128D128, variants::Int2Pc32D128RotCen) {
  using C = TestType;
  using P = PagedOf<C>;
  const int pt = 64, max_pages = 6;
  for (std::int32_t poison : {std::int32_t{-1}, std::int32_t{1000}}) {
    INFO("poisoned column holds " << poison);
    PagedCache<P> pc(3, 2, pt, max_pages, 3 * max_pages + 8, true, 0x9a6e2);
    std::mt19937_64 rng(0x9a6e3);
    Act k(3, 300, 2, C::kHeadDim), v(3, 300, 2, C::kHeadDim);
    k.fill(rng), v.fill(rng);
    append_both(pc, k, v, 0, 90);  // every entry at length 90
    // Expected: the reference through a table whose entry 1 lists spare pages instead (the
    // poisoned entry's own pages and its per-entry state then keep their bytes, restored below).
    const std::vector<unsigned char> before = pc.host;
    std::vector<std::int32_t> device_tables = pc.tables;
    device_tables[static_cast<std::size_t>(max_pages + 2)] = poison;  // column 2: tokens [128, 192), written by an append of 100
    const std::vector<bool> used = pc.listed(max_pages);
    std::vector<std::int32_t> spare;
    for (std::int32_t id = 0; id < pc.pl.shape.num_pages && spare.size() < static_cast<std::size_t>(max_pages); ++id)
      if (!used[static_cast<std::size_t>(id)]) spare.push_back(id);
    REQUIRE(spare.size() == static_cast<std::size_t>(max_pages));
    std::vector<std::int32_t> ref_tables = pc.tables;
    for (int i = 0; i < max_pages; ++i) ref_tables[static_cast<std::size_t>(max_pages + i)] = spare[static_cast<std::size_t>(i)];
    std::vector<std::int32_t> ref_lens = pc.lens;
    const auto ref_view = PagedView<P>::bind(pc.pl, ref_tables.data(), max_pages);
    REQUIRE(kvq::reference::quantize_append(ref_view, pc.host_base(), ref_lens.data(), k.view(false, 90), v.view(false, 90), 100) ==
            Status::kSuccess);
    std::vector<unsigned char> expected = pc.host;
    const auto restore = [&](std::int64_t off, std::int64_t n) {
      std::copy(before.begin() + kGuard + off, before.begin() + kGuard + off + n, expected.begin() + kGuard + off);
    };
    for (std::int32_t id : spare) restore(id * pc.pl.page_bytes(), pc.pl.page_bytes());
    const std::int64_t tail_entry = pc.pl.tail_bytes() / 3, mean_entry = pc.pl.k_mean_bytes() / 3;
    if (tail_entry > 0) restore(pc.pl.k_tail_offset() + tail_entry, tail_entry), restore(pc.pl.v_tail_offset() + tail_entry, tail_entry);
    if (mean_entry > 0) restore(pc.pl.k_mean_offset() + mean_entry, mean_entry);
    ref_lens[1] = 90;
    // The device run through the poisoned table.
    DeviceBuffer<std::int32_t> d_tables(device_tables);
    DeviceBuffer<std::uint32_t> err(std::vector<std::uint32_t>{0u});
    kvq::AppendArguments a;
    a.cache = pc.dev_base();
    a.k = k.view(true, 90);
    a.v = v.view(true, 90);
    a.num_tokens = 100;
    a.lengths = pc.d_lens.get();
    a.error = err.get();
    REQUIRE(kvq::quantize_append(PagedView<P>::bind(pc.pl, d_tables.get(), max_pages), a, test_stream()) == Status::kSuccess);
    KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
    CHECK(err.download()[0] == static_cast<std::uint32_t>(kvq::kAppendErrorPage));
    CHECK(pc.d_lens.download() == ref_lens);
    std::size_t at = 0;
    const std::size_t diff = count_diff(pc.dev.download(), expected, &at);
    INFO("first differing byte " << static_cast<long long>(at) - static_cast<long long>(kGuard));
    CHECK(diff == 0);
    // The host reference refuses the poisoned table outright.
    std::vector<unsigned char> scratch = before;
    std::vector<std::int32_t> lens_copy = pc.lens;
    CHECK(kvq::reference::quantize_append(PagedView<P>::bind(pc.pl, device_tables.data(), max_pages), scratch.data() + kGuard,
                                          lens_copy.data(), k.view(false, 90), v.view(false, 90), 100) == Status::kErrorInvalidArgument);
  }
}

TEST_CASE("paged quantize_append refuses views the host can tell are bad", "[paged][cpu]") {
  using P = PagedOf<variants::Int2Pt128D128>;
  P pl;
  REQUIRE(P::make({2, 2, 64, 16, 4, kvq::DType::kBFloat16}, &pl) == Status::kSuccess);
  std::vector<std::int32_t> tables(8, 0);
  kvq::AppendArguments a;
  a.cache = reinterpret_cast<void*>(std::uintptr_t{1} << 20);
  a.lengths = reinterpret_cast<std::int32_t*>(std::uintptr_t{1} << 21);
  a.k = kvq::Tensor4{a.cache, kvq::DType::kBFloat16, 128 * 2 * 128, 2 * 128, 128};
  a.v = a.k;
  a.num_tokens = 8;
  using Plan = kvq::AppendPlan<PagedView<P>>;
  CHECK(Plan::can_implement(PagedView<P>::bind(pl, tables.data(), 4), a) == Status::kSuccess);
  CHECK(Plan::can_implement(PagedView<P>::bind(pl, nullptr, 4), a) == Status::kErrorInvalidArgument);
  CHECK(Plan::can_implement(PagedView<P>::bind(pl, tables.data(), 3), a) == Status::kErrorInvalidArgument);  // stride < columns
  CHECK(Plan::can_implement(PagedView<P>::bind(pl, reinterpret_cast<const std::int32_t*>(reinterpret_cast<const char*>(tables.data()) + 2), 4),
                            a) == Status::kErrorMisaligned);
  a.max_cache_length = 250;  // + 8 > 4 pages of 64
  CHECK(Plan::can_implement(PagedView<P>::bind(pl, tables.data(), 4), a) == Status::kErrorCapacityExceeded);
}
