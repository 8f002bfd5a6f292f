// Fused chunk attention over a quantized cache (DESIGN.md section 6): the current chunk's
// Nq queries attend to [cache ; chunk] (Nkv = cache + Nq), bidirectional, bf16 inputs,
// head dim 128. Compare with benchmarks/attention/torch_sdpa.py (torch flash / cuDNN on
// bf16 K/V of the same shapes), measured in the same session.
//
//   BM_attention/<variant>/nq:<Nq>/cache:<tokens>/h:<Hq>[/hkv:<Hkv>]
//   <variant> = <bits>_<pt|pc><group>_<correction>_d128[_sm90r128|_sm90ov|_sm90pp|_sm90r192|_sm90fma]
//   (_sm90...: the Hopper kernel with 128-row CTAs (default schedule, overlapped, turns),
//   192-row CTAs, or the correction unfolded)
// Timing: CUDA events around one launch (UseManualTime), behind a short spin kernel; each
// benchmark runs a kvq::AttentionPlan prepared once with an explicit configuration (the
// names without _sm90...: the mma.sync kernel's default tiles).
//
//   BM_attention_host_run/<variant>: host time of AttentionPlan::run (argument checks,
//   parameters, launch) per call, measured on the host over 256 calls enqueued behind a
//   long spin kernel, so that the launch queue never blocks; .../launch_floor: the same
//   launch of an empty kernel with the same parameter block.
//   paged_pair/<variant>/<contiguous|paged64|paged128|paged128_ordered>/nq:<Nq>/cache:<tokens>/h:<Hq>:
//   the same kernel configuration over the contiguous cache and over a paged cache
//   (layout::PagedView) of 64- or 128-token pages listed in a random order, or 128-token pages
//   in table order (one entry; the pool holds exactly its pages); --benchmark_filter=paged_pair/
//   runs the set.
// Counters: TFLOP/s = 4 * B * Hq * Nq * Nkv * D / time, ms per call, cache_GB (size of the
// packed cache, metadata included).
//
//   BM_attention/short/<variant>/<path>/b:<B>/nq:<Nq>/cache:<tokens>/h:<Hq>/hkv:<Hkv>
//   decode and short queries (B batch entries, each with a full cache of <tokens> and a
//   chunk of Nq tokens; bidirectional), and the frame-level shape; <path> = auto (what
//   kvq::attention selects), short (kvq::ShortQueryConfig forced) or chunk (the Hopper
//   kernel's default configuration forced; skipped off sm_90a). Extra counters: floor_GB
//   (the bytes that must be read and written: packed codes and metadata of the valid cache,
//   the chunk's K/V, Q and O), GB/s (floor_GB / time) and splits (of the short path).
//   BM_attention/split/<variant>/s:<auto|k>/b:...: the Hopper kernel's default
//   configuration with the split rule's choice (auto) or k splits (1: none) of each CTA's
//   keys (AttentionArguments::splits), on the frame-level and Wan 1.3B chunk shapes.
#include <benchmark/benchmark.h>

#include <kvq/api/attention.cuh>
#include <kvq/api/default_variants.cuh>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <random>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "support/cuda_check.cuh"

namespace {

using kvq::Correction;
using kvq::DType;
using kvq::Status;
using kvq::test::DeviceBuffer;

__global__ void spin(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

__device__ std::uint32_t hash(std::uint64_t i, std::uint32_t seed) {
  std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ static_cast<std::uint32_t>(i >> 32) ^ seed;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  h *= 3266489917u;
  h ^= h >> 16;
  return h;
}

/// Random bf16 activations in [-2, 2).
__global__ void fill_bf16(std::uint16_t* x, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x[i] = kvq::math::float_to_bf16_bits_rn(static_cast<float>(hash(i, seed) >> 8) * (4.0f / 16777216.0f) - 2.0f);
}

/// Random code words.
__global__ void fill_codes(std::uint32_t* x, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x[i] = hash(i, seed);
}

/// Plausible fp16 (step, zero) pairs: step in [0.25, 1), zero in [-1.5, -0.5).
__global__ void fill_meta(std::uint32_t* x, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::uint32_t h = hash(i, seed);
    const float step = 0.25f + static_cast<float>(h & 0xffffu) * (0.75f / 65536.0f);
    const float zero = -1.5f + static_cast<float>(h >> 16) * (1.0f / 65536.0f);
    x[i] = kvq::math::float_to_half_bits_rn(step) | (static_cast<std::uint32_t>(kvq::math::float_to_half_bits_rn(zero)) << 16);
  }
}

/// A paged pool: code words where a page holds codes, (step, zero) pairs where it holds metadata.
__global__ void fill_pool(std::uint32_t* x, std::int64_t n, std::int64_t page_bytes, std::int64_t k_meta, std::int64_t v_codes,
                          std::int64_t v_meta, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t off = (i * 4) % page_bytes;
    const std::uint32_t h = hash(i, seed);
    if ((off >= k_meta && off < v_codes) || off >= v_meta) {
      const float step = 0.25f + static_cast<float>(h & 0xffffu) * (0.75f / 65536.0f);
      const float zero = -1.5f + static_cast<float>(h >> 16) * (1.0f / 65536.0f);
      x[i] = kvq::math::float_to_half_bits_rn(step) | (static_cast<std::uint32_t>(kvq::math::float_to_half_bits_rn(zero)) << 16);
    } else {
      x[i] = h;
    }
  }
}

struct Shape {
  std::int64_t nq, cache;
  int hq, hkv;
};

template <class L, Correction Mode, class Config>
bool time_plan(benchmark::State& state, const L& l, const kvq::AttentionArguments& a, double* total_seconds);

/// page_tokens == 0: the contiguous cache of layout C; else a paged cache of C's variant with
/// pages of that many tokens in a random order, or in table order when `ordered`
/// (layout::PagedView).
template <class C, Correction Mode, class Config>
void bm_attention(benchmark::State& state, Shape sh, int page_tokens = 0, bool ordered = false) {
  constexpr int D = C::kHeadDim;
  const std::int64_t nc = sh.nq;  // the chunk's queries attend to the cache and the chunk
  using P = kvq::layout::PagedCacheLayout<typename C::KSpec, typename C::VSpec, D, C::kKeyRotation>;
  C l;
  if (C::make({1, sh.hkv, sh.cache, DType::kBFloat16}, &l) != Status::kSuccess) return state.SkipWithError("layout");
  P pl;
  DeviceBuffer<std::int32_t> tables;
  if (page_tokens > 0) {
    const std::int64_t pages = (sh.cache + page_tokens - 1) / page_tokens;
    if (P::make({1, sh.hkv, page_tokens, pages, static_cast<int>(pages), DType::kBFloat16}, &pl) != Status::kSuccess)
      return state.SkipWithError("paged layout");
    std::vector<std::int32_t> ids(static_cast<std::size_t>(pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937_64 rng(0x9a6ed);
    if (!ordered) std::shuffle(ids.begin(), ids.end(), rng);
    tables = DeviceBuffer<std::int32_t>(ids);
  }
  const std::int64_t bytes = page_tokens > 0 ? pl.bytes() : l.bytes();
  DeviceBuffer<unsigned char> cache(static_cast<std::size_t>(bytes));
  KVQ_TEST_CUDA(cudaMemset(cache.get(), 0, cache.size()));
  auto* base = cache.get();
  if (page_tokens > 0) {
    fill_pool<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base), pl.pool_bytes() / 4, pl.page_bytes(), pl.page_k_meta_offset(),
                             pl.page_v_codes_offset(), pl.page_v_meta_offset(), 1u);
  } else {
    fill_codes<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.k_codes_offset()), l.k_codes_bytes() / 4, 1u);
    fill_codes<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.v_codes_offset()), l.v_codes_bytes() / 4, 2u);
    fill_meta<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.k_meta_offset()), l.k_meta_bytes() / 4, 3u);
    fill_meta<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.v_meta_offset()), l.v_meta_bytes() / 4, 4u);
  }
  const std::int64_t nq_el = sh.nq * sh.hq * D, nc_el = nc * sh.hkv * D;
  DeviceBuffer<std::uint16_t> q(static_cast<std::size_t>(nq_el)), o(static_cast<std::size_t>(nq_el)),
      k(static_cast<std::size_t>(nc_el)), v(static_cast<std::size_t>(nc_el));
  fill_bf16<<<2048, 256>>>(q.get(), nq_el, 5u);
  fill_bf16<<<2048, 256>>>(k.get(), nc_el, 6u);
  fill_bf16<<<2048, 256>>>(v.get(), nc_el, 7u);
  KVQ_TEST_CUDA(cudaGetLastError());
  DeviceBuffer<std::int32_t> lengths(std::vector<std::int32_t>{static_cast<std::int32_t>(sh.cache)});

  kvq::AttentionArguments a;
  a.batch = 1;
  a.q_heads = sh.hq;
  a.num_q = sh.nq;
  a.num_chunk = nc;
  a.q = kvq::Tensor4::contiguous(q.get(), DType::kBFloat16, sh.nq, sh.hq, D);
  a.o = kvq::Tensor4::contiguous(o.get(), DType::kBFloat16, sh.nq, sh.hq, D);
  a.k_chunk = kvq::Tensor4::contiguous(k.get(), DType::kBFloat16, nc, sh.hkv, D);
  a.v_chunk = kvq::Tensor4::contiguous(v.get(), DType::kBFloat16, nc, sh.hkv, D);
  a.cache = cache.get();
  a.cache_lengths = lengths.get();
  a.max_cache_length = sh.cache;
  a.scale = 0.08838834764831845f;

  double total = 0.0;
  const bool ok = page_tokens > 0
                      ? time_plan<kvq::layout::PagedView<P>, Mode, Config>(
                            state, kvq::layout::PagedView<P>::bind(pl, tables.get(), pl.shape.max_pages_per_entry), a, &total)
                      : time_plan<C, Mode, Config>(state, l, a, &total);
  if (!ok) return;
  const double flops = 4.0 * sh.hq * static_cast<double>(sh.nq) * static_cast<double>(sh.cache + nc) * D;
  const double sec = total / static_cast<double>(state.iterations());
  state.counters["TFLOP/s"] = flops / sec / 1e12;
  state.counters["ms"] = sec * 1e3;
  state.counters["cache_GB"] = static_cast<double>(bytes) / 1e9;
}

/// Times one launch per iteration of a plan prepared once (false: skipped with the error).
template <class L, Correction Mode, class Config>
bool time_plan(benchmark::State& state, const L& l, const kvq::AttentionArguments& a, double* total_seconds) {
  cudaEvent_t start, stop;
  KVQ_TEST_CUDA(cudaEventCreate(&start));
  KVQ_TEST_CUDA(cudaEventCreate(&stop));
  kvq::AttentionPlan<L, Mode, Config> plan;
  Status status = plan.initialize(l, a);
  if (status != Status::kSuccess) {
    state.SkipWithError(kvq::to_string(status));
    return false;
  }
  status = plan.run(a, nullptr);  // warm-up
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
  if (status != Status::kSuccess) {
    state.SkipWithError(kvq::to_string(status));
    return false;
  }
  double total = 0.0;
  for (auto _ : state) {
    spin<<<1, 1>>>(100000);
    KVQ_TEST_CUDA(cudaEventRecord(start, nullptr));
    status = plan.run(a, nullptr);
    KVQ_TEST_CUDA(cudaEventRecord(stop, nullptr));
    KVQ_TEST_CUDA(cudaEventSynchronize(stop));
    float ms = 0.0f;
    KVQ_TEST_CUDA(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
    total += ms * 1e-3;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (status != Status::kSuccess) {
    state.SkipWithError(kvq::to_string(status));
    return false;
  }
  *total_seconds = total;
  return true;
}

struct ShortShape {
  int batch;
  std::int64_t nq, cache;
  int hq, hkv;
};

/// The short-query shapes: every batch entry holds `cache` tokens and a chunk of nq tokens.
template <class L, Correction Mode, class Config>
void bm_short(benchmark::State& state, ShortShape sh, int splits = 0) {
  constexpr int D = L::kHeadDim;
  const std::int64_t nc = sh.nq;
  L l;
  if (L::make({sh.batch, sh.hkv, sh.cache, DType::kBFloat16}, &l) != Status::kSuccess) return state.SkipWithError("layout");
  DeviceBuffer<unsigned char> cache(static_cast<std::size_t>(l.bytes()));
  KVQ_TEST_CUDA(cudaMemset(cache.get(), 0, cache.size()));
  auto* base = cache.get();
  fill_codes<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.k_codes_offset()), l.k_codes_bytes() / 4, 1u);
  fill_codes<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.v_codes_offset()), l.v_codes_bytes() / 4, 2u);
  fill_meta<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.k_meta_offset()), l.k_meta_bytes() / 4, 3u);
  fill_meta<<<2048, 256>>>(reinterpret_cast<std::uint32_t*>(base + l.v_meta_offset()), l.v_meta_bytes() / 4, 4u);
  const std::int64_t nq_el = sh.batch * sh.nq * sh.hq * D, nc_el = sh.batch * nc * sh.hkv * D;
  DeviceBuffer<std::uint16_t> q(static_cast<std::size_t>(nq_el)), o(static_cast<std::size_t>(nq_el)),
      k(static_cast<std::size_t>(nc_el)), v(static_cast<std::size_t>(nc_el));
  fill_bf16<<<2048, 256>>>(q.get(), nq_el, 5u);
  fill_bf16<<<2048, 256>>>(k.get(), nc_el, 6u);
  fill_bf16<<<2048, 256>>>(v.get(), nc_el, 7u);
  KVQ_TEST_CUDA(cudaGetLastError());
  DeviceBuffer<std::int32_t> lengths(std::vector<std::int32_t>(static_cast<std::size_t>(sh.batch),
                                                               static_cast<std::int32_t>(sh.cache)));
  kvq::AttentionArguments a;
  a.batch = sh.batch;
  a.q_heads = sh.hq;
  a.num_q = sh.nq;
  a.num_chunk = nc;
  a.q = kvq::Tensor4::contiguous(q.get(), DType::kBFloat16, sh.nq, sh.hq, D);
  a.o = kvq::Tensor4::contiguous(o.get(), DType::kBFloat16, sh.nq, sh.hq, D);
  a.k_chunk = kvq::Tensor4::contiguous(k.get(), DType::kBFloat16, nc, sh.hkv, D);
  a.v_chunk = kvq::Tensor4::contiguous(v.get(), DType::kBFloat16, nc, sh.hkv, D);
  a.cache = cache.get();
  a.cache_lengths = lengths.get();
  a.max_cache_length = sh.cache;
  a.scale = 0.08838834764831845f;
  a.splits = splits;

  cudaEvent_t start, stop;
  KVQ_TEST_CUDA(cudaEventCreate(&start));
  KVQ_TEST_CUDA(cudaEventCreate(&stop));
  kvq::AttentionPlan<L, Mode, Config> plan;
  Status status = plan.initialize(l, a);
  if (status != Status::kSuccess) return state.SkipWithError(kvq::to_string(status));
  status = plan.run(a, nullptr);  // warm-up
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
  if (status != Status::kSuccess) return state.SkipWithError(kvq::to_string(status));
  double total = 0.0;
  for (auto _ : state) {
    spin<<<1, 1>>>(100000);
    KVQ_TEST_CUDA(cudaEventRecord(start, nullptr));
    status = plan.run(a, nullptr);
    KVQ_TEST_CUDA(cudaEventRecord(stop, nullptr));
    KVQ_TEST_CUDA(cudaEventSynchronize(stop));
    float ms = 0.0f;
    KVQ_TEST_CUDA(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
    total += ms * 1e-3;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (status != Status::kSuccess) return state.SkipWithError(kvq::to_string(status));
  // The cache is full (capacity = cache tokens): its packed codes and metadata are read whole.
  const double floor_bytes = static_cast<double>(l.k_codes_bytes() + l.v_codes_bytes() + l.k_meta_bytes() + l.v_meta_bytes()) +
                             2.0 * 2.0 * static_cast<double>(nc_el) + 2.0 * 2.0 * static_cast<double>(nq_el);
  const double flops = 4.0 * sh.batch * sh.hq * static_cast<double>(sh.nq) * static_cast<double>(sh.cache + nc) * D;
  const double sec = total / static_cast<double>(state.iterations());
  state.counters["TFLOP/s"] = flops / sec / 1e12;
  state.counters["ms"] = sec * 1e3;
  state.counters["floor_GB"] = floor_bytes / 1e9;
  state.counters["GB/s"] = floor_bytes / sec / 1e9;
  state.counters["splits"] = plan.splits();
  state.counters["short"] = plan.path() == kvq::AttentionPath::kShort ? 1 : 0;
}

template <class L, Correction Mode>
void add_short(const std::string& variant, const std::vector<ShortShape>& shapes) {
  using Chunk = kvq::kernels::sm90::DefaultConfig<L, Mode>;
  for (const ShortShape& s : shapes) {
    const std::string tail = "/b:" + std::to_string(s.batch) + "/nq:" + std::to_string(s.nq) + "/cache:" +
                             std::to_string(s.cache) + "/h:" + std::to_string(s.hq) + "/hkv:" + std::to_string(s.hkv);
    const std::string head = "BM_attention/short/" + variant;
    benchmark::RegisterBenchmark((head + "/auto" + tail).c_str(),
                                 [s](benchmark::State& st) { bm_short<L, Mode, kvq::AutoConfig>(st, s); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((head + "/short" + tail).c_str(),
                                 [s](benchmark::State& st) { bm_short<L, Mode, kvq::ShortQueryConfig>(st, s); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((head + "/chunk" + tail).c_str(), [s](benchmark::State& st) { bm_short<L, Mode, Chunk>(st, s); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

/// Split-KV on the Hopper kernel (its default configuration forced): the rule's choice
/// (s:auto) against fixed split counts (s:1 never splits).
template <class L, Correction Mode>
void add_split(const std::string& variant, const std::vector<ShortShape>& shapes, const std::vector<int>& splits) {
  using Chunk = kvq::kernels::sm90::DefaultConfig<L, Mode>;
  for (const ShortShape& sh : shapes) {
    for (int k : splits) {
      const std::string name = "BM_attention/split/" + variant + "/s:" + (k == 0 ? std::string("auto") : std::to_string(k)) +
                               "/b:" + std::to_string(sh.batch) + "/nq:" + std::to_string(sh.nq) + "/cache:" +
                               std::to_string(sh.cache) + "/h:" + std::to_string(sh.hq) + "/hkv:" + std::to_string(sh.hkv);
      benchmark::RegisterBenchmark(name.c_str(), [sh, k](benchmark::State& st) { bm_short<L, Mode, Chunk>(st, sh, k); })
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
}

/// Host time of AttentionPlan::run per call (the GPU busy with a spin kernel meanwhile).
template <class L, Correction Mode>
void bm_host_run(benchmark::State& state) {
  constexpr int D = L::kHeadDim, kCalls = 256;
  const Shape sh{1024, 4096, 8, 8};
  L l;
  if (L::make({1, sh.hkv, sh.cache, DType::kBFloat16}, &l) != Status::kSuccess) return state.SkipWithError("layout");
  DeviceBuffer<unsigned char> cache(static_cast<std::size_t>(l.bytes()));
  KVQ_TEST_CUDA(cudaMemset(cache.get(), 0, cache.size()));
  DeviceBuffer<std::uint16_t> q(static_cast<std::size_t>(sh.nq * sh.hq * D)), o(q.size()), k(q.size()), v(q.size());
  DeviceBuffer<std::int32_t> lengths(std::vector<std::int32_t>{static_cast<std::int32_t>(sh.cache)});
  kvq::AttentionArguments a;
  a.batch = 1, a.q_heads = sh.hq, a.num_q = sh.nq, a.num_chunk = sh.nq;
  a.q = kvq::Tensor4::contiguous(q.get(), DType::kBFloat16, sh.nq, sh.hq, D);
  a.o = kvq::Tensor4::contiguous(o.get(), DType::kBFloat16, sh.nq, sh.hq, D);
  a.k_chunk = kvq::Tensor4::contiguous(k.get(), DType::kBFloat16, sh.nq, sh.hkv, D);
  a.v_chunk = kvq::Tensor4::contiguous(v.get(), DType::kBFloat16, sh.nq, sh.hkv, D);
  a.cache = cache.get(), a.cache_lengths = lengths.get(), a.scale = 0.0884f;
  kvq::AttentionPlan<L, Mode> plan;
  Status status = plan.initialize(l, a);
  if (status != Status::kSuccess) return state.SkipWithError(kvq::to_string(status));
  double total = 0.0;
  for (auto _ : state) {
    spin<<<1, 1>>>(2000000000);  // ~1 s: the calls below only enqueue
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls && status == Status::kSuccess; ++i) status = plan.run(a, nullptr);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kCalls;
    state.SetIterationTime(s);
    total += s;
    KVQ_TEST_CUDA(cudaDeviceSynchronize());
  }
  if (status != Status::kSuccess) return state.SkipWithError(kvq::to_string(status));
  state.counters["us_per_run"] = total / static_cast<double>(state.iterations()) * 1e6;
  state.counters["sm90"] = plan.path() == kvq::AttentionPath::kSm90 ? 1 : 0;
}

/// The floor under AttentionPlan::run's host time: a launch of a kernel that does nothing,
/// timed the same way, with the same parameter block (P = AttentionParams, 600 bytes) or a
/// 16-byte one, through cudaLaunchKernelEx (kvq::device::launch) or <<<>>>.
template <class P>
__global__ void empty_kernel(const __grid_constant__ P p) {
  (void)p;
}
struct SmallParams {
  const void* a;
  const void* b;
};
template <class P, bool kChevrons>
void bm_launch_floor(benchmark::State& state) {
  constexpr int kCalls = 256;
  P p{};
  kvq::device::LaunchShape shape;
  shape.grid = dim3(8, 8, 1);
  shape.block = dim3(384);
  Status status = Status::kSuccess;
  double total = 0.0;
  for (auto _ : state) {
    spin<<<1, 1>>>(2000000000);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls && status == Status::kSuccess; ++i) {
      if constexpr (kChevrons) {
        empty_kernel<P><<<shape.grid, shape.block>>>(p);
      } else {
        status = kvq::device::launch(&empty_kernel<P>, shape, nullptr, p);
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kCalls;
    state.SetIterationTime(s);
    total += s;
    KVQ_TEST_CUDA(cudaDeviceSynchronize());
  }
  if (status != Status::kSuccess) return state.SkipWithError(kvq::to_string(status));
  state.counters["us_per_launch"] = total / static_cast<double>(state.iterations()) * 1e6;
  state.counters["param_bytes"] = static_cast<double>(sizeof(P));
}

template <class L, Correction Mode, class Config = kvq::kernels::sm80::DefaultTileConfig<L::kHeadDim>>
void add(const std::string& variant, const std::vector<Shape>& shapes) {
  for (const Shape& s : shapes) {
    std::string name = "BM_attention/" + variant + "/nq:" + std::to_string(s.nq) + "/cache:" + std::to_string(s.cache) +
                       "/h:" + std::to_string(s.hq);
    if (s.hkv != s.hq) name += "/hkv:" + std::to_string(s.hkv);
    benchmark::RegisterBenchmark(name.c_str(), [s](benchmark::State& st) { bm_attention<L, Mode, Config>(st, s); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

/// The paged pair of one variant and configuration: contiguous, 64- and 128-token pages in a
/// random order, and 128-token pages in table order (what the order alone costs).
template <class L, Correction Mode, class Config>
void add_paged_pair(const std::string& variant, const std::vector<Shape>& shapes) {
  for (const Shape& s : shapes)
    for (auto [pt, ordered] : {std::pair<int, bool>{0, false}, {64, false}, {128, false}, {128, true}}) {
      const std::string kind = pt == 0 ? std::string("contiguous") : "paged" + std::to_string(pt) + (ordered ? "_ordered" : "");
      const std::string name = "paged_pair/" + variant + "/" + kind + "/nq:" + std::to_string(s.nq) + "/cache:" +
                               std::to_string(s.cache) + "/h:" + std::to_string(s.hq);
      benchmark::RegisterBenchmark(name.c_str(),
                                   [s, pt = pt, ordered = ordered](benchmark::State& st) { bm_attention<L, Mode, Config>(st, s, pt, ordered); })
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

// The benchmarked pairs (the rest of the default set is instantiated by the tests).
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2)

int main(int argc, char** argv) {
  using namespace kvq::variants;
  // DESIGN.md section 6 shapes and one GQA shape.
  const std::vector<Shape> all = {{8192, 65536, 24, 24}, {4096, 16384, 24, 24}, {8192, 65536, 48, 8}};
  // Hopper kernel (sm_90a; PerToken keys) with 128-row CTAs (kernels::sm90::Config128), the same
  // with the PV MMA overlapping the softmax (kernels::sm90::Config128Overlap) or with turns at the
  // softmax (kernels::sm90::Config128Pingpong), and 192-row CTAs (kernels::sm90::Config192);
  // kvq::attention runs the one of kernels::sm90::DefaultConfig: ov for 2-bit keys and values
  // at head dim 128, r192 otherwise.
  using C128 = kvq::kernels::sm90::Config128;
  using COV = kvq::kernels::sm90::Config128Overlap;
  using CPP = kvq::kernels::sm90::Config128Pingpong;
  using C192 = kvq::kernels::sm90::Config192;
  add<Int2Pt128D128, Correction::kNone, COV>("int2_pt128_none_d128_sm90ov", all);
  add<Int2Pt128D128, Correction::kTaylor2, COV>("int2_pt128_taylor2_d128_sm90ov", all);
  add<Int2Pt128D128, Correction::kNone, CPP>("int2_pt128_none_d128_sm90pp", all);
  add<Int2Pt128D128, Correction::kTaylor2, CPP>("int2_pt128_taylor2_d128_sm90pp", all);
  add<Int4Pt128D128, Correction::kNone, COV>("int4_pt128_none_d128_sm90ov", all);
  add<Int4Pt128D128, Correction::kTaylor2, COV>("int4_pt128_taylor2_d128_sm90ov", all);
  add<Int2Pt128D128, Correction::kNone, C128>("int2_pt128_none_d128_sm90r128", all);
  add<Int2Pt128D128, Correction::kTaylor2, C128>("int2_pt128_taylor2_d128_sm90r128", all);
  add<Int2Pt128D128, Correction::kNone, C192>("int2_pt128_none_d128_sm90r192", all);
  add<Int2Pt128D128, Correction::kTaylor2, C192>("int2_pt128_taylor2_d128_sm90r192", all);
  add<Int4Pt128D128, Correction::kNone, C128>("int4_pt128_none_d128_sm90r128", all);
  add<Int4Pt128D128, Correction::kTaylor2, C128>("int4_pt128_taylor2_d128_sm90r128", all);
  add<Int4Pt128D128, Correction::kNone, C192>("int4_pt128_none_d128_sm90r192", all);
  add<Int4Pt128D128, Correction::kTaylor2, C192>("int4_pt128_taylor2_d128_sm90r192", all);
  // The PerToken correction as one FMA per score (not folded).
  const std::vector<Shape> main_shape = {{8192, 65536, 24, 24}};
  // The cost of rotated keys: the same kernel and shapes with and without rotation (the main
  // shape and the Wan 1.3B chunk: 3 frames of 1560 tokens, 12 heads).
  const std::vector<Shape> rotation_shapes = {{8192, 65536, 24, 24}, {4680, 18720, 12, 12}};
  add<Int2Pt128D128, Correction::kTaylor2, COV>("rot_pair/int2_pt128_taylor2_d128_sm90ov", rotation_shapes);
  add<Int2Pt128D128Rot, Correction::kTaylor2, COV>("rot_pair/int2_pt128rot_taylor2_d128_sm90ov", rotation_shapes);
  add<Int2Pt128D128RotCen, Correction::kTaylor2, COV>("rot_pair/int2_pt128rotcen_taylor2_d128_sm90ov", rotation_shapes);
  // Paged caches (64- and 128-token pages in a random order) against the contiguous cache, on the
  // Hopper kernel's default configuration for INT2 and on the mma.sync kernel.
  add_paged_pair<Int2Pt128D128, Correction::kTaylor2, COV>("int2_pt128_taylor2_d128_sm90ov", rotation_shapes);
  add_paged_pair<Int2Pt128D128, Correction::kTaylor2, kvq::kernels::sm80::DefaultTileConfig<128>>("int2_pt128_taylor2_d128",
                                                                                                 rotation_shapes);
  add<Int2Pt128D128, Correction::kTaylor2, kvq::kernels::sm90::Config128NoFold>("int2_pt128_taylor2_d128_sm90fma", main_shape);
  // mma.sync kernel (every architecture; PerChannel keys run on it on Hopper too).
  add<Int2Pt128D128, Correction::kNone>("int2_pt128_none_d128", all);
  add<Int2Pt128D128, Correction::kTaylor2>("int2_pt128_taylor2_d128", all);
  add<Int2Pc32D128, Correction::kNone>("int2_pc32_none_d128", all);
  add<Int2Pc32D128, Correction::kTaylor2>("int2_pc32_taylor2_d128", all);
  add<Int4Pt128D128, Correction::kTaylor2>("int4_pt128_taylor2_d128", all);
  add<Int4Pc32D128, Correction::kNone>("int4_pc32_none_d128", all);
  add<Int4Pc32D128, Correction::kTaylor2>("int4_pc32_taylor2_d128", all);
  // Decode (1 query), 16 queries (B 8, 32 q / 8 kv heads, cache 32768) and frame-level video
  // (one 1560-token frame, 12 heads, cache 31200): auto, the short-query kernel and the
  // chunk kernel.
  const std::vector<ShortShape> short_shapes = {{8, 1, 32768, 32, 8}, {8, 16, 32768, 32, 8}, {1, 1560, 31200, 12, 12}};
  add_short<Int2Pt128D128, Correction::kTaylor2>("int2_pt128_taylor2_d128", short_shapes);
  add_short<Int4Pt128D128, Correction::kTaylor2>("int4_pt128_taylor2_d128", {short_shapes[0], short_shapes[1]});
  // Split-KV of the chunk kernel: the frame-level shape and the Wan 1.3B chunk.
  add_split<Int2Pt128D128, Correction::kTaylor2>("int2_pt128_taylor2_d128", {{1, 1560, 31200, 12, 12}, {1, 4680, 18720, 12, 12}},
                                                 {0, 1, 2, 3, 4, 5, 6, 8});
  // Host time of a prepared plan's run (the default configuration).
  benchmark::RegisterBenchmark("BM_attention_host_run/int2_pt128_taylor2_d128", bm_host_run<Int2Pt128D128, Correction::kTaylor2>)
      ->UseManualTime()
      ->Iterations(5)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("BM_attention_host_run/int2_pc32_taylor2_d128", bm_host_run<Int2Pc32D128, Correction::kTaylor2>)
      ->UseManualTime()
      ->Iterations(5)
      ->Unit(benchmark::kMicrosecond);
  using Params = kvq::kernels::common::AttentionParams<Int2Pt128D128>;
  for (auto [name, fn] : {std::pair{"launch_floor", &bm_launch_floor<Params, false>},
                          std::pair{"launch_floor_chevrons", &bm_launch_floor<Params, true>},
                          std::pair{"launch_floor_16B", &bm_launch_floor<SmallParams, false>},
                          std::pair{"launch_floor_16B_chevrons", &bm_launch_floor<SmallParams, true>}})
    benchmark::RegisterBenchmark((std::string("BM_attention_host_run/") + name).c_str(), fn)
        ->UseManualTime()
        ->Iterations(5)
        ->Unit(benchmark::kMicrosecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
