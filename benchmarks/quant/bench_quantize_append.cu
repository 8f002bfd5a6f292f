// Quantize-and-append throughput against a device-to-device copy of the same number of
// bytes, measured in the same binary (DESIGN.md section 6: target >= 70% of the copy).
//
// Bytes of one append: the bf16 K and V chunk read, the codes and metadata written.
// Timing: CUDA events around kReps back-to-back appends (each at its own cache position),
// queued behind a short spin kernel so that host launch latency stays out of the window.
//
//   BM_quantize_append/<variant>/n:<tokens>/h:<kv heads>   the public entry point (quantize
//                                                          kernel + lengths update)
//   BM_quantize_append_kernel/<variant>/...                the quantize kernel alone
//   <variant> with `regs80`: the kernel built for 6 blocks of 128 threads per SM (80
//   registers) instead of the default 8 (64 registers)
//   <variant> ending in `_rot`: the same layout with rotated keys (R·k cached, rotated on the
//   device before quantization; 80 registers); compare with the unrotated <variant> of the
//   same run (target: rotation costs <= 5% of the bandwidth)
//   <variant> ending in `_rotcen`: centered rotated keys (R·(k − μ)), appends into non-empty
//   entries (the steady state: key_mean_kernel only reads the lengths); compare with `_rot`.
//   `_rotcen_first`: every append is the first into an empty entry (μ computed from its
//   keys first; the bytes counted are still those of the quantize kernel)
//   paged_append_pair/<variant>/<contiguous|paged64|paged128>/n:<tokens>/h:<kv heads>: the
//   public entry point into the contiguous cache and into a paged cache (layout::PagedView) of
//   64- or 128-token pages listed in a random order; --benchmark_filter=paged_append_pair/
//   BM_copy/bytes:<read + written>                         cudaMemcpyAsync D2D of half that
// Counters: GB/s (read + written), copy_GB/s (the copy of the same bytes, same binary),
// ratio_to_copy, us_per_append, blocks_per_sm (occupancy of the quantize kernel). The
// benchmark's own time is that of an iteration of kReps appends.
#include <benchmark/benchmark.h>

#include <kvq/api/quantize_append.cuh>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <cstdio>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "support/cuda_check.cuh"

namespace {

using kvq::DType;
using kvq::Granularity;
using kvq::ScaleType;
using kvq::Status;
using kvq::layout::CacheLayout;
using kvq::test::DeviceBuffer;

template <int B, int G, Granularity Gr, ScaleType S = ScaleType::kFloat16>
using QS = kvq::QuantSpec<B, G, Gr, S>;
constexpr Granularity kPT = Granularity::kPerToken;
constexpr Granularity kPC = Granularity::kPerChannel;

using Int2Pt128 = CacheLayout<QS<2, 128, kPT>, QS<2, 128, kPT>, 128>;
using Int2Pc32 = CacheLayout<QS<2, 32, kPC>, QS<2, 128, kPT>, 128>;
using Int4Pt128 = CacheLayout<QS<4, 128, kPT>, QS<4, 128, kPT>, 128>;
using Int8Pt128 = CacheLayout<QS<8, 128, kPT>, QS<8, 128, kPT>, 128>;
constexpr kvq::Rotation kRot = kvq::Rotation::kHadamard;
using Int2Pt128Rot = CacheLayout<QS<2, 128, kPT>, QS<2, 128, kPT>, 128, kRot>;
using Int2Pc32Rot = CacheLayout<QS<2, 32, kPC>, QS<2, 128, kPT>, 128, kRot>;
using Int4Pt128Rot = CacheLayout<QS<4, 128, kPT>, QS<4, 128, kPT>, 128, kRot>;
using Int2Pt128RotCen = CacheLayout<QS<2, 128, kPT>, QS<2, 128, kPT>, 128, kvq::Rotation::kHadamardCentered>;

/// Where the appends of an iteration start.
enum class Start {
  kPacked,    ///< rep r at length r·n (rep 0 into an empty entry)
  kNonEmpty,  ///< rep r at length 128 + r·n (no append into an empty entry)
  kEmpty,     ///< every rep at length 0 (each the first append into its entry)
};

constexpr int kReps = 8;

__global__ void spin(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

/// Deterministic pseudo-normal bf16/fp16 values (sum of uniforms), varied scale per row.
__global__ void fill_inputs(std::uint16_t* x, std::int64_t n, int row, bool bf16, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    float s = 0.0f;
    for (int k = 0; k < 4; ++k) {
      h ^= h >> 15;
      h *= 2246822519u;
      h ^= h >> 13;
      s += static_cast<float>(h & 0xffffu) * (1.0f / 65536.0f);
    }
    const std::uint32_t r = static_cast<std::uint32_t>(i / row) * 2654435761u;
    const float scale = 0.25f + static_cast<float>(r >> 28);
    const float v = (s - 2.0f) * scale;
    x[i] = bf16 ? kvq::math::float_to_bf16_bits_rn(v) : kvq::math::float_to_half_bits_rn(v);
  }
}

struct Timer {
  cudaEvent_t start{}, stop{};
  Timer() {
    KVQ_TEST_CUDA(cudaEventCreate(&start));
    KVQ_TEST_CUDA(cudaEventCreate(&stop));
  }
  ~Timer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  /// Seconds of the work that `enqueue` puts in the stream, behind a spin kernel.
  template <class F>
  double time(cudaStream_t s, F&& enqueue) {
    spin<<<1, 1, 0, s>>>(200000);
    KVQ_TEST_CUDA(cudaEventRecord(start, s));
    enqueue();
    KVQ_TEST_CUDA(cudaEventRecord(stop, s));
    KVQ_TEST_CUDA(cudaEventSynchronize(stop));
    float ms = 0.0f;
    KVQ_TEST_CUDA(cudaEventElapsedTime(&ms, start, stop));
    return ms * 1e-3;
  }
};

/// Bandwidth (read + written, GB/s) of cudaMemcpyAsync D2D moving `bytes` in total: the
/// median of 21 timings of kReps copies; cached per size.
double copy_gbps(std::int64_t bytes) {
  static std::map<std::int64_t, double> cache;
  auto it = cache.find(bytes);
  if (it != cache.end()) return it->second;
  const std::int64_t half = bytes / 2;
  DeviceBuffer<unsigned char> src(static_cast<std::size_t>(half) * kReps), dst(static_cast<std::size_t>(half) * kReps);
  KVQ_TEST_CUDA(cudaMemset(src.get(), 1, src.size()));
  Timer t;
  std::vector<double> v;
  for (int i = 0; i < 24; ++i) {
    const double s = t.time(0, [&] {
      for (int r = 0; r < kReps; ++r)
        KVQ_TEST_CUDA(cudaMemcpyAsync(dst.get() + r * half, src.get() + r * half, half, cudaMemcpyDeviceToDevice, 0));
    });
    if (i >= 3) v.push_back(s);
  }
  std::sort(v.begin(), v.end());
  const double gbps = static_cast<double>(2 * half) * kReps / v[v.size() / 2] / 1e9;
  cache[bytes] = gbps;
  return gbps;
}

/// Bytes read (bf16/fp16 K and V) and written (codes and metadata) by one append.
template <class L>
std::pair<std::int64_t, std::int64_t> append_bytes(std::int64_t n, int heads) {
  using KS = typename L::KSpec;
  using VS = typename L::VSpec;
  const std::int64_t th = n * heads;
  const std::int64_t read = 2 * th * L::kHeadDim * 2;
  std::int64_t written = th * (L::kKeyWordsPerToken + L::kValueWordsPerToken) * 4;
  written += th * L::kValueGroupsPerToken * static_cast<std::int64_t>(sizeof(typename L::VMeta));
  if constexpr (KS::kPerToken) written += th * L::kKeyGroupsPerTokenGroup * static_cast<std::int64_t>(sizeof(typename L::KMeta));
  else written += (n / KS::kGroupSize) * heads * L::kHeadDim * static_cast<std::int64_t>(sizeof(typename L::KMeta));
  (void)sizeof(VS);
  return {read, written};
}

/// Times kReps appends per iteration through a plan of layout (or paged view) L; false: skipped.
template <class L, int kMinBlocks>
bool time_appends(benchmark::State& state, const L& l, const std::vector<kvq::AppendArguments>& args,
                  kvq::detail::append::LaunchOptions opt, DeviceBuffer<std::int32_t>& lengths, const std::vector<std::int32_t>& start,
                  double* total_seconds, int* blocks_per_sm);

/// page_tokens == 0: the contiguous cache of L; else a paged cache of L's variant with pages of
/// that many tokens in a random order.
template <class L, int kMinBlocks>
void bm_append(benchmark::State& state, DType dtype, kvq::detail::append::LaunchOptions opt, Start where, int page_tokens = 0) {
  const std::int64_t n = state.range(0);
  const int heads = static_cast<int>(state.range(1));
  const std::int64_t first = where == Start::kNonEmpty ? 128 : 0;
  kvq::layout::CacheShape shape{1, heads, first + n * kReps, dtype};
  L l;
  if (L::make(shape, &l) != Status::kSuccess) return state.SkipWithError("layout refused the shape");
  using P = kvq::layout::PagedCacheLayout<typename L::KSpec, typename L::VSpec, L::kHeadDim, L::kKeyRotation>;
  P pl;
  DeviceBuffer<std::int32_t> tables;
  if (page_tokens > 0) {
    const std::int64_t pages = (shape.capacity + page_tokens - 1) / page_tokens;
    if (P::make({1, heads, page_tokens, pages, static_cast<int>(pages), dtype}, &pl) != Status::kSuccess)
      return state.SkipWithError("paged layout refused the shape");
    std::vector<std::int32_t> ids(static_cast<std::size_t>(pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937_64 rng(0x9a6e5);
    std::shuffle(ids.begin(), ids.end(), rng);
    tables = DeviceBuffer<std::int32_t>(ids);
  }
  DeviceBuffer<unsigned char> cache(static_cast<std::size_t>(page_tokens > 0 ? pl.bytes() : l.bytes()));
  KVQ_TEST_CUDA(cudaMemset(cache.get(), 0, cache.size()));
  const std::int64_t elems = n * heads * L::kHeadDim;
  DeviceBuffer<std::uint16_t> k(static_cast<std::size_t>(elems)), v(static_cast<std::size_t>(elems));
  fill_inputs<<<1024, 256>>>(k.get(), elems, L::kHeadDim, dtype == DType::kBFloat16, 1u);
  fill_inputs<<<1024, 256>>>(v.get(), elems, L::kHeadDim, dtype == DType::kBFloat16, 2u);
  KVQ_TEST_CUDA(cudaGetLastError());
  // Rep r appends at length first + r * n (its own cache region), or at 0: one length slot per rep.
  std::vector<std::int32_t> start(kReps);
  for (int r = 0; r < kReps; ++r)
    start[static_cast<std::size_t>(r)] = where == Start::kEmpty ? 0 : static_cast<std::int32_t>(first + r * n);
  DeviceBuffer<std::int32_t> lengths(start);
  std::vector<kvq::AppendArguments> args(kReps);
  for (int r = 0; r < kReps; ++r) {
    auto& a = args[static_cast<std::size_t>(r)];
    a.k = kvq::Tensor4::contiguous(k.get(), dtype, n, heads, L::kHeadDim);
    a.v = kvq::Tensor4::contiguous(v.get(), dtype, n, heads, L::kHeadDim);
    a.num_tokens = n;
    a.lengths = lengths.get() + r;
    a.cache = cache.get();
    a.max_cache_length = start[static_cast<std::size_t>(r)];
  }
  double total = 0.0;  // seconds per append, summed over iterations
  int blocks_per_sm = 0;
  const bool ok = page_tokens > 0
                      ? time_appends<kvq::layout::PagedView<P>, kMinBlocks>(
                            state, kvq::layout::PagedView<P>::bind(pl, tables.get(), pl.shape.max_pages_per_entry), args, opt,
                            lengths, start, &total, &blocks_per_sm)
                      : time_appends<L, kMinBlocks>(state, l, args, opt, lengths, start, &total, &blocks_per_sm);
  if (!ok) return;
  const auto [read, written] = append_bytes<L>(n, heads);
  const double bytes = static_cast<double>(read + written);
  const double gbps = bytes * static_cast<double>(state.iterations()) / total / 1e9;
  state.counters["blocks_per_sm"] = blocks_per_sm;
  const double copy = copy_gbps(read + written);
  state.counters["GB/s"] = gbps;
  state.counters["copy_GB/s"] = copy;
  state.counters["ratio_to_copy"] = gbps / copy;
  state.counters["us_per_append"] = total / static_cast<double>(state.iterations()) * 1e6;
  state.counters["bytes_read"] = static_cast<double>(read);
  state.counters["bytes_written"] = static_cast<double>(written);
}

template <class L, int kMinBlocks>
bool time_appends(benchmark::State& state, const L& l, const std::vector<kvq::AppendArguments>& args,
                  kvq::detail::append::LaunchOptions opt, DeviceBuffer<std::int32_t>& lengths, const std::vector<std::int32_t>& start,
                  double* total_seconds, int* blocks_per_sm) {
  Timer t;
  Status status = Status::kSuccess;
  kvq::AppendPlan<L, kMinBlocks> plan;
  if (plan.initialize(l, args[0]) != Status::kSuccess) {
    state.SkipWithError("initialize");
    return false;
  }
  if (plan.occupancy(blocks_per_sm) != Status::kSuccess) {
    state.SkipWithError("occupancy");
    return false;
  }
  auto enqueue = [&] {
    for (int r = 0; r < kReps && status == Status::kSuccess; ++r)
      status = plan.run(args[static_cast<std::size_t>(r)], nullptr, opt);
  };
  auto reset = [&] { KVQ_TEST_CUDA(cudaMemcpyAsync(lengths.get(), start.data(), kReps * 4, cudaMemcpyHostToDevice, 0)); };
  reset();
  t.time(0, enqueue);  // warm-up
  double total = 0.0;  // seconds per append, summed over iterations
  for (auto _ : state) {
    reset();
    const double s = t.time(0, enqueue);
    state.SetIterationTime(s);  // an iteration is kReps appends
    total += s / kReps;
  }
  if (status != Status::kSuccess) {
    state.SkipWithError(kvq::to_string(status));
    return false;
  }
  *total_seconds = total;
  return true;
}

void bm_copy(benchmark::State& state) {
  const std::int64_t bytes = state.range(0);
  const std::int64_t half = bytes / 2;
  DeviceBuffer<unsigned char> src(static_cast<std::size_t>(half) * kReps), dst(static_cast<std::size_t>(half) * kReps);
  KVQ_TEST_CUDA(cudaMemset(src.get(), 1, src.size()));
  Timer t;
  auto enqueue = [&] {
    for (int r = 0; r < kReps; ++r)
      KVQ_TEST_CUDA(cudaMemcpyAsync(dst.get() + r * half, src.get() + r * half, half, cudaMemcpyDeviceToDevice, 0));
  };
  t.time(0, enqueue);
  double total = 0.0;
  for (auto _ : state) {
    const double s = t.time(0, enqueue);
    state.SetIterationTime(s);
    total += s / kReps;
  }
  state.counters["GB/s"] = static_cast<double>(2 * half) * static_cast<double>(state.iterations()) / total / 1e9;
  state.counters["us_per_copy"] = total / static_cast<double>(state.iterations()) * 1e6;
}

/// Registers BM_quantize_append<suffix>/<name>/n:N/h:H and the BM_copy of the same bytes.
template <class L, int kMinBlocks = kvq::kernels::quantize::Traits<L>::kMinBlocks>
void add(const std::string& name, DType dtype, std::vector<std::pair<std::int64_t, std::int64_t>> shapes,
         kvq::detail::append::LaunchOptions opt = {}, Start where = Start::kPacked) {
  const std::string prefix = opt.update_lengths ? "BM_quantize_append/" : "BM_quantize_append_kernel/";
  auto* b = benchmark::RegisterBenchmark((prefix + name).c_str(), bm_append<L, kMinBlocks>, dtype, opt, where, 0);
  for (const auto& [n, h] : shapes) b->Args({n, h});
  b->ArgNames({"n", "h"})->UseManualTime()->Unit(benchmark::kMicrosecond);
  static std::set<std::int64_t> copies;  // one BM_copy per byte count
  for (const auto& [n, h] : shapes) {
    const auto [read, written] = append_bytes<L>(n, static_cast<int>(h));
    if (copies.insert(read + written).second)
      benchmark::RegisterBenchmark("BM_copy", bm_copy)->Arg(read + written)->ArgName("bytes")->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
}

/// The paged pair of one variant: contiguous, 64- and 128-token pages (public entry point).
template <class L>
void add_paged_pair(const std::string& name, std::vector<std::pair<std::int64_t, std::int64_t>> shapes) {
  for (int pt : {0, 64, 128}) {
    const std::string full =
        "paged_append_pair/" + name + "/" + (pt == 0 ? std::string("contiguous") : "paged" + std::to_string(pt));
    auto* b = benchmark::RegisterBenchmark(full.c_str(), [pt](benchmark::State& st) {
      bm_append<L, kvq::kernels::quantize::Traits<L>::kMinBlocks>(st, DType::kBFloat16, {}, Start::kPacked, pt);
    });
    for (const auto& [n, h] : shapes) b->Args({n, h});
    b->ArgNames({"n", "h"})->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::pair<std::int64_t, std::int64_t>> target = {{8192, 24}};
  const std::vector<std::pair<std::int64_t, std::int64_t>> sizes = {{8192, 24}, {1024, 24}, {8192, 8}};
  kvq::detail::append::LaunchOptions kernel_only;
  kernel_only.update_lengths = false;
  add<Int2Pt128>("int2_pt128_d128", DType::kBFloat16, sizes);
  add<Int2Pt128Rot>("int2_pt128_d128_rot", DType::kBFloat16, sizes);
  add<Int2Pt128RotCen>("int2_pt128_d128_rotcen", DType::kBFloat16, sizes, {}, Start::kNonEmpty);
  add<Int2Pt128RotCen>("int2_pt128_d128_rotcen_first", DType::kBFloat16, sizes, {}, Start::kEmpty);
  add<Int2Pc32>("int2_pc32_d128", DType::kBFloat16, sizes);
  add<Int2Pc32Rot>("int2_pc32_d128_rot", DType::kBFloat16, sizes);
  add<Int2Pt128>("int2_pt128_d128", DType::kBFloat16, target, kernel_only);
  add<Int2Pt128Rot>("int2_pt128_d128_rot", DType::kBFloat16, target, kernel_only);
  add<Int2Pt128RotCen>("int2_pt128_d128_rotcen", DType::kBFloat16, target, kernel_only, Start::kNonEmpty);
  add<Int2Pc32>("int2_pc32_d128", DType::kBFloat16, target, kernel_only);
  add<Int2Pc32Rot>("int2_pc32_d128_rot", DType::kBFloat16, target, kernel_only);
  // Register budget: 80 instead of 64 registers (6 instead of 8 blocks of 128 threads per SM).
  add<Int2Pc32, 6>("int2_pc32_regs80_d128", DType::kBFloat16, target, kernel_only);
  // Small appends (decode-like): the fixed cost of the extra key_mean_kernel launch.
  const std::vector<std::pair<std::int64_t, std::int64_t>> small = {{1, 8}, {32, 8}};
  add<Int2Pt128Rot>("int2_pt128_d128_rot", DType::kBFloat16, small);
  add<Int2Pt128RotCen>("int2_pt128_d128_rotcen", DType::kBFloat16, small, {}, Start::kNonEmpty);
  add<Int2Pt128>("int2_pt128_d128_fp16in", DType::kFloat16, target);
  add<Int4Pt128>("int4_pt128_d128", DType::kBFloat16, target);
  add<Int4Pt128Rot>("int4_pt128_d128_rot", DType::kBFloat16, target);
  add<Int8Pt128>("int8_pt128_d128", DType::kBFloat16, target);
  add_paged_pair<Int2Pt128>("int2_pt128_d128", target);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 77;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
