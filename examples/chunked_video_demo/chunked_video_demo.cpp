// chunked_video_demo: chunk-wise autoregressive generation with a low-bit KV cache.
//
// Each step, the queries of the current chunk attend to [KV cache of all earlier
// chunks ; the current chunk's own keys and values]; then the chunk is appended to
// the cache. The demo compares, per chunk, a bf16 cache with INT2/INT4 caches
// (PerToken and PerChannel keys, and PerToken keys rotated by the randomized Hadamard
// matrix of kvq/math/rotation.hpp, also centered by their first chunk's mean) with and
// without the Taylor2 Jensen correction:
// the softmax mass that the current chunk's queries put on the current chunk, and
// the output error against the bf16 cache.
//
// Keys are synthetic with a few fixed outlier channels, large for every token mostly
// through a per-channel offset, as measured in video DiT keys (synthetic_kv.hpp states
// the model). Ordinary key channels: mean U(-0.5, 0.5), std 1. Outlier channels, per
// head, with a magnitude a drawn per channel:
//   --outliers mild     4 channels, a in [2.5, 3.5], mean ±a, std a/4
//   --outliers strong   4 channels, a in [10, 20],  mean ±a, std a/4   (the default)
//   --outliers extreme  8 channels, a in [30, 60],  mean ±a, std a/4
//   --outliers spread   4 channels, a in [10, 20],  mean 0,  std a     (a pure scale)
// Queries: N(0, 1.5²) per element. Values: N(0, 1). Everything is rounded to bf16.
//
// With CUDA and a GPU present, quantize-and-append and attention run on the GPU
// kernels; otherwise on the CPU reference (float64). --cpu forces the reference. Each
// row's JSON "backend" says which ran it.
//
//   chunked_video_demo [--chunks N] [--chunk-tokens N] [--heads N] [--seed S]
//                      [--outliers mild|strong|extreme|spread] [--json] [--cpu]
//                      [--window W [--sinks S] [--select]]
//
// Paged modes (--window W; INT2 PerToken G128 keys (rotated) and values in a paged cache,
// layout/paged_layout.hpp, one page per chunk): each chunk is quantized into a page of a pool
// and each step's queries attend through a block table listing the pages of chosen earlier
// chunks, with and without Taylor2; the bf16 baseline attends to the same chunks unquantized.
//   rolling (default)  the S first chunks stay as sinks and the W newest others as the window;
//                      the oldest window page is recycled for the next chunk by editing the
//                      table (no copy): a pool of S + W + 1 pages, whatever --chunks says.
//   --select           frame selection: every chunk stays in the pool; each step lists the S
//                      sinks and up to W earlier chunks at odd distances (c-1, c-3, ...), a
//                      non-contiguous set in no particular order.
// Every row then lists the step's attended chunks (JSON "attended").
#include <kvq/kvq.hpp>
#include <kvq/layout/paged_layout.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "synthetic_kv.hpp"

#if KVQ_DEMO_WITH_CUDA
#include "gpu_backend.cuh"
#endif

namespace {

constexpr int kHeadDim = 128;
constexpr float kQueryStd = 1.5f;

struct Options {
  int chunks = 4;
  int chunk_tokens = 512;
  int heads = 2;
  unsigned seed = 1;
  kvq_demo::Outliers outliers = kvq_demo::Outliers::kStrong;
  bool json = false;
  bool force_cpu = false;
  int window = 0;  ///< > 0: paged mode, the W newest chunks (or W selected ones)
  int sinks = 0;
  bool select = false;
};

bool parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&](int* v) {
      if (i + 1 >= argc) return false;
      *v = std::atoi(argv[++i]);
      return *v > 0;
    };
    if (a == "--json") o->json = true;
    else if (a == "--cpu") o->force_cpu = true;
    else if (a == "--chunks") { if (!next(&o->chunks)) return false; }
    else if (a == "--chunk-tokens") { if (!next(&o->chunk_tokens)) return false; }
    else if (a == "--heads") { if (!next(&o->heads)) return false; }
    else if (a == "--window") { if (!next(&o->window)) return false; }
    else if (a == "--sinks") { if (i + 1 >= argc) return false; o->sinks = std::atoi(argv[++i]); if (o->sinks < 0) return false; }
    else if (a == "--select") o->select = true;
    else if (a == "--seed") { int s; if (!next(&s)) return false; o->seed = static_cast<unsigned>(s); }
    else if (a == "--outliers") { if (i + 1 >= argc || !kvq_demo::parse_outliers(argv[++i], &o->outliers)) return false; }
    else return false;
  }
  return true;
}

/// The whole synthetic sequence, bf16 bits, [tokens, heads, D] for K, V and Q.
struct Sequence {
  int tokens, heads;
  std::vector<std::uint16_t> k, v, q;

  /// A gathered sequence (paged modes' baselines).
  Sequence(int tokens_, int heads_, std::vector<std::uint16_t> k_, std::vector<std::uint16_t> v_, std::vector<std::uint16_t> q_)
      : tokens(tokens_), heads(heads_), k(std::move(k_)), v(std::move(v_)), q(std::move(q_)) {}
  Sequence(const Options& o) : tokens(o.chunks * o.chunk_tokens), heads(o.heads) {
    const kvq_demo::SyntheticKV x(tokens, heads, kHeadDim, o.outliers, kQueryStd, o.seed);
    auto bf16 = [](const std::vector<float>& f) {
      std::vector<std::uint16_t> b(f.size());
      for (std::size_t i = 0; i < f.size(); ++i) b[i] = kvq::math::float_to_bf16_bits_rn(f[i]);
      return b;
    };
    k = bf16(x.k), v = bf16(x.v), q = bf16(x.q);
  }
  kvq::Tensor4 view(std::vector<std::uint16_t>& x, int first_token) const {
    return {x.data() + static_cast<std::size_t>(first_token) * heads * kHeadDim, kvq::DType::kBFloat16,
            static_cast<std::int64_t>(tokens) * heads * kHeadDim, static_cast<std::int64_t>(heads) * kHeadDim, kHeadDim};
  }
};

/// What one attention step of one configuration produced.
struct StepResult {
  double mass_current = 0.0;     ///< mean over heads and rows of the mass on the current chunk
  std::vector<double> out;       ///< [rows, heads, D]
  std::vector<double> lse;       ///< [heads, rows]
};

using PerTokenInt2 = kvq::layout::CacheLayout<kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>,
                                              kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>, kHeadDim>;
using PerChannelInt2 = kvq::layout::CacheLayout<kvq::QuantSpec<2, 32, kvq::Granularity::kPerChannel>,
                                                kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>, kHeadDim>;
using PerTokenInt4 = kvq::layout::CacheLayout<kvq::QuantSpec<4, 128, kvq::Granularity::kPerToken>,
                                              kvq::QuantSpec<4, 128, kvq::Granularity::kPerToken>, kHeadDim>;
using PerChannelInt4 = kvq::layout::CacheLayout<kvq::QuantSpec<4, 32, kvq::Granularity::kPerChannel>,
                                                kvq::QuantSpec<4, 128, kvq::Granularity::kPerToken>, kHeadDim>;
// Rotated keys.
using PerTokenInt2Rotated = kvq::layout::CacheLayout<kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>,
                                                     kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>, kHeadDim,
                                                     kvq::Rotation::kHadamard>;
using PerTokenInt4Rotated = kvq::layout::CacheLayout<kvq::QuantSpec<4, 128, kvq::Granularity::kPerToken>,
                                                     kvq::QuantSpec<4, 128, kvq::Granularity::kPerToken>, kHeadDim,
                                                     kvq::Rotation::kHadamard>;
// Rotated keys centered by their first chunk's mean.
using PerTokenInt2Centered = kvq::layout::CacheLayout<kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>,
                                                      kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>, kHeadDim,
                                                      kvq::Rotation::kHadamardCentered>;
using PerTokenInt4Centered = kvq::layout::CacheLayout<kvq::QuantSpec<4, 128, kvq::Granularity::kPerToken>,
                                                      kvq::QuantSpec<4, 128, kvq::Granularity::kPerToken>, kHeadDim,
                                                      kvq::Rotation::kHadamardCentered>;

/// Attention of chunk `c`'s queries on the CPU reference, with `cache` (or none) before the chunk.
template <class Layout>
StepResult cpu_attend(const Options& o, Sequence& s, const Layout& l, const void* cache, const std::int32_t* lengths,
                      int chunk_first, int chunk_tokens, int q_first, kvq::Correction mode) {
  kvq::reference::AttentionArgs a;
  a.batch = 1;
  a.q_heads = o.heads;
  a.num_q = o.chunk_tokens;
  a.num_chunk = chunk_tokens;
  a.q = s.view(s.q, q_first);
  a.k_chunk = s.view(s.k, chunk_first);
  a.v_chunk = s.view(s.v, chunk_first);
  a.cache_lengths = lengths;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  a.correction = mode;
  StepResult r;
  r.out.resize(static_cast<std::size_t>(o.chunk_tokens) * o.heads * kHeadDim);
  std::vector<double> mass(static_cast<std::size_t>(o.heads) * o.chunk_tokens * kvq::reference::kNumSegments);
  r.lse.resize(static_cast<std::size_t>(o.heads) * o.chunk_tokens);
  a.out = r.out.data();
  a.lse = r.lse.data();
  a.mass = mass.data();
  if (kvq::reference::attention(l, cache, a) != kvq::Status::kSuccess) {
    std::fprintf(stderr, "reference attention failed\n");
    std::exit(1);
  }
  for (std::size_t i = 0; i < mass.size(); i += kvq::reference::kNumSegments) r.mass_current += mass[i + kvq::reference::kSegmentChunk];
  r.mass_current /= static_cast<double>(o.heads) * o.chunk_tokens;
  return r;
}

/// Mean over rows of exp(lse_part − lse_all): the softmax mass on the keys of `part`.
double mean_mass_from_lse(const std::vector<double>& lse_part, const std::vector<double>& lse_all) {
  double m = 0.0;
  for (std::size_t i = 0; i < lse_all.size(); ++i) m += std::exp(lse_part[i] - lse_all[i]);
  return m / static_cast<double>(lse_all.size());
}

double rel_err(const std::vector<double>& x, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - ref[i]) * (x[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

#if KVQ_DEMO_WITH_CUDA
using DeviceSequencePtr = kvq_demo::DeviceSequence*;
#else
using DeviceSequencePtr = void*;
#endif

struct Row {
  int chunk;
  int bits;
  const char* key_granularity;
  kvq::Rotation rotation;
  kvq::Correction correction;
  double mass_current, mass_current_ref, output_rel_err;
  long long cache_bytes;
  double bytes_per_token;  ///< K and V of one token of one head, metadata included
  const char* backend;     ///< "gpu" or "cpu_reference"
};

/// Runs every chunk for one quantized layout: quantize-and-append, attention with and
/// without the correction. `baseline[c]` is the bf16-cache result of chunk c.
template <class Layout>
void run_layout(const Options& o, Sequence& s, bool gpu, DeviceSequencePtr dseq, const std::vector<StepResult>& baseline,
                std::vector<Row>* rows) {
  Layout l;
  const int total = o.chunks * o.chunk_tokens;
  const int capacity = (total + Layout::kKeyTokensPerGroup - 1) / Layout::kKeyTokensPerGroup * Layout::kKeyTokensPerGroup;
  if (Layout::make({1, o.heads, capacity, kvq::DType::kBFloat16}, &l) != kvq::Status::kSuccess) std::exit(1);
  const int bits = Layout::KSpec::kBits;
  const char* gran = kvq::to_string(Layout::KSpec::kGranularity);
  const kvq::Rotation rot = Layout::kKeyRotation;
  const double bpt = Layout::kBytesPerToken;
  const kvq::Correction modes[] = {kvq::Correction::kNone, kvq::Correction::kTaylor2};
#if KVQ_DEMO_WITH_CUDA
  if (gpu) {
    kvq_demo::GpuCache<Layout> cache(l, *dseq);
    for (int c = 0; c < o.chunks; ++c) {
      if (c > 0)
        for (kvq::Correction m : modes) {
          StepResult r;
          cache.attend(c * o.chunk_tokens, o.chunk_tokens, m, &r.mass_current, &r.out);
          rows->push_back({c, bits, gran, rot, m, r.mass_current, baseline[c].mass_current, rel_err(r.out, baseline[c].out),
                           static_cast<long long>(l.bytes()), bpt, "gpu"});
        }
      cache.append(c * o.chunk_tokens, o.chunk_tokens);
    }
    return;
  }
#else
  (void)gpu, (void)dseq;
#endif
  std::vector<unsigned char> cache(l.bytes());
  std::int32_t length = 0;
  for (int c = 0; c < o.chunks; ++c) {
    if (c > 0)
      for (kvq::Correction m : modes) {
        const StepResult r = cpu_attend(o, s, l, cache.data(), &length, c * o.chunk_tokens, o.chunk_tokens, c * o.chunk_tokens, m);
        rows->push_back({c, bits, gran, rot, m, r.mass_current, baseline[c].mass_current, rel_err(r.out, baseline[c].out),
                         static_cast<long long>(l.bytes()), bpt, "cpu_reference"});
      }
    if (kvq::reference::quantize_append(l, cache.data(), &length, s.view(s.k, c * o.chunk_tokens),
                                        s.view(s.v, c * o.chunk_tokens), o.chunk_tokens) != kvq::Status::kSuccess)
      std::exit(1);
  }
}

// ---- paged modes --------------------------------------------------------------------------

// Rotated keys (R·k): no per-entry state, so pages quantized by different appends mix freely
// (centered layouts keep one key mean μ per entry, set by its first append: not for pages
// appended as entries of their own).
using PagedInt2 = kvq::layout::PagedCacheLayout<PerTokenInt2::KSpec, PerTokenInt2::VSpec, kHeadDim, kvq::Rotation::kHadamard>;

/// The chunks step c attends to (besides itself), oldest first, given the chunks resident in
/// the pool.
std::vector<int> attended_chunks(const Options& o, int c, const std::vector<int>& resident) {
  if (!o.select) return resident;  // rolling: sinks and window, all resident
  std::vector<int> a;
  for (int x = 0; x < std::min(o.sinks, c); ++x) a.push_back(x);
  std::vector<int> picked;
  for (int x = c - 1; x >= o.sinks && static_cast<int>(picked.size()) < o.window; x -= 2) picked.push_back(x);
  a.insert(a.end(), picked.rbegin(), picked.rend());
  return a;
}

/// bf16 baseline of step c over the given chunks and the current one: the chunks gathered into
/// one sequence [attended ; current], the current chunk's queries attending to all of it.
StepResult gathered_baseline(const Options& o, Sequence& s, const std::vector<int>& chunks, int c, bool gpu) {
  const std::size_t per = static_cast<std::size_t>(o.chunk_tokens) * o.heads * kHeadDim;
  std::vector<std::uint16_t> k, v, q;
  std::vector<int> all = chunks;
  all.push_back(c);
  for (int x : all) {
    const std::size_t from = static_cast<std::size_t>(x) * per;
    k.insert(k.end(), s.k.begin() + static_cast<std::ptrdiff_t>(from), s.k.begin() + static_cast<std::ptrdiff_t>(from + per));
    v.insert(v.end(), s.v.begin() + static_cast<std::ptrdiff_t>(from), s.v.begin() + static_cast<std::ptrdiff_t>(from + per));
    q.insert(q.end(), s.q.begin() + static_cast<std::ptrdiff_t>(from), s.q.begin() + static_cast<std::ptrdiff_t>(from + per));
  }
  const int n = static_cast<int>(all.size()) * o.chunk_tokens, first = n - o.chunk_tokens;
  Sequence g(n, o.heads, std::move(k), std::move(v), std::move(q));
  StepResult r;
#if KVQ_DEMO_WITH_CUDA
  if (gpu) {
    kvq_demo::DeviceSequence dg(g.k, g.v, g.q, g.tokens, o.heads, kHeadDim);
    kvq_demo::dense_attend(dg, first, o.chunk_tokens, &r.out, &r.mass_current);
    return r;
  }
#else
  (void)gpu;
#endif
  PerTokenInt2 unused;
  (void)PerTokenInt2::make({1, o.heads, 0, kvq::DType::kBFloat16}, &unused);
  r = cpu_attend(o, g, unused, nullptr, nullptr, 0, n, first, kvq::Correction::kNone);
  const StepResult own = cpu_attend(o, g, unused, nullptr, nullptr, first, o.chunk_tokens, first, kvq::Correction::kNone);
  r.mass_current = mean_mass_from_lse(own.lse, r.lse);
  return r;
}

/// Rows of a paged mode, with the chunks each step attended to.
struct PagedRow {
  Row row;
  std::vector<int> attended;
};

/// Runs the paged mode: per chunk, attention through a table of the attended chunks' pages
/// (None and Taylor2) against the bf16 baseline over the same chunks, then the chunk quantized
/// into a free page; rolling mode recycles the oldest window page once the window is full.
std::vector<PagedRow> run_paged(const Options& o, Sequence& s, bool gpu, DeviceSequencePtr dseq, long long* pool_bytes) {
  const int pool_pages = o.select ? o.chunks : o.sinks + o.window + 1;
  const int max_pages = o.select ? o.sinks + o.window : o.sinks + o.window;
  PagedInt2 pl;
  if (PagedInt2::make({1, o.heads, o.chunk_tokens, pool_pages, std::max(max_pages, 1), kvq::DType::kBFloat16}, &pl) !=
      kvq::Status::kSuccess) {
    std::fprintf(stderr, "paged layout refused (chunk tokens %d)\n", o.chunk_tokens);
    std::exit(2);
  }
  *pool_bytes = pl.bytes();
  using View = kvq::layout::PagedView<PagedInt2>;
  std::vector<unsigned char> pool;
  if (!gpu) pool.assign(static_cast<std::size_t>(pl.bytes()), 0);
#if KVQ_DEMO_WITH_CUDA
  std::unique_ptr<kvq_demo::GpuPagedCache<PagedInt2>> dev;
  if (gpu) dev = std::make_unique<kvq_demo::GpuPagedCache<PagedInt2>>(pl, *dseq);
#else
  (void)dseq;
#endif
  std::vector<std::int32_t> free_pages;
  for (int p = pool_pages - 1; p >= 0; --p) free_pages.push_back(p);
  std::vector<std::int32_t> page_of(static_cast<std::size_t>(o.chunks), -1);
  std::vector<int> resident;  // chunks in the pool, oldest first
  std::vector<PagedRow> rows;
  const kvq::Correction modes[] = {kvq::Correction::kNone, kvq::Correction::kTaylor2};
  for (int c = 0; c < o.chunks; ++c) {
    const std::vector<int> att = attended_chunks(o, c, resident);
    if (!att.empty()) {
      std::vector<std::int32_t> table;
      for (int x : att) table.push_back(page_of[static_cast<std::size_t>(x)]);
      const StepResult base = gathered_baseline(o, s, att, c, gpu);
      for (kvq::Correction m : modes) {
        StepResult r;
#if KVQ_DEMO_WITH_CUDA
        if (gpu) dev->attend(table, c * o.chunk_tokens, o.chunk_tokens, m, &r.mass_current, &r.out);
#endif
        if (!gpu) {
          table.resize(static_cast<std::size_t>(pl.shape.max_pages_per_entry), 0);
          const std::int32_t len = static_cast<std::int32_t>(att.size()) * o.chunk_tokens;
          r = cpu_attend(o, s, View::bind(pl, table.data(), pl.shape.max_pages_per_entry), pool.data(), &len, c * o.chunk_tokens,
                         o.chunk_tokens, c * o.chunk_tokens, m);
        }
        rows.push_back({{c, 2, "per_token", PagedInt2::kKeyRotation, m, r.mass_current, base.mass_current, rel_err(r.out, base.out),
                         static_cast<long long>(pl.bytes()), PagedInt2::kBytesPerToken, gpu ? "gpu" : "cpu_reference"},
                        att});
      }
    }
    // The chunk into a free page: a one-column table, an entry of length 0.
    const std::int32_t page = free_pages.back();
    free_pages.pop_back();
    page_of[static_cast<std::size_t>(c)] = page;
#if KVQ_DEMO_WITH_CUDA
    if (gpu) dev->append(c * o.chunk_tokens, o.chunk_tokens, page);
#endif
    if (!gpu) {
      std::vector<std::int32_t> one(static_cast<std::size_t>(pl.shape.max_pages_per_entry), page);
      std::int32_t len = 0;
      if (kvq::reference::quantize_append(View::bind(pl, one.data(), pl.shape.max_pages_per_entry), pool.data(), &len,
                                          s.view(s.k, c * o.chunk_tokens), s.view(s.v, c * o.chunk_tokens),
                                          o.chunk_tokens) != kvq::Status::kSuccess)
        std::exit(1);
    }
    resident.push_back(c);
    // Rolling: beyond S sinks and W window chunks, the oldest window chunk's page is recycled.
    if (!o.select && static_cast<int>(resident.size()) > o.sinks + o.window) {
      const auto oldest = resident.begin() + o.sinks;
      free_pages.push_back(page_of[static_cast<std::size_t>(*oldest)]);
      page_of[static_cast<std::size_t>(*oldest)] = -1;
      resident.erase(oldest);
    }
  }
  return rows;
}

void print_paged(const Options& o, const std::vector<PagedRow>& rows, long long pool_bytes, bool gpu) {
  const char* mode = o.select ? "select" : "rolling";
  if (o.json) {
    std::printf("{\"backend\": \"%s\", \"mode\": \"%s\", \"window\": %d, \"sinks\": %d, \"head_dim\": %d, \"heads\": %d, "
                "\"chunks\": %d, \"chunk_tokens\": %d, \"pool_bytes\": %lld, \"rows\": [\n",
                gpu ? "gpu" : "cpu", mode, o.window, o.sinks, kHeadDim, o.heads, o.chunks, o.chunk_tokens, pool_bytes);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i].row;
      std::printf("  {\"chunk\": %d, \"bits\": %d, \"key_granularity\": \"%s\", \"rotation\": \"%s\", \"correction\": \"%s\", "
                  "\"mass_current\": %.8f, \"mass_current_ref\": %.8f, \"output_rel_err\": %.8f, \"cache_bytes\": %lld, "
                  "\"bytes_per_token\": %.2f, \"backend\": \"%s\", \"attended\": [",
                  r.chunk, r.bits, r.key_granularity, kvq::to_string(r.rotation), kvq::to_string(r.correction), r.mass_current,
                  r.mass_current_ref, r.output_rel_err, r.cache_bytes, r.bytes_per_token, r.backend);
      for (std::size_t j = 0; j < rows[i].attended.size(); ++j) std::printf("%s%d", j ? ", " : "", rows[i].attended[j]);
      std::printf("]}%s\n", i + 1 < rows.size() ? "," : "");
    }
    std::printf("]}\n");
    return;
  }
  std::printf("kvq chunked video demo, paged %s mode (%s): D=%d, %d heads, %d chunks of %d tokens (one page each), "
              "%d sink%s, window %d; pool %lld bytes\n",
              mode, gpu ? "GPU kernels" : "CPU reference", kHeadDim, o.heads, o.chunks, o.chunk_tokens, o.sinks,
              o.sinks == 1 ? "" : "s", o.window, pool_bytes);
  std::printf("INT2 PerToken G128 keys rotated by the randomized Hadamard matrix, values INT2 PerToken G128\n");
  std::printf("%-5s %-6s %-9s %14s %14s %12s %12s  %s\n", "chunk", "cache", "corr", "mass_current", "mass_bf16", "out_rel_err",
              "cache_bytes", "attended chunks");
  for (const PagedRow& pr : rows) {
    const Row& r = pr.row;
    std::string att;
    for (std::size_t j = 0; j < pr.attended.size(); ++j) att += (j ? "," : "") + std::to_string(pr.attended[j]);
    std::printf("%-5d %-6s %-9s %14.6f %14.6f %12.5f %12lld  %s\n", r.chunk, "int2", kvq::to_string(r.correction), r.mass_current,
                r.mass_current_ref, r.output_rel_err, r.cache_bytes, att.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, &o)) {
    std::fprintf(stderr,
                 "usage: %s [--chunks N] [--chunk-tokens N] [--heads N] [--seed S] [--outliers mild|strong|extreme|spread] "
                 "[--json] [--cpu] [--window W [--sinks S] [--select]]\n",
                 argv[0]);
    return 2;
  }
  Sequence s(o);
  bool gpu = false;
  DeviceSequencePtr dseq = nullptr;
#if KVQ_DEMO_WITH_CUDA
  gpu = !o.force_cpu && kvq_demo::gpu_available();
  std::unique_ptr<kvq_demo::DeviceSequence> device_sequence;
  if (gpu) {
    device_sequence = std::make_unique<kvq_demo::DeviceSequence>(s.k, s.v, s.q, s.tokens, o.heads, kHeadDim);
    dseq = device_sequence.get();
  }
#endif

  if (o.window > 0) {
    long long pool_bytes = 0;
    const std::vector<PagedRow> rows = run_paged(o, s, gpu, dseq, &pool_bytes);
    print_paged(o, rows, pool_bytes, gpu);
    return 0;
  }

  // The bf16 cache: every earlier token, unquantized, attended as part of one segment.
  std::vector<StepResult> baseline(o.chunks);
  for (int c = 1; c < o.chunks; ++c) {
#if KVQ_DEMO_WITH_CUDA
    if (gpu) {
      kvq_demo::dense_attend(*dseq, c * o.chunk_tokens, o.chunk_tokens, &baseline[c].out, &baseline[c].mass_current);
      continue;
    }
#endif
    PerTokenInt2 unused;
    (void)PerTokenInt2::make({1, o.heads, 0, kvq::DType::kBFloat16}, &unused);
    baseline[c] = cpu_attend(o, s, unused, nullptr, nullptr, 0, (c + 1) * o.chunk_tokens, c * o.chunk_tokens, kvq::Correction::kNone);
    // Mass on the current chunk = exp(LSE over the chunk alone − LSE over everything).
    const StepResult own = cpu_attend(o, s, unused, nullptr, nullptr, c * o.chunk_tokens, o.chunk_tokens, c * o.chunk_tokens,
                                      kvq::Correction::kNone);
    baseline[c].mass_current = mean_mass_from_lse(own.lse, baseline[c].lse);
  }
  const long long bf16_bytes = 2LL * 2 * kHeadDim * o.heads * o.chunks * o.chunk_tokens;
  const char* main_backend = gpu ? "gpu" : "cpu_reference";

  std::vector<Row> rows;
  for (int c = 1; c < o.chunks; ++c)
    rows.push_back({c, 16, "none", kvq::Rotation::kNone, kvq::Correction::kNone, baseline[c].mass_current,
                    baseline[c].mass_current, 0.0, bf16_bytes, 2.0 * 2 * kHeadDim, main_backend});
  run_layout<PerTokenInt2>(o, s, gpu, dseq, baseline, &rows);
  run_layout<PerTokenInt2Rotated>(o, s, gpu, dseq, baseline, &rows);
  run_layout<PerTokenInt2Centered>(o, s, gpu, dseq, baseline, &rows);
  run_layout<PerChannelInt2>(o, s, gpu, dseq, baseline, &rows);
  run_layout<PerTokenInt4>(o, s, gpu, dseq, baseline, &rows);
  run_layout<PerTokenInt4Rotated>(o, s, gpu, dseq, baseline, &rows);
  run_layout<PerTokenInt4Centered>(o, s, gpu, dseq, baseline, &rows);
  run_layout<PerChannelInt4>(o, s, gpu, dseq, baseline, &rows);

  // Per configuration: the mean current-chunk mass bias (quantized − bf16) without and with
  // Taylor2, the share of the drop that Taylor2 removes, and the mean output error.
  struct Summary {
    int bits;
    const char* gran;
    kvq::Rotation rotation;
    double bytes_per_token;
    const char* backend;
    double bias_none, bias_t2, removed, err_none, err_t2;
  };
  std::vector<Summary> summary;
  for (const Row& first : rows) {
    if (first.bits == 16 || first.correction != kvq::Correction::kNone) continue;
    bool seen = false;
    for (const Summary& x : summary)
      seen = seen || (x.bits == first.bits && std::strcmp(x.gran, first.key_granularity) == 0 && x.rotation == first.rotation);
    if (seen) continue;
    Summary x{first.bits, first.key_granularity, first.rotation, first.bytes_per_token, first.backend, 0, 0, 0, 0, 0};
    double drop_none = 0.0, drop_t2 = 0.0;
    int n = 0;
    for (const Row& r : rows)
      if (r.bits == x.bits && std::strcmp(r.key_granularity, x.gran) == 0 && r.rotation == x.rotation) {
        const bool none = r.correction == kvq::Correction::kNone;
        (none ? drop_none : drop_t2) += r.mass_current_ref - r.mass_current;
        (none ? x.err_none : x.err_t2) += r.output_rel_err;
        n += none ? 1 : 0;
      }
    x.bias_none = -drop_none / n;
    x.bias_t2 = -drop_t2 / n;
    x.err_none /= n;
    x.err_t2 /= n;
    x.removed = drop_none != 0.0 ? 1.0 - std::fabs(drop_t2) / std::fabs(drop_none) : 1.0;
    summary.push_back(x);
  }
  const char* outliers = kvq_demo::outlier_profile(o.outliers).name;

  if (o.json) {
    std::printf("{\"backend\": \"%s\", \"head_dim\": %d, \"heads\": %d, \"chunks\": %d, \"chunk_tokens\": %d, "
                "\"outliers\": \"%s\", \"query_std\": %.2f, \"rows\": [\n",
                gpu ? "gpu" : "cpu", kHeadDim, o.heads, o.chunks, o.chunk_tokens, outliers, kQueryStd);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf("  {\"chunk\": %d, \"bits\": %d, \"key_granularity\": \"%s\", \"rotation\": \"%s\", \"correction\": \"%s\", "
                  "\"mass_current\": %.8f, \"mass_current_ref\": %.8f, \"output_rel_err\": %.8f, \"cache_bytes\": %lld, "
                  "\"bytes_per_token\": %.2f, \"backend\": \"%s\"}%s\n",
                  r.chunk, r.bits, r.key_granularity, kvq::to_string(r.rotation), kvq::to_string(r.correction), r.mass_current,
                  r.mass_current_ref, r.output_rel_err, r.cache_bytes, r.bytes_per_token, r.backend,
                  i + 1 < rows.size() ? "," : "");
    }
    std::printf("], \"taylor2_drop_removed\": [");
    for (std::size_t i = 0; i < summary.size(); ++i) {
      const Summary& x = summary[i];
      std::printf("%s{\"bits\": %d, \"key_granularity\": \"%s\", \"rotation\": \"%s\", \"fraction\": %.6f, "
                  "\"mass_bias_none\": %.8f, \"mass_bias_taylor2\": %.8f, \"output_rel_err_none\": %.6f, "
                  "\"output_rel_err_taylor2\": %.6f, \"bytes_per_token\": %.2f, \"backend\": \"%s\"}",
                  i ? ", " : "", x.bits, x.gran, kvq::to_string(x.rotation), x.removed, x.bias_none, x.bias_t2, x.err_none,
                  x.err_t2, x.bytes_per_token, x.backend);
    }
    std::printf("]}\n");
    return 0;
  }

  std::printf("kvq chunked video demo (%s): D=%d, %d heads, %d chunks of %d tokens, %s key outliers, query std %.1f\n",
              gpu ? "GPU kernels" : "CPU reference", kHeadDim, o.heads, o.chunks,
              o.chunk_tokens, outliers, kQueryStd);
  std::printf("%-5s %-6s %-12s %-17s %-9s %14s %14s %12s %12s\n", "chunk", "cache", "keys", "rotation", "corr", "mass_current",
              "mass_bf16", "out_rel_err", "cache_bytes");
  for (const Row& r : rows) {
    char cache_name[16];
    std::snprintf(cache_name, sizeof cache_name, r.bits == 16 ? "bf16" : "int%d", r.bits);
    std::printf("%-5d %-6s %-12s %-17s %-9s %14.6f %14.6f %12.5f %12lld%s\n", r.chunk, cache_name, r.key_granularity,
                kvq::to_string(r.rotation), kvq::to_string(r.correction), r.mass_current, r.mass_current_ref, r.output_rel_err,
                r.cache_bytes, gpu && std::strcmp(r.backend, "gpu") != 0 ? "  (CPU reference)" : "");
  }
  std::printf("\nPer configuration, means over chunks 1..%d: the current chunk's mass bias (quantized - bf16)\n"
              "without and with Taylor2, the share of it Taylor2 removes, and the output error vs the bf16 cache.\n",
              o.chunks - 1);
  std::printf("%-6s %-12s %-17s %8s %10s %13s %8s %9s %12s\n", "cache", "keys", "rotation", "B/token", "bias none",
              "bias taylor2", "removed", "err none", "err taylor2");
  for (const Summary& x : summary)
    std::printf("int%-3d %-12s %-17s %8.1f %10.4f %13.4f %7.1f%% %9.3f %12.3f%s\n", x.bits, x.gran, kvq::to_string(x.rotation),
                x.bytes_per_token, x.bias_none, x.bias_t2, 100.0 * x.removed, x.err_none, x.err_t2,
                gpu && std::strcmp(x.backend, "gpu") != 0 ? "  (CPU reference)" : "");
  std::printf("(bf16: %.0f bytes per token of one head. Full sweep: docs/fidelity.md.)\n", 2.0 * 2 * kHeadDim);
  return 0;
}
