// The GPU quantize-and-append kernel behind kvq::quantize_append
// (include/kvq/api/quantize_append.cuh). Codes, metadata and tail bytes are bit
// identical to kvq::reference::quantize_append, the definition of the operation.
//
// Work. The stream of a (batch entry, kv head) is [its key tail (len % Tk tokens,
// PerChannel keys only) ; the chunk]; its first `full` tokens (a multiple of Tk) are
// quantized at cache positions quantized_length(len) + s, the rest become the new tail.
// One block quantizes one tile: kTileRows consecutive stream tokens of one (b, h) (32 for
// PerToken keys; max(G, 32) for PerChannel keys, i.e. whole key groups), on a grid
// (tile, head, batch entry), tiles fastest, so that consecutive blocks write consecutive
// cache bytes. No persistent loop: every thread loads its elements with 16-byte loads
// straight into registers (8 loads in flight per thread; the unaligned-input scalar path is
// a separate branch, never predicated into the vector one) and the grid is large.
//
//   Segments   A thread owns 32 elements (4 chunks of 8) of a row of V, and of K when keys
//              are PerToken. With an even number of lanes per row the two lanes of a pair
//              interleave their chunks, so that every 16-byte load of a warp reads whole
//              32-byte sectors (SegmentPlan). A group spans 1 to 16 lanes: min/max by xor
//              shuffles. The thread encodes its own 4 chunks; with 2-bit codes and pairs, one
//              shuffle assembles the words; one 8-byte store per thread (INT2).
//   Tasks      A group spanning >= 2 lanes has its (min, max) staged in shared memory by its
//              first lane; after a barrier one thread per group (a task) computes the
//              metadata (to the cache) and the encoder (to shared memory), instead of every
//              lane of the group; after a second barrier the lanes read their encoders.
//              Groups inside one lane (G < 32, or 16 with an odd number of lanes per row) are
//              handled by their lane alone, with no barrier (Traits::kKeyShared,
//              kValueShared), and so are value groups whose tasks would not all have a thread
//              of their own.
//   PerChannel A thread owns 8 channels (one 16-byte chunk) of 4·kRounds consecutive tokens
//   keys       of one key group. Its partial min/max per channel go to shared memory; the
//              tasks then include one thread per (key group, channel), which folds them in
//              token order. With 2-bit codes a token's word covers two chunks, i.e. two
//              adjacent lanes: one shuffle assembles the words. The values of the tile's tokens
//              are segments as above (with their own metadata and codes before the first
//              barrier when they are not tasks). The rows a tile reads depend on the old tail:
//              with one round and 16-byte loads they are loaded as for an empty tail before the
//              length is read, and loaded again only when the tail is not empty.
//   Tail       The block of tile 0 of a (b, h) (the only one that reads the old tail) writes
//              the new tail after a barrier, once every read of the old tail is done.
//   Rotation   Rotated-key layouts rotate each key row in float where the kernel holds it
//              (rotation.cuh): the D/32 lanes of a PerToken row, or the D/8 lanes holding the
//              chunks of 4 PerChannel rows (D <= 256), exchange elements by xor shuffles;
//              statistics and codes then run on the 32 rotated floats of a thread (float
//              min/max instead of packed pairs; PerChannel partials as floats). Tail tokens
//              are rotated from their stored values; the new tail is written unrotated. These
//              kernels get 80 registers (Traits::kMinBlocks; more for one-warp blocks).
// The lengths are increased by a second, one-block kernel in the same stream once every
// block has read them (a programmatic dependent launch on sm_90).
//
// Exactness (the element math of include/kvq/math, bit for bit):
//  - statistics: NaN-propagating packed min/max (min.NaN.bf16x2 / .f16x2) give a segment's
//    exact min and max and make them non-finite iff an element is; the only freedom they
//    have is the sign of a zero minimum, which the reference takes from the first zero of
//    the group (GroupStats::add keeps the first of equal values): a segment whose minimum
//    is zero rescans itself for its first zero and its index (rare). Partials are then
//    combined keeping the smaller min and, of equal minima, the one whose first zero comes
//    first, with NaN-propagating maxima; a group whose min and max are both zero (all zeros)
//    takes max = min, as the reference does. finite = isfinite(min) && isfinite(max). See
//    combine() and stats_of().
//  - metadata: the operations of math::make_group_meta and encoder_of, with the fp16/bf16
//    directed roundings and conversions done by cvt instructions on sm_90 (exact for every
//    non-NaN input: DeviceScale, group_meta).
//  - codes: enc = math::make_encoder(step, zero) once per group. When 1/step is finite and
//    positive (every finite group with a step in [2^-128, FLT_MAX]) an element x of the
//    group has x >= zero and q = (x - zero)·(1/step) in [-0, L(1 + 2^-20)] (proof at
//    fast_code_bits), so both clamps of math::encode are identities for the rounding and
//    the code is the low bits of q + 1.5·2^23: FADD, FMUL, FADD per element, and the codes
//    of a word are summed with their shifts, the magic bits subtracted once per word. Any
//    other group (NaN/Inf elements, zero or infinite step, step below 2^-128) goes through
//    math::encode itself (per lane, uniform per group).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/loads.cuh"
#include "kvq/kernels/quantize/per_channel.cuh"
#include "kvq/kernels/quantize/per_token.cuh"
#include "kvq/kernels/quantize/rotation.cuh"
#include "kvq/kernels/quantize/traits.cuh"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

/// Quantizes tile `tile` of (b, h): a grid (tiles_per_head, heads, batch) when p.grid_3d, else a
/// 1D grid of batch · heads · tiles_per_head blocks, tile fastest; Traits::kThreads
/// threads per block.
/// kMinBlocks: resident blocks per SM asked of ptxas (the register budget); the default gives
/// at most 64 registers.
template <class Layout, DType kIn, int kMinBlocks = Traits<Layout>::kMinBlocks>
__global__ void __launch_bounds__(Traits<Layout>::kThreads, kMinBlocks)
    quantize_append_kernel(const __grid_constant__ Params<Layout> p) {
  using Tr = Traits<Layout>;
  static_assert(kIn == DType::kBFloat16 || kIn == DType::kFloat16, "inputs are bf16 or fp16");
  if constexpr (Tr::kSupported) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Lets update_lengths_kernel be scheduled early; it still waits for this grid to finish.
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    std::int64_t tile;
    int b, h;
    if (p.grid_3d) {  // (tile, head, batch entry): no division
      tile = blockIdx.x;
      h = static_cast<int>(blockIdx.y);
      b = static_cast<int>(blockIdx.z);
    } else {
      const std::int64_t bh = blockIdx.x / p.tiles_per_head;
      tile = blockIdx.x - bh * p.tiles_per_head;
      b = static_cast<int>(bh / p.layout.shape.heads);
      h = static_cast<int>(bh - static_cast<std::int64_t>(b) * p.layout.shape.heads);
    }
    const std::int64_t s0 = tile * Tr::kTileRows;
    if constexpr (Tr::kKeyPerChannel) {
      // The rows of a tile depend on the old key tail, i.e. on the length. With 16-byte loads and
      // one round, they are loaded as for an empty tail while the length is read, and used when
      // the tail is indeed empty (else loaded again).
      std::uint32_t kd[16], vx[16];
      const bool early = Tr::kRounds == 1 && p.vector_loads;
      if (early) load_channel_tile<true>(p, empty_tail_head(p, b, h), s0, kd, vx);
      const Head hd = make_head(p, b, h);
      if (!hd.ok) return;  // block-uniform: the capacity guard
      __shared__ __align__(16) unsigned char smem[Tr::kSmemBytes];
      if (s0 < hd.full) per_channel_tile<Layout, kIn>(p, hd, s0, smem, early && hd.tail == 0, kd, vx);
      // Every block of a fitting entry ends after key_mean_kernel: update_lengths_kernel waits for this grid only.
      if constexpr (Layout::kCenteredKeys) wait_for_key_mean();
      if (tile == 0) {
        __syncthreads();  // every read of the old tail (tile 0 only) is done
        write_new_tail<Layout, kIn>(p, hd);
      }
    } else {
      // PerToken keys: no tail, so the rows read do not depend on the lengths: the loads are
      // issued before the length is read.
      const int tid = static_cast<int>(threadIdx.x);
      const int row = tid / Tr::kSegsPerRow, q = tid % Tr::kSegsPerRow;
      const std::int64_t s = s0 + row;
      const bool valid = s < p.num_tokens;
      Head rows{};
      rows.b = b;
      rows.h = h;
      std::uint32_t kx[16], vx[16];
      std::uint32_t kmask[Layout::kRotatedKeys ? 16 : 1];  // rotated keys: the segment's sign masks (a small table)
      if constexpr (Layout::kRotatedKeys) load_segment_sign_masks<Tr::kHeadDim>(tid & 31, kmask);
      if (p.vector_loads) {
        load_segment<true>(p, rows, true, s, q, valid, kx);
        load_segment<true>(p, rows, false, s, q, valid, vx);
      } else {
        load_segment<false>(p, rows, true, s, q, valid, kx);
        load_segment<false>(p, rows, false, s, q, valid, vx);
      }
      const Head hd = make_head(p, b, h);
      if (!hd.ok) return;  // block-uniform: the capacity guard
      __shared__ __align__(16) unsigned char smem[Tr::kSmemBytes];
      if constexpr (Layout::kCenteredKeys) {
        float kr[32];  // R·(k − μ)
        wait_for_key_mean();  // also keeps update_lengths_kernel after key_mean_kernel
        rotate_key_segment<Tr::kHeadDim, kIn, true>(kx, kmask, tid & 31, kr, p.cache.k_mean + p.layout.k_mean_index(b, h, 0));
        per_token_tile<Layout, kIn>(p, hd, s0, row, q, valid, kr, vx, smem);
      } else if constexpr (Layout::kRotatedKeys) {
        float kr[32];  // R·k: the row's lanes are in this warp
        rotate_key_segment<Tr::kHeadDim, kIn>(kx, kmask, tid & 31, kr);
        per_token_tile<Layout, kIn>(p, hd, s0, row, q, valid, kr, vx, smem);
      } else {
        per_token_tile<Layout, kIn>(p, hd, s0, row, q, valid, kx, vx, smem);
      }
    }
  }
}

/// lengths[b] += num_tokens for every batch entry the append fitted (the same guard as
/// quantize_append_kernel). Launched after it in the same stream; on sm_90 as a
/// programmatic dependent launch that waits for the whole quantize grid first.
template <class Int = std::int32_t>
__global__ void update_lengths_kernel(Int* lengths, int batch, std::int64_t num_tokens, std::int64_t capacity,
                                      std::uint32_t* error) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  for (int b = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); b < batch; b += static_cast<int>(gridDim.x * blockDim.x)) {
    const std::int64_t len = lengths[b];
    if (len >= 0 && len + num_tokens <= capacity) {
      lengths[b] = static_cast<Int>(len + num_tokens);
    } else if (error != nullptr) {  // the entry was left untouched: kvq::AppendError bits
      atomicOr(error, len < 0 ? 2u : 1u);
    }
  }
}

/// update_lengths_kernel for a paged view: an entry is also left at its length, with
/// kvq::kAppendErrorPage (4) reported, when a table column the append writes holds no page of
/// the pool (quantize_append_kernel skipped it).
template <class View>
__global__ void update_lengths_paged_kernel(const __grid_constant__ View view, std::int32_t* lengths, int batch,
                                            std::int64_t num_tokens, std::uint32_t* error) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  for (int b = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); b < batch; b += static_cast<int>(gridDim.x * blockDim.x)) {
    const std::int64_t len = lengths[b];
    std::uint32_t bits = 0;
    if (len < 0) bits = 2u;
    else if (len + num_tokens > view.shape.capacity) bits = 1u;
    else if (!append_pages_ok(view, b, len, num_tokens)) bits = 4u;
    if (bits == 0) lengths[b] = static_cast<std::int32_t>(len + num_tokens);
    else if (error != nullptr) atomicOr(error, bits);
  }
}

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
