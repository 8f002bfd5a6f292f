// The key mean μ of centered layouts (Layout::kCenteredKeys), launched before the quantize
// kernel in the same stream: for every batch entry whose length is 0 (and whose append fits,
// the quantize kernel's guard), μ[b][h][c] = (((0 + x_0) + x_1) + ... + x_{N−1}) / N in float,
// rounded to nearest, exactly as kvq::reference::quantize_append. Other entries are not
// touched.
//
// One block per item (b, h, 32 channels), in a grid-stride loop: its 8 warps load tiles of
// 256 tokens of the 32 channels (32 loads in flight per thread, double-buffered in shared
// memory) and its first warp sums them, one channel per lane, in token order. With no empty
// entry (the steady state) every block only reads lengths. On sm_90 the quantize kernel is
// its programmatic dependent and waits for it before reading μ.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/loads.cuh"
#include "kvq/kernels/quantize/statistics.cuh"
#include "kvq/kernels/quantize/traits.cuh"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

struct KeyMeanPlan {
  static constexpr int kThreads = 256;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kTileTokens = 256;
  static constexpr int kTokensPerThread = kTileTokens / kWarps;
  /// Items (b, h, 32 channels) of a cache.
  template <class Layout>
  static std::int64_t items(const Layout& l) {
    return static_cast<std::int64_t>(l.shape.batch) * l.shape.heads * (Layout::kHeadDim / 32);
  }
};

template <class Layout, DType kIn>
__global__ void __launch_bounds__(KeyMeanPlan::kThreads) key_mean_kernel(const __grid_constant__ Params<Layout> p) {
  using KP = KeyMeanPlan;
  static_assert(kIn == DType::kBFloat16 || kIn == DType::kFloat16, "inputs are bf16 or fp16");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  constexpr int kSlices = Layout::kHeadDim / 32;
  __shared__ std::uint16_t tile[2][KP::kTileTokens][32];
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const std::int64_t n = p.num_tokens;
  const std::int64_t items = static_cast<std::int64_t>(p.layout.shape.batch) * p.layout.shape.heads * kSlices;
  for (std::int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const std::int64_t bh = item / kSlices;
    const int slice = static_cast<int>(item - bh * kSlices);
    const int b = static_cast<int>(bh / p.layout.shape.heads);
    const int h = static_cast<int>(bh - static_cast<std::int64_t>(b) * p.layout.shape.heads);
    if (p.lengths[b] != 0 || n > p.layout.shape.capacity || !append_pages_ok(p.layout, b, 0, n)) continue;  // block-uniform
    const int c = 32 * slice + lane;
    const auto* src = static_cast<const std::uint16_t*>(p.k.data) + p.k.offset(b, 0, h, c);
    std::uint32_t x[KP::kTokensPerThread];
    auto load = [&](std::int64_t t0) {
#pragma unroll
      for (int i = 0; i < KP::kTokensPerThread; ++i) {
        const std::int64_t t = t0 + warp + KP::kWarps * i;
        x[i] = t < n ? __ldg(reinterpret_cast<const unsigned short*>(src + t * p.k.token_stride)) : 0u;
      }
    };
    float sum = 0.0f;
    load(0);
    for (std::int64_t t0 = 0, i = 0; t0 < n; t0 += KP::kTileTokens, ++i) {
      auto& buf = tile[i & 1];
#pragma unroll
      for (int j = 0; j < KP::kTokensPerThread; ++j) buf[warp + KP::kWarps * j][lane] = static_cast<std::uint16_t>(x[j]);
      // One barrier per tile: buffer i & 1 is written again only after the next barrier, which
      // the first warp reaches once it has summed it.
      __syncthreads();
      if (t0 + KP::kTileTokens < n) load(t0 + KP::kTileTokens);
      if (warp == 0) {
        const int count = n - t0 < KP::kTileTokens ? static_cast<int>(n - t0) : KP::kTileTokens;
#pragma unroll 8
        for (int t = 0; t < count; ++t) sum = __fadd_rn(sum, lo<kIn>(buf[t][lane]));
      }
    }
    if (warp == 0) p.cache.k_mean[p.layout.k_mean_index(b, h, c)] = __fdiv_rn(sum, static_cast<float>(n));
    __syncthreads();  // the next item's first tile overwrites the buffers
  }
}

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
