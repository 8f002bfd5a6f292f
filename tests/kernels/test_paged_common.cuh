// Shared harness of the paged-cache GPU tests (test_paged*.cu): block tables, pools with
// sentinel bytes around and inside them, bf16 activations, and the device runs of
// quantize-append and attention through layout::PagedView next to the CPU reference
// (include/kvq/reference), the definition of both operations.
#pragma once

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvq/api/attention.cuh"
#include "kvq/api/default_variants.cuh"
#include "kvq/api/quantize_append.cuh"
#include "kvq/layout/paged_layout.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/reference/attention.hpp"
#include "kvq/reference/quantize_append.hpp"
#include "support/cuda_check.cuh"

namespace kvq::test::paged {

using layout::CacheLayout;
using layout::PagedCacheLayout;
using layout::PagedView;

/// The paged twins of the default variants the tests run.
template <class C>
using PagedOf = PagedCacheLayout<typename C::KSpec, typename C::VSpec, C::kHeadDim, C::kKeyRotation>;

constexpr unsigned char kSentinel = 0xA5;
constexpr std::size_t kGuard = 4096;  ///< sentinel bytes before and after every device cache (keeps 256-byte alignment)

inline std::uint16_t bf16(float x) { return math::float_to_bf16_bits_rn(x); }
inline float from_bf16(std::uint16_t b) { return math::bf16_bits_to_float(b); }

/// A dense [batch, tokens, heads, D] bf16 tensor on the host and the device.
struct Act {
  int b = 0, n = 0, h = 0, d = 0;
  std::vector<std::uint16_t> host;
  DeviceBuffer<std::uint16_t> dev;
  Act(int b_, int n_, int h_, int d_) : b(b_), n(n_), h(h_), d(d_), host(static_cast<std::size_t>(b_) * std::max(n_, 1) * h_ * d_, 0) {}
  /// Normal values with an outlier channel (3) and a shifted channel (5): PerChannel keys and the
  /// key mean see structure.
  void fill(std::mt19937_64& rng, float scale = 1.0f) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (std::size_t i = 0; i < host.size(); ++i) {
      const int c = static_cast<int>(i % static_cast<std::size_t>(d));
      host[i] = bf16(scale * nd(rng) * (c == 3 ? 6.0f : 1.0f) + (c == 5 ? 2.0f : 0.0f));
    }
    dev = DeviceBuffer<std::uint16_t>(host);
  }
  Tensor4 view(bool device, int first = 0) const {
    const std::int64_t ts = std::int64_t{h} * d;
    const std::uint16_t* base = device ? dev.get() : host.data();
    return Tensor4{const_cast<std::uint16_t*>(base) + static_cast<std::size_t>(first) * ts, DType::kBFloat16,
                   std::int64_t{std::max(n, 1)} * ts, ts, d};
  }
};

/// A paged cache on the host and the device: the pool and per-entry state inside kGuard sentinel
/// bytes on each side, the block tables, the lengths.
template <class P>
struct PagedCache {
  P pl{};
  std::vector<std::int32_t> tables;  ///< [batch][max_pages]
  std::vector<unsigned char> host;   ///< kGuard + bytes() + kGuard
  std::vector<std::int32_t> lens;
  DeviceBuffer<unsigned char> dev;
  DeviceBuffer<std::int32_t> d_tables, d_lens;

  /// Tables: identity (entry b, column i -> page b * max_pages + i) or a random permutation
  /// of the pool (seeded).
  PagedCache(int batch, int heads, int page_tokens, int max_pages, std::int64_t pool_pages, bool shuffle, std::uint64_t seed) {
    REQUIRE(P::make({batch, heads, page_tokens, pool_pages, max_pages, DType::kBFloat16}, &pl) == Status::kSuccess);
    REQUIRE(pool_pages >= std::int64_t{batch} * max_pages);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(pool_pages));
    std::iota(ids.begin(), ids.end(), 0);
    if (shuffle) {
      std::mt19937_64 rng(seed);
      std::shuffle(ids.begin(), ids.end(), rng);
    }
    tables.assign(ids.begin(), ids.begin() + std::int64_t{batch} * max_pages);
    host.assign(static_cast<std::size_t>(pl.bytes()) + 2 * kGuard, kSentinel);
    lens.assign(static_cast<std::size_t>(batch), 0);
    dev = DeviceBuffer<unsigned char>(host);
    d_tables = DeviceBuffer<std::int32_t>(tables);
    d_lens = DeviceBuffer<std::int32_t>(lens);
  }
  unsigned char* host_base() { return host.data() + kGuard; }
  unsigned char* dev_base() const { return dev.get() + kGuard; }
  int max_pages() const { return pl.shape.max_pages_per_entry; }
  PagedView<P> host_view() const { return PagedView<P>::bind(pl, tables.data(), max_pages()); }
  PagedView<P> dev_view() const { return PagedView<P>::bind(pl, d_tables.get(), max_pages()); }
  void upload() {
    dev.upload(host);
    d_tables.upload(tables);
    d_lens.upload(lens);
  }
  /// Pages no table column lists (among the first `columns` of each entry).
  std::vector<bool> listed(int columns) const {
    std::vector<bool> l(static_cast<std::size_t>(pl.shape.num_pages), false);
    for (int b = 0; b < pl.shape.batch; ++b)
      for (int i = 0; i < columns; ++i) {
        const std::int32_t id = tables[static_cast<std::size_t>(b * max_pages() + i)];
        if (id >= 0 && id < pl.shape.num_pages) l[static_cast<std::size_t>(id)] = true;
      }
    return l;
  }
};

/// Index and count of the bytes where two buffers differ (0 and SIZE_MAX when equal).
inline std::size_t count_diff(const std::vector<unsigned char>& a, const std::vector<unsigned char>& b, std::size_t* first) {
  std::size_t n = 0;
  *first = SIZE_MAX;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (a[i] != b[i]) {
      if (n == 0) *first = i;
      ++n;
    }
  return n + (a.size() > b.size() ? a.size() - b.size() : b.size() - a.size());
}

/// Appends `n` tokens (K, V from `first`) on the host with the reference and on the device with
/// kvq::quantize_append through the tables; requires the whole device allocation, guards
/// included, byte-identical to the host one, the same lengths, and no error bit.
template <class P>
void append_both(PagedCache<P>& pc, const Act& k, const Act& v, int first, int n) {
  INFO("append of " << n << " tokens at token " << first);
  REQUIRE(reference::quantize_append(pc.host_view(), pc.host_base(), pc.lens.data(), k.view(false, first), v.view(false, first),
                                     n) == Status::kSuccess);
  DeviceBuffer<std::uint32_t> err(std::vector<std::uint32_t>{0u});
  AppendArguments a;
  a.cache = pc.dev_base();
  a.k = k.view(true, first);
  a.v = v.view(true, first);
  a.num_tokens = n;
  a.lengths = pc.d_lens.get();
  a.error = err.get();
  REQUIRE(quantize_append(pc.dev_view(), a, test_stream()) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  std::size_t at = 0;
  const std::size_t diff = count_diff(pc.dev.download(), pc.host, &at);
  INFO("first differing byte " << (at == SIZE_MAX ? -1 : static_cast<long long>(at) - static_cast<long long>(kGuard))
                               << " from the cache base (bytes " << pc.pl.bytes() << ", page " << pc.pl.page_bytes() << ")");
  CHECK(diff == 0);
  CHECK(pc.d_lens.download() == pc.lens);
  CHECK(err.download()[0] == 0u);
}

/// Every byte of the pages no table lists, and the guards, still hold the sentinel.
template <class P>
void require_unlisted_untouched(const PagedCache<P>& pc, const std::vector<unsigned char>& bytes, int columns) {
  const std::vector<bool> listed = pc.listed(columns);
  std::size_t unlisted = 0, bad = 0;
  for (std::int64_t pg = 0; pg < pc.pl.shape.num_pages; ++pg) {
    if (listed[static_cast<std::size_t>(pg)]) continue;
    ++unlisted;
    const unsigned char* p0 = bytes.data() + kGuard + pg * pc.pl.page_bytes();
    bad += static_cast<std::size_t>(std::count_if(p0, p0 + pc.pl.page_bytes(), [](unsigned char x) { return x != kSentinel; }));
  }
  for (std::size_t i = 0; i < kGuard; ++i) bad += (bytes[i] != kSentinel) + (bytes[bytes.size() - 1 - i] != kSentinel);
  CHECK(unlisted > 0);
  CHECK(bad == 0);
}

// ---- attention --------------------------------------------------------------------------------

/// One attention call's shape.
struct Shape {
  int batch = 3, q_heads = 8, kv_heads = 2, num_q = 150, num_chunk = 70;
  std::vector<int> q_lengths{150, 77, 1};
  std::vector<int> chunk_lengths{70, 3, 5};
  Mask mask = Mask::kNone;
  int splits = 0;  ///< AttentionArguments::splits
};

/// The decode-shaped calls of the short-query kernel: 4 queries (one entry none) of 8 q heads
/// on 2 kv heads.
inline Shape short_shape() {
  Shape s;
  s.num_q = 4, s.num_chunk = 4;
  s.q_lengths = {4, 1, 0};
  s.chunk_lengths = {4, 1, 2};
  return s;
}

/// Device outputs of one call.
struct Outputs {
  std::vector<std::uint16_t> o;
  std::vector<float> lse, mass;
  std::uint32_t error = 0;
  bool operator==(const Outputs& x) const {
    return o == x.o && std::memcmp(lse.data(), x.lse.data(), lse.size() * 4) == 0 &&
           std::memcmp(mass.data(), x.mass.data(), mass.size() * 4) == 0;
  }
};

/// Queries and the current chunk of one call, host and device.
struct Inputs {
  Act q, kc, vc;
  Inputs(const Shape& s, int d, std::uint64_t seed)
      : q(s.batch, s.num_q, s.q_heads, d), kc(s.batch, s.num_chunk, s.kv_heads, d), vc(s.batch, s.num_chunk, s.kv_heads, d) {
    std::mt19937_64 rng(seed);
    q.fill(rng), kc.fill(rng), vc.fill(rng);
  }
};

/// Runs AttentionPlan<Layout, Mode, Config> on the device (o, LSE and mass poisoned first: NaN
/// bits, so rows the kernel skips keep them).
template <class Layout, Correction Mode, class Config>
Outputs run_device(const Layout& l, const void* cache, const std::vector<std::int32_t>& cache_lengths, const Shape& s,
                   const Inputs& in, AttentionPath want) {
  const std::size_t no = static_cast<std::size_t>(s.batch) * s.num_q * s.q_heads * Layout::kHeadDim;
  const std::size_t nr = static_cast<std::size_t>(s.batch) * s.q_heads * s.num_q;
  DeviceBuffer<std::uint16_t> o(std::vector<std::uint16_t>(no, 0xFFFFu));
  DeviceBuffer<float> lse(std::vector<float>(nr, std::nanf(""))), mass(std::vector<float>(3 * nr, std::nanf("")));
  DeviceBuffer<std::int32_t> lens(cache_lengths), ql(std::vector<std::int32_t>(s.q_lengths.begin(), s.q_lengths.end())),
      cl(std::vector<std::int32_t>(s.chunk_lengths.begin(), s.chunk_lengths.end()));
  DeviceBuffer<std::uint32_t> err(std::vector<std::uint32_t>{0u});
  AttentionArguments a;
  a.cache = cache;
  a.batch = s.batch;
  a.q_heads = s.q_heads;
  a.num_q = s.num_q;
  a.num_chunk = s.num_chunk;
  a.q = in.q.view(true);
  a.k_chunk = in.kc.view(true);
  a.v_chunk = in.vc.view(true);
  a.o = Tensor4{o.get(), DType::kBFloat16, std::int64_t{s.num_q} * s.q_heads * Layout::kHeadDim,
                std::int64_t{s.q_heads} * Layout::kHeadDim, Layout::kHeadDim};
  a.cache_lengths = lens.get();
  a.q_lengths = ql.get();
  a.chunk_lengths = cl.get();
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Layout::kHeadDim)));
  a.mask = s.mask;
  a.lse = lse.get();
  a.mass = mass.get();
  a.error = err.get();
  a.splits = s.splits;
  AttentionPlan<Layout, Mode, Config> plan;
  REQUIRE(plan.initialize(l, a) == Status::kSuccess);
  REQUIRE(plan.path() == want);
  if (s.splits > 0 && want != AttentionPath::kSm80) REQUIRE(plan.splits() == s.splits);
  REQUIRE(plan.run(a, test_stream()) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  Outputs out;
  out.o = o.download();
  out.lse = lse.download();
  out.mass = mass.download();
  out.error = err.download()[0];
  return out;
}

/// Reference attention through a host view (float64).
template <class View>
void run_reference(const View& v, const void* cache, const std::vector<std::int32_t>& cache_lengths, const Shape& s,
                   const Inputs& in, Correction mode, std::vector<double>* o, std::vector<double>* lse, std::vector<double>* mass) {
  const std::size_t no = static_cast<std::size_t>(s.batch) * s.num_q * s.q_heads * View::kHeadDim;
  const std::size_t nr = static_cast<std::size_t>(s.batch) * s.q_heads * s.num_q;
  o->assign(no, 0.0), lse->assign(nr, 0.0), mass->assign(3 * nr, 0.0);
  reference::AttentionArgs ra;
  ra.batch = s.batch;
  ra.q_heads = s.q_heads;
  ra.num_q = s.num_q;
  ra.num_chunk = s.num_chunk;
  ra.q = in.q.view(false);
  ra.k_chunk = in.kc.view(false);
  ra.v_chunk = in.vc.view(false);
  ra.cache_lengths = cache_lengths.data();
  ra.q_lengths = s.q_lengths.data();
  ra.chunk_lengths = s.chunk_lengths.data();
  ra.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(View::kHeadDim)));
  ra.mask = s.mask;
  ra.correction = mode;
  ra.out = o->data();
  ra.lse = lse->data();
  ra.mass = mass->data();
  REQUIRE(reference::attention(v, cache, ra) == Status::kSuccess);
}

/// Device outputs against the reference, with the tolerances of test_attention_common.cuh
/// (element-wise |o - ref| <= 1e-2 max|V| + 1e-2 |ref|, mean <= 1e-3 max|V|; LSE and mass);
/// entries in `skipped` must have kept the poison instead. Returns the number of bad elements.
inline std::size_t compare_with_reference(const Outputs& out, const std::vector<double>& ro, const std::vector<double>& rl,
                                          const std::vector<double>& rm, const Shape& s, int d, double max_v,
                                          bool rotated_keys, const std::vector<int>& skipped = {}) {
  const double kLseRel = rotated_keys ? 0x1p-8 : 0x1p-9;  // see the LSE check below
  std::size_t bad = 0, checked = 0;
  double sum = 0, worst = 0;
  std::ostringstream first;
  for (int b = 0; b < s.batch; ++b) {
    const bool skip = std::find(skipped.begin(), skipped.end(), b) != skipped.end();
    for (int i = 0; i < s.q_lengths[static_cast<std::size_t>(b)]; ++i)
      for (int h = 0; h < s.q_heads; ++h) {
        const std::size_t row = (static_cast<std::size_t>(b) * s.q_heads + h) * s.num_q + i;
        for (int c = 0; c < d; ++c) {
          const std::size_t idx = ((static_cast<std::size_t>(b) * s.num_q + i) * s.q_heads + h) * d + c;
          if (skip) {
            bad += out.o[idx] != 0xFFFFu;
            continue;
          }
          const double x = from_bf16(out.o[idx]), r = ro[idx], e = std::fabs(x - r);
          ++checked;
          sum += std::isfinite(e) ? e : 1e30;
          worst = std::max(worst, std::isfinite(e) ? e : 1e30);
          if (!(e <= 1e-2 * max_v + 1e-2 * std::fabs(r))) {
            if (bad < 4) first << " o[b=" << b << ",i=" << i << ",h=" << h << ",c=" << c << "]=" << x << " ref=" << r << ";";
            ++bad;
          }
        }
        if (skip) {
          bad += !std::isnan(out.lse[row]);
          continue;
        }
        const double r = rl[row], x = out.lse[row];
        // The kernel's scores use keys dequantized to bf16 (relative 2^-9 each) and, with rotated
        // keys, rotated queries rounded to bf16 (another 2^-9); with the outlier channels of these
        // inputs the scores near the row maximum, and so the LSE, move by up to that share of
        // |LSE| (measured on the H100: 0.056 at LSE 32.7 unrotated, 0.084 at 34.3 rotated).
        const bool ok = std::isinf(r) ? (std::isinf(x) && x < 0) : std::fabs(x - r) <= 1.5e-2 + kLseRel * std::fabs(r);
        if (!ok) {
          if (bad < 4) first << " lse[" << row << "]=" << x << " ref=" << r << ";";
          ++bad;
        }
        for (int g = 0; g < 3; ++g) {
          const double mr = rm[row * 3 + g], mx = out.mass[row * 3 + g];
          if (!(std::fabs(mx - mr) <= 1e-2 + 2e-2 * mr)) {
            if (bad < 4) first << " mass[" << row << "," << g << "]=" << mx << " ref=" << mr << ";";
            ++bad;
          }
        }
      }
  }
  const double mean = checked ? sum / static_cast<double>(checked) : 0.0;
  std::printf("[paged] max|o-ref| %.3g mean %.3g (max|V| %.3g), %zu compared, %zu bad%s\n", worst, mean, max_v, checked, bad,
              first.str().c_str());
  INFO("first mismatches:" << first.str());
  CHECK(mean <= 1e-3 * max_v);
  return bad;
}

/// max |V| over the chunk and the dequantized cached values (through a host view).
template <class View>
double max_value(const View& v, const void* cache, const std::vector<std::int32_t>& lens, const Inputs& in) {
  double m = 1.0;
  for (auto x : in.vc.host) m = std::max(m, std::fabs(static_cast<double>(from_bf16(x))));
  for (int b = 0; b < v.shape.batch; ++b)
    for (int h = 0; h < v.shape.heads; ++h)
      for (std::int64_t t = 0; t < View::quantized_length(lens[static_cast<std::size_t>(b)]); ++t)
        for (int c = 0; c < View::kHeadDim; ++c)
          m = std::max(m, std::fabs(static_cast<double>(reference::dequantized_value(v, cache, b, h, t, c))));
  return m;
}

/// A contiguous cache and a paged one filled on the host by the same two appends of max(lengths)
/// tokens to every entry (PerChannel layouts keep a tail); attention then reads entry b up to
/// lengths[b] (its quantized tokens and tail slots, whatever the bytes past them hold), on the
/// device from uploaded copies.
template <class C>
struct AttentionTwin {
  using P = PagedOf<C>;
  C cl{};
  std::vector<unsigned char> contiguous;
  DeviceBuffer<unsigned char> d_contiguous;
  PagedCache<P> pc;
  std::vector<std::int32_t> lens;  ///< the attention's cache lengths

  /// `twin_of_first`: entries that receive entry 0's keys and values (same codes, metadata and
  /// per-entry state: PerChannel tail, key mean).
  AttentionTwin(const std::vector<int>& lengths, int kv_heads, int page_tokens, bool shuffle, std::uint64_t seed,
                const std::vector<int>& twin_of_first = {})
      : pc(static_cast<int>(lengths.size()), kv_heads, page_tokens, max_pages_for(lengths, page_tokens),
           static_cast<std::int64_t>(lengths.size()) * max_pages_for(lengths, page_tokens) + 5, shuffle, seed),
        lens(lengths.begin(), lengths.end()) {
    const int batch = static_cast<int>(lengths.size());
    const int max_len = *std::max_element(lengths.begin(), lengths.end());
    REQUIRE(C::make({batch, kv_heads, pc.pl.entry_capacity(), DType::kBFloat16}, &cl) == Status::kSuccess);
    contiguous.assign(static_cast<std::size_t>(cl.bytes()), kSentinel);
    std::vector<std::int32_t> lc(static_cast<std::size_t>(batch), 0);
    std::mt19937_64 rng(seed ^ 0x5eedull);
    Act k(batch, std::max(max_len, 1), kv_heads, C::kHeadDim), v(batch, std::max(max_len, 1), kv_heads, C::kHeadDim);
    k.fill(rng), v.fill(rng);
    for (int e : twin_of_first)
      for (Act* a : {&k, &v}) {
        const std::size_t per = a->host.size() / static_cast<std::size_t>(a->b);
        std::copy(a->host.begin(), a->host.begin() + static_cast<std::ptrdiff_t>(per),
                  a->host.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(e) * per));
      }
    const int first = max_len / 3;
    for (auto [from, n] : {std::pair<int, int>{0, first}, std::pair<int, int>{first, max_len - first}}) {
      if (n == 0) continue;
      REQUIRE(reference::quantize_append(cl, contiguous.data(), lc.data(), k.view(false, from), v.view(false, from), n) ==
              Status::kSuccess);
      REQUIRE(reference::quantize_append(pc.host_view(), pc.host_base(), pc.lens.data(), k.view(false, from), v.view(false, from),
                                         n) == Status::kSuccess);
    }
    REQUIRE(pc.lens == lc);
    pc.upload();
    d_contiguous = DeviceBuffer<unsigned char>(contiguous);
  }

  static int max_pages_for(const std::vector<int>& lengths, int page_tokens) {
    const int max_len = *std::max_element(lengths.begin(), lengths.end());
    return std::max(1, (max_len + page_tokens - 1) / page_tokens + 1);
  }
};

/// The paged attention cases of one variant and kernel configuration: identity and shuffled
/// tables give bit-identical outputs to the contiguous cache on the same kernel (the tiles hold
/// the same tokens in the same order), and both stay within tolerance of the reference through
/// the tables; both masks, GQA 4, unequal lengths (one empty cache), LSE and mass. Returns the
/// output elements compared.
template <class C, Correction Mode, class Config>
std::size_t run_paged_vs_contiguous(int page_tokens, AttentionPath want, std::uint64_t seed, const Shape& base = Shape{}) {
  std::size_t compared = 0;
  for (bool shuffle : {false, true})
    for (Mask mask : {Mask::kNone, Mask::kCausalLastSegment}) {
      INFO("page_tokens " << page_tokens << (shuffle ? " shuffled" : " identity") << " tables, mask " << to_string(mask)
                          << ", num_q " << base.num_q << ", splits " << base.splits);
      AttentionTwin<C> t({700, 1000, 0}, 2, page_tokens, shuffle, seed);
      Shape s = base;
      s.mask = mask;
      const Inputs in(s, C::kHeadDim, seed + 1);
      const Outputs contiguous =
          run_device<C, Mode, Config>(t.cl, t.d_contiguous.get(), t.lens, s, in, want);
      const Outputs paged = run_device<PagedView<typename AttentionTwin<C>::P>, Mode, Config>(
          t.pc.dev_view(), t.pc.dev_base(), t.lens, s, in, want);
      CHECK(paged.error == 0u);
      CHECK(paged == contiguous);
      std::vector<double> ro, rl, rm;
      run_reference(t.pc.host_view(), t.pc.host_base(), t.lens, s, in, Mode, &ro, &rl, &rm);
      const double max_v = max_value(t.pc.host_view(), t.pc.host_base(), t.lens, in);
      CHECK(compare_with_reference(paged, ro, rl, rm, s, C::kHeadDim, max_v, C::kRotatedKeys) == 0);
      compared += paged.o.size();
    }
  return compared;
}

/// Shared pages: entry 1 lists entry 0's first pages (a shared sink or prefix) before its own;
/// entry 2's table is entry 0's (and its per-entry state, from the same appended tokens, equals
/// entry 0's). Within tolerance of the reference through the same tables; an entry that lists
/// exactly entry 0's pages with the same queries and chunk gives entry 0's bits.
/// Returns the output elements compared.
template <class C, Correction Mode, class Config>
std::size_t run_shared_pages(int page_tokens, AttentionPath want, std::uint64_t seed) {
  AttentionTwin<C> t({900, 900, 900}, 2, page_tokens, true, seed, {2});
  const int mp = t.pc.max_pages();
  for (int i = 0; i < 3; ++i) t.pc.tables[static_cast<std::size_t>(mp + i)] = t.pc.tables[static_cast<std::size_t>(i)];
  for (int i = 0; i < mp; ++i) t.pc.tables[static_cast<std::size_t>(2 * mp + i)] = t.pc.tables[static_cast<std::size_t>(i)];
  t.pc.upload();
  Shape s;
  s.q_lengths = {150, 150, 150};
  s.chunk_lengths = {70, 70, 70};
  s.mask = Mask::kCausalLastSegment;
  Inputs in(s, C::kHeadDim, seed + 7);
  // Entry 2's queries and chunk are entry 0's.
  for (Act* a : {&in.q, &in.kc, &in.vc}) {
    const std::size_t per = a->host.size() / static_cast<std::size_t>(a->b);
    std::copy(a->host.begin(), a->host.begin() + static_cast<std::ptrdiff_t>(per), a->host.begin() + static_cast<std::ptrdiff_t>(2 * per));
    a->dev.upload(a->host);
  }
  const Outputs paged = run_device<PagedView<typename AttentionTwin<C>::P>, Mode, Config>(t.pc.dev_view(), t.pc.dev_base(), t.lens,
                                                                                        s, in, want);
  CHECK(paged.error == 0u);
  std::vector<double> ro, rl, rm;
  run_reference(t.pc.host_view(), t.pc.host_base(), t.lens, s, in, Mode, &ro, &rl, &rm);
  CHECK(compare_with_reference(paged, ro, rl, rm, s, C::kHeadDim, max_value(t.pc.host_view(), t.pc.host_base(), t.lens, in),
                               C::kRotatedKeys) == 0);
  const std::size_t per_o = paged.o.size() / 3, per_r = paged.lse.size() / 3;
  CHECK(std::equal(paged.o.begin(), paged.o.begin() + static_cast<std::ptrdiff_t>(per_o),
                   paged.o.begin() + static_cast<std::ptrdiff_t>(2 * per_o)));
  CHECK(std::memcmp(paged.lse.data(), paged.lse.data() + 2 * per_r, per_r * 4) == 0);
  return paged.o.size();
}

/// Poisoned tables: entry 1 lists a page outside the pool (num_pages, then -1) among its cached
/// tokens' columns. The kernel skips entry 1 (its output, LSE and mass keep their poison) and
/// sets kAttentionErrorPage; the other entries match the reference. Returns the output
/// elements compared.
template <class C, Correction Mode, class Config>
std::size_t run_poisoned_attention(int page_tokens, AttentionPath want, std::uint64_t seed, const Shape& base = Shape{}) {
  std::size_t compared = 0;
  for (std::int32_t poison : {std::int32_t{-1}, std::int32_t{1 << 20}}) {
    AttentionTwin<C> t({700, 1000, 300}, 2, page_tokens, true, seed);
    std::vector<double> ro, rl, rm;
    Shape s = base;
    const Inputs in(s, C::kHeadDim, seed + 3);
    run_reference(t.pc.host_view(), t.pc.host_base(), t.lens, s, in, Mode, &ro, &rl, &rm);
    const double max_v = max_value(t.pc.host_view(), t.pc.host_base(), t.lens, in);
    const std::int32_t bad = poison < 0 ? poison : static_cast<std::int32_t>(t.pc.pl.shape.num_pages);
    t.pc.tables[static_cast<std::size_t>(t.pc.max_pages() + 1000 / page_tokens - 1)] = bad;
    t.pc.upload();
    INFO("poisoned column holds " << bad);
    const Outputs paged = run_device<PagedView<typename AttentionTwin<C>::P>, Mode, Config>(t.pc.dev_view(), t.pc.dev_base(),
                                                                                          t.lens, s, in, want);
    CHECK(paged.error == static_cast<std::uint32_t>(kAttentionErrorPage));
    CHECK(compare_with_reference(paged, ro, rl, rm, s, C::kHeadDim, max_v, C::kRotatedKeys, {1}) == 0);
    // The host reference refuses the same tables.
    kvq::reference::AttentionArgs ra;
    std::vector<double> o2(ro.size());
    ra.batch = s.batch, ra.q_heads = s.q_heads, ra.num_q = s.num_q, ra.num_chunk = s.num_chunk;
    ra.q = in.q.view(false), ra.k_chunk = in.kc.view(false), ra.v_chunk = in.vc.view(false), ra.scale = 0.1f;
    ra.cache_lengths = t.lens.data(), ra.out = o2.data();
    CHECK(reference::attention(t.pc.host_view(), t.pc.host_base(), ra) == Status::kErrorInvalidArgument);
    compared += paged.o.size();
  }
  return compared;
}

}  // namespace kvq::test::paged
