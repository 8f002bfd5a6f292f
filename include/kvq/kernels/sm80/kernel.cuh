// The mma.sync attention kernel (sm_80+): one CTA per (128 query rows, q head, batch entry)
// attends to [quantized cache ; cache tail ; current chunk] in one pass.
//
// Pipeline (one __syncthreads per tile). Tiles 0..n_qtiles-1 cover the quantized cache,
// the rest [tail ; chunk]. Iteration n:
//   barrier            tile n is in K/V buffer n%2; buffer (n+1)%2 is free; packed tile n+1 landed
//   issue              cp.async of packed tile n+kStages-1 (ring slot of tile n-1), or of the
//                      unquantized tile n+1 straight into buffer (n+1)%2
//   dequantize         packed tile n+1 -> buffer (n+1)%2 (+ correction coefficients / tables)
//   compute            S = Q K^T, correction, mask, online softmax, O += P V on buffer n%2
//   wait               for the packed tile n+2 (or the unquantized tile n+1)
// so the dequantization of the next tile overlaps the tensor-core work of this one
// across warps, and the packed codes arrive kStages-2 tiles ahead.
// Rotated keys: the quantized tiles are scored and corrected with R·q, [tail ; chunk] with
// q (rotate_q_rows in the prologue, reload_q_fragments at tile n_qtiles; sm80/rotation.cuh).
// Centered keys: the rows' running max takes q·μ after the quantized tiles (add_key_mean_to_max).
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/correction.cuh"
#include "kvq/kernels/common/epilogue.cuh"
#include "kvq/kernels/common/masks.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/softmax.cuh"
#include "kvq/kernels/common/traits.cuh"
#include "kvq/kernels/common/warp_state.cuh"
#include "kvq/kernels/sm80/correction.cuh"
#include "kvq/kernels/sm80/dequant.cuh"
#include "kvq/kernels/sm80/load.cuh"
#include "kvq/kernels/sm80/mma.cuh"
#include "kvq/kernels/sm80/rotation.cuh"
#include "kvq/kernels/sm80/smem.cuh"
#include "kvq/kernels/sm80/traits.cuh"

namespace kvq::kernels::sm80 {

/// Compute step of one quantized tile (buffer buf): scores, correction, mask, softmax, PV.
/// kMasked: the tile ends past the quantized length (only the last quantized tile).
template <class Tr, bool kMasked>
KVQ_DEVICE void compute_quantized_tile(const common::AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c,
                                       common::WarpState<Tr>& st, int n, int buf, int warp, int lane) {
  if constexpr (Tr::kCorrectionMma) {
    if (n % Tr::kSubTiles == 0) stage_correction_mma<Tr>(st, c, n / Tr::kSubTiles, lane);
  } else if constexpr (Tr::kCorrectionExact) {
    if (n % Tr::kSubTiles == 0) stage_correction_exact<Tr>(st, p, c, n / Tr::kSubTiles, warp, lane);
  }
  const std::uint32_t k_tile = arch::smem_u32(c.kv_buffer(buf));
  float s[Tr::kNTiles][4];
  qk_scores<Tr>(st, k_tile, lane, s);
  if constexpr (Tr::kFold) {
    fold_correction<Tr>(st, arch::smem_u32(c.smem + Tr::kOffFold + buf * Tr::kFoldTileBytes), lane, s);
  } else {
    common::correct_per_token<Tr>(st, c, buf, lane, s);
  }
  if constexpr (kMasked)
    common::mask_columns<Tr>(static_cast<int>(c.qlen - static_cast<std::int64_t>(n) * Tr::kTileN), lane, s);
  float rowsum[2];
  const bool track_mass = p.mass != nullptr;
  if constexpr (!Tr::kKeyPerToken && Tr::kCorrect) {
    // PerChannel keys: the correction is constant over each key group's columns, a bias of
    // the softmax (one FADD and one FFMA per row and group, none per score).
    common::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum, channel_bias<Tr>(st, n, lane));
  } else {
    common::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum);
  }
  if (track_mass) common::add_segment_mass<Tr>(st, true, 0, c.tlen, rowsum, s, lane);
  pv_accumulate<Tr>(st, k_tile + Tr::kTileBytes, lane, s);
}

/// Compute step of one unquantized tile of [tail ; chunk]: no correction; with kMasked,
/// columns past a row's limit (valid tokens, causal diagonal) are masked.
template <class Tr, bool kMasked>
KVQ_DEVICE void compute_plain_tile(const common::AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c,
                                   common::WarpState<Tr>& st, int n, int buf, int warp, int lane) {
  const std::uint32_t k_tile = arch::smem_u32(c.kv_buffer(buf));
  float s[Tr::kNTiles][4];
  qk_scores<Tr>(st, k_tile, lane, s);
  const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
  if constexpr (kMasked) {
    std::int64_t limit[2];
    common::plain_limits<Tr>(p, c, warp, lane, limit);
    common::mask_limits<Tr>(u0, limit, lane, s);
  }
  float rowsum[2];
  const bool track_mass = p.mass != nullptr;
  common::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum);
  if (track_mass) common::add_segment_mass<Tr>(st, false, u0, c.tlen, rowsum, s, lane);
  pv_accumulate<Tr>(st, k_tile + Tr::kTileBytes, lane, s);
}

/// Does any row of the warp need masking in unquantized tile n?
template <class Tr>
KVQ_DEVICE bool plain_tile_masked(const common::AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int n,
                                  int warp, int lane) {
  std::int64_t limit[2];
  common::plain_limits<Tr>(p, c, warp, lane, limit);
  const std::int64_t u_last = static_cast<std::int64_t>(n - c.n_qtiles + 1) * Tr::kTileN - 1;
  return __any_sync(0xffffffffu, u_last > limit[0] || u_last > limit[1]);
}

/// The kernel. Launch with Tr::kThreads threads, Tr::kSmemBytes of dynamic shared memory and
/// grid (ceil(num_q / Tr::kRows), q_heads, batch).
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    attention_kernel(const __grid_constant__ common::AttentionParams<typename Tr::Layout> p) {
  static_assert(common::TraitsProtocol<Tr>::value, "the traits the common device functions read");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int kS = Tr::kStages;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;

  CtaContext<Tr> c;
  if (!c.init(p, smem)) return;
  common::WarpState<Tr> st;
  st.init();

  // ---- prologue: Q, the first kStages-1 packed tiles, tile 0 -------------------------------
  PageCursor<Tr> pages;
  pages.init(p.layout, c.b, c.h, 0);
  init_fold_tiles<Tr>(c, tid);
  issue_q<Tr>(p, c, tid);
  arch::cp_async_commit();
#pragma unroll 1
  for (int m = 0; m < kS - 1; ++m) {
    if (m < c.n_qtiles) issue_packed<Tr>(p, c, m, tid, pages);
    arch::cp_async_commit();
  }
  if (c.n_qtiles == 0) {
    if (c.n_tiles > 0) issue_plain<Tr>(p, c, 0, 0, tid);
    arch::cp_async_commit();
    arch::cp_async_wait<0>();
  } else {
    arch::cp_async_wait<kS - 2>();  // Q and packed tile 0
  }
  __syncthreads();
  if constexpr (Tr::kRotatedKeys) {
    if (c.n_qtiles > 0) rotate_q_rows<Tr>(c, warp, lane);
  }
  load_q_fragments<Tr>(st, c, warp, lane);
  row_coefficients<Tr>(st, p.scale, lane);
  if (c.n_qtiles > 0) {
    dequant_tile<Tr>(c, 0, 0, tid);
    build_stage_tables<Tr>(p, c, 0, warp, lane);
  }
  arch::cp_async_wait<kS - 3>();  // packed tile 1
  // Q (which aliases K/V buffer 1) is in registers before the first barrier of the loop.

  // ---- main loop ---------------------------------------------------------------------------
#pragma unroll 1
  for (int n = 0; n < c.n_tiles; ++n) {
    __syncthreads();
    if constexpr (Tr::kRotatedKeys) {
      if (n == c.n_qtiles && n > 0) {
        reload_q_fragments<Tr>(st, p, c, warp, lane);
        if constexpr (Tr::kCenteredKeys) add_key_mean_to_max<Tr>(st, p, c, lane);
      }
    }
    const int buf = n & 1;
    if (n + kS - 1 < c.n_qtiles) issue_packed<Tr>(p, c, n + kS - 1, tid, pages);
    const bool next_plain = n + 1 < c.n_tiles && n + 1 >= c.n_qtiles;
    if (next_plain) issue_plain<Tr>(p, c, n + 1, buf ^ 1, tid);
    arch::cp_async_commit();
    if (n + 1 < c.n_qtiles) {
      dequant_tile<Tr>(c, n + 1, buf ^ 1, tid);
      if ((n + 1) % Tr::kSubTiles == 0) build_stage_tables<Tr>(p, c, (n + 1) / Tr::kSubTiles, warp, lane);
    }
    // Masked variants only for the tiles that need them (a real branch, not predication).
    if (n < c.n_qtiles) {
      if (static_cast<std::int64_t>(n + 1) * Tr::kTileN > c.qlen) {
        compute_quantized_tile<Tr, true>(p, c, st, n, buf, warp, lane);
      } else {
        compute_quantized_tile<Tr, false>(p, c, st, n, buf, warp, lane);
      }
    } else if (plain_tile_masked<Tr>(p, c, n, warp, lane)) {
      compute_plain_tile<Tr, true>(p, c, st, n, buf, warp, lane);
    } else {
      compute_plain_tile<Tr, false>(p, c, st, n, buf, warp, lane);
    }
    if (next_plain) {
      arch::cp_async_wait<0>();
    } else {
      arch::cp_async_wait<kS - 3>();
    }
  }
  arch::cp_async_wait<0>();
  if constexpr (Tr::kCenteredKeys) {
    // Quantized tiles only: the LSE needs the shifted max too.
    if (c.n_qtiles > 0 && c.n_tiles == c.n_qtiles) {
      reload_q_fragments<Tr>(st, p, c, warp, lane);
      add_key_mean_to_max<Tr>(st, p, c, lane);
    }
  }

  // ---- epilogue ----------------------------------------------------------------------------
  common::write_outputs<Tr>(p, c, st, warp, lane);
#else
  (void)p;
#endif
}

}  // namespace kvq::kernels::sm80
