// A downstream engine's use of kvq through its public API only: one cache layout, one
// quantize-append and one attention variant, both on an explicit stream, checked
// against kvq's CPU reference. Exits 77 (skipped) without a CUDA device.
#include <kvq/kvq.cuh>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

using Layout = kvq::layout::CacheLayout<kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>,
                                        kvq::QuantSpec<2, 128, kvq::Granularity::kPerToken>, 128>;
KVQ_INSTANTIATE_ATTENTION(Layout, kvq::Correction::kTaylor2)

#define CHECK_CUDA(x)                                                         \
  do {                                                                        \
    const cudaError_t e_ = (x);                                               \
    if (e_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));           \
      return 1;                                                               \
    }                                                                         \
  } while (0)
#define CHECK_KVQ(x)                                                          \
  do {                                                                        \
    const kvq::Status s_ = (x);                                               \
    if (s_ != kvq::Status::kSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, kvq::to_string(s_));               \
      return 1;                                                               \
    }                                                                         \
  } while (0)

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("built; no CUDA device to run on\n");
    return 77;
  }
  constexpr int kB = 1, kHkv = 2, kHq = 4, kD = 128, kCached = 300, kN = 64;
  Layout layout;
  CHECK_KVQ(Layout::make({kB, kHkv, 512, kvq::DType::kBFloat16}, &layout));

  // Host data: a cached history of kCached tokens and the current chunk of kN.
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto random_bf16 = [&](std::size_t n) {
    std::vector<std::uint16_t> x(n);
    for (auto& e : x) e = kvq::math::float_to_bf16_bits_rn(nd(rng));
    return x;
  };
  const auto hk = random_bf16(std::size_t{kB} * kCached * kHkv * kD), hv = random_bf16(hk.size());
  const auto hq = random_bf16(std::size_t{kB} * kN * kHq * kD);
  const auto hkc = random_bf16(std::size_t{kB} * kN * kHkv * kD), hvc = random_bf16(hkc.size());

  // Device buffers.
  void* cache = nullptr;
  std::int32_t* lengths = nullptr;
  std::uint16_t *k = nullptr, *v = nullptr, *q = nullptr, *kc = nullptr, *vc = nullptr, *o = nullptr;
  CHECK_CUDA(cudaMalloc(&cache, static_cast<std::size_t>(layout.bytes())));
  CHECK_CUDA(cudaMalloc(&lengths, sizeof(std::int32_t) * kB));
  CHECK_CUDA(cudaMalloc(&k, hk.size() * 2));
  CHECK_CUDA(cudaMalloc(&v, hv.size() * 2));
  CHECK_CUDA(cudaMalloc(&q, hq.size() * 2));
  CHECK_CUDA(cudaMalloc(&kc, hkc.size() * 2));
  CHECK_CUDA(cudaMalloc(&vc, hvc.size() * 2));
  CHECK_CUDA(cudaMalloc(&o, hq.size() * 2));
  cudaStream_t stream = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CHECK_CUDA(cudaMemcpyAsync(k, hk.data(), hk.size() * 2, cudaMemcpyHostToDevice, stream));
  CHECK_CUDA(cudaMemcpyAsync(v, hv.data(), hv.size() * 2, cudaMemcpyHostToDevice, stream));
  CHECK_CUDA(cudaMemcpyAsync(q, hq.data(), hq.size() * 2, cudaMemcpyHostToDevice, stream));
  CHECK_CUDA(cudaMemcpyAsync(kc, hkc.data(), hkc.size() * 2, cudaMemcpyHostToDevice, stream));
  CHECK_CUDA(cudaMemcpyAsync(vc, hvc.data(), hvc.size() * 2, cudaMemcpyHostToDevice, stream));
  CHECK_CUDA(cudaMemsetAsync(lengths, 0, sizeof(std::int32_t) * kB, stream));

  // Quantize the history into the cache, then attend with the Taylor2 correction.
  kvq::AppendArguments app;
  app.cache = cache;
  app.k = kvq::Tensor4::contiguous(k, kvq::DType::kBFloat16, kCached, kHkv, kD);
  app.v = kvq::Tensor4::contiguous(v, kvq::DType::kBFloat16, kCached, kHkv, kD);
  app.num_tokens = kCached;
  app.lengths = lengths;
  app.max_cache_length = 0;
  CHECK_KVQ(kvq::quantize_append(layout, app, stream));

  kvq::AttentionArguments a;
  a.cache = cache;
  a.batch = kB;
  a.q_heads = kHq;
  a.num_q = kN;
  a.num_chunk = kN;
  a.q = kvq::Tensor4::contiguous(q, kvq::DType::kBFloat16, kN, kHq, kD);
  a.k_chunk = kvq::Tensor4::contiguous(kc, kvq::DType::kBFloat16, kN, kHkv, kD);
  a.v_chunk = kvq::Tensor4::contiguous(vc, kvq::DType::kBFloat16, kN, kHkv, kD);
  a.o = kvq::Tensor4::contiguous(o, kvq::DType::kBFloat16, kN, kHq, kD);
  a.cache_lengths = lengths;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  kvq::AttentionPlan<Layout, kvq::Correction::kTaylor2> plan;
  CHECK_KVQ(plan.initialize(layout, a));
  CHECK_KVQ(plan.run(a, stream));
  std::vector<std::uint16_t> got(hq.size());
  std::int32_t got_len = 0;
  CHECK_CUDA(cudaMemcpyAsync(got.data(), o, got.size() * 2, cudaMemcpyDeviceToHost, stream));
  CHECK_CUDA(cudaMemcpyAsync(&got_len, lengths, sizeof(got_len), cudaMemcpyDeviceToHost, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));

  // The CPU reference of both steps.
  std::vector<unsigned char> host_cache(static_cast<std::size_t>(layout.bytes()), 0);
  std::int32_t host_len = 0;
  CHECK_KVQ(kvq::reference::quantize_append(
      layout, host_cache.data(), &host_len,
      kvq::Tensor4::contiguous(const_cast<std::uint16_t*>(hk.data()), kvq::DType::kBFloat16, kCached, kHkv, kD),
      kvq::Tensor4::contiguous(const_cast<std::uint16_t*>(hv.data()), kvq::DType::kBFloat16, kCached, kHkv, kD), kCached));
  kvq::reference::AttentionArgs r;
  r.batch = kB;
  r.q_heads = kHq;
  r.num_q = kN;
  r.num_chunk = kN;
  r.q = kvq::Tensor4::contiguous(const_cast<std::uint16_t*>(hq.data()), kvq::DType::kBFloat16, kN, kHq, kD);
  r.k_chunk = kvq::Tensor4::contiguous(const_cast<std::uint16_t*>(hkc.data()), kvq::DType::kBFloat16, kN, kHkv, kD);
  r.v_chunk = kvq::Tensor4::contiguous(const_cast<std::uint16_t*>(hvc.data()), kvq::DType::kBFloat16, kN, kHkv, kD);
  r.cache_lengths = &host_len;
  r.scale = a.scale;
  r.correction = kvq::Correction::kTaylor2;
  std::vector<double> want(got.size());
  r.out = want.data();
  CHECK_KVQ(kvq::reference::attention(layout, host_cache.data(), r));

  double max_err = 0.0, max_ref = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    max_err = std::fmax(max_err, std::fabs(kvq::math::bf16_bits_to_float(got[i]) - want[i]));
    max_ref = std::fmax(max_ref, std::fabs(want[i]));
  }
  const bool ok = got_len == kCached && max_err <= 2e-2 * std::fmax(1.0, max_ref);
  std::printf("kvq %d.%d.%d consumer: %s kernel, cache length %d, max |o - reference| %.3g (max |reference| %.3g): %s\n",
              kvq::kVersionMajor, kvq::kVersionMinor, kvq::kVersionPatch, kvq::to_string(plan.path()), got_len, max_err,
              max_ref, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
