// Key rotation of the quantize-append kernel (Layout::kRotatedKeys): math::hadamard_rotate
// of every key token, bit for bit, on the rows as the kernel already holds them, so that
// statistics and codes start from the rotated floats.
//
// The arithmetic of math/rotation.hpp only fixes, per element, the signs, the stage order
// h = 1, 2, ..., D/2 (bit b = log2 h of the row index) and the final rounded product; which
// thread holds which element is free. A stage on a bit held within a lane is a butterfly
// of two registers; a stage on a bit of the lane index is one xor shuffle per element, the
// lane whose bit is clear (the lower row index) computing a + b, the other a − b.
//   PerToken segments (SegmentPlan, pairs): local element l of lane q is row element
//     64·(q>>1) + 16·(l>>3) + 8·(q&1) + (l&7): row bits 0-2, 4-5 are local bits 0-2, 3-4;
//     row bit 3 is lane bit 0, row bits 6.. are lane bits 1...
//     D = 32 (one lane per row, no pairs): all five bits are local.
//   PerChannel chunks: a thread holds channels 8c .. 8c + 7 of 4 tokens (local element
//     8j + i: channel 8c + i of token j); row bits 0-2 are local, bits 3.. are lane bits of
//     c, i.e. a row spans D/8 consecutive lanes (D <= 256: one warp).
// Cost (per element of a lane): the signs are one XOR per packed pair (the lane's masks come
// from a table, loaded with the inputs), a lane stage is one shuffle and one FFMA
// (fma(±1, own, other) is exactly other ± own, rounded once), a local stage one FADD.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/statistics.cuh"
#include "kvq/math/rotation.hpp"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

/// Sign masks of packed pairs: bit 15 (bit 31) of word w of lane q is set when the sign of
/// the lane's local element 2w (2w + 1) is −1; x ^ mask flips those elements (exact, bf16 and
/// fp16 alike). Segments: lane q of a row (SegmentPlan<·, D>), words 0..15; chunks: lane c
/// (channels 8c .. 8c + 7), words 0..3.
template <int kLanes, int kWords>
struct SignMaskTable {
  alignas(16) std::uint32_t w[kLanes][kWords];
};

/// Row element of local element l of lane q of a segment (SegmentPlan<·, D>::row_element).
template <int D>
KVQ_HOST_DEVICE constexpr int segment_row_element(int q, int l) {
  return D == 32 ? l : 64 * (q >> 1) + 16 * (l >> 3) + 8 * (q & 1) + (l & 7);
}

template <int D>
KVQ_HOST_DEVICE constexpr SignMaskTable<D / 32, 16> make_segment_sign_masks() {
  SignMaskTable<D / 32, 16> t{};
  for (int q = 0; q < D / 32; ++q)
    for (int w = 0; w < 16; ++w) {
      std::uint32_t m = 0;
      for (int h = 0; h < 2; ++h)
        if (math::rotation_sign_negative(segment_row_element<D>(q, 2 * w + h))) m |= 0x8000u << (16 * h);
      t.w[q][w] = m;
    }
  return t;
}

template <int D>
KVQ_HOST_DEVICE constexpr SignMaskTable<D / 8, 4> make_chunk_sign_masks() {
  SignMaskTable<D / 8, 4> t{};
  for (int c = 0; c < D / 8; ++c)
    for (int w = 0; w < 4; ++w) {
      std::uint32_t m = 0;
      for (int h = 0; h < 2; ++h)
        if (math::rotation_sign_negative(8 * c + 2 * w + h)) m |= 0x8000u << (16 * h);
      t.w[c][w] = m;
    }
  return t;
}

template <int D>
__device__ const SignMaskTable<D / 32, 16> kSegmentSignMasks = make_segment_sign_masks<D>();
template <int D>
__device__ const SignMaskTable<D / 8, 4> kChunkSignMasks = make_chunk_sign_masks<D>();

/// The sign masks of the segment of lane `lane` (the lanes of a row are the aligned group of
/// D/32 lanes around it): four 16-byte loads of a small table (D = 32: constants, no load).
/// Issue them with the input loads; rotate_key_segment uses them.
template <int D>
KVQ_DEVICE void load_segment_sign_masks(int lane, std::uint32_t (&m)[16]) {
  if constexpr (D == 32) {
    constexpr SignMaskTable<1, 16> t = make_segment_sign_masks<32>();
#pragma unroll
    for (int w = 0; w < 16; ++w) m[w] = t.w[0][w];
  } else {
    const auto* src = reinterpret_cast<const uint4*>(kSegmentSignMasks<D>.w[lane & (D / 32 - 1)]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint4 v = __ldg(src + j);
      m[4 * j] = v.x, m[4 * j + 1] = v.y, m[4 * j + 2] = v.z, m[4 * j + 3] = v.w;
    }
  }
}

/// The sign masks of the chunk of lane `lane` (channels 8c .. 8c + 7, c = lane mod D/8): one
/// 16-byte load.
template <int D>
KVQ_DEVICE uint4 load_chunk_sign_masks(int lane) {
  return __ldg(reinterpret_cast<const uint4*>(kChunkSignMasks<D>.w[lane & (D / 8 - 1)]));
}

/// The stage of a row bit held as local bit kBit: (a, b) -> (a + b, a − b) for every local
/// pair (l, l + 2^kBit), l with the bit clear.
template <int kBit, int N>
KVQ_DEVICE void local_stage(float (&x)[N]) {
  constexpr int h = 1 << kBit;
#pragma unroll
  for (int l = 0; l < N; ++l) {
    if ((l & h) == 0) {
      const float a = x[l], b = x[l + h];
      x[l] = a + b;
      x[l + h] = a - b;
    }
  }
}

/// The stage of a row bit held as lane bit m (a power of two): every lane of the warp calls it.
/// The lane whose bit is clear holds a and computes a + b = fma(1, a, b); the other holds b and
/// computes a − b = fma(−1, b, a): the product by ±1 is exact and the sum is rounded once, so
/// both are bit-identical to the float addition and subtraction (signed zeros included).
template <int N>
KVQ_DEVICE void lane_stage(float (&x)[N], int lane, int m) {
  const float s = (lane & m) != 0 ? -1.0f : 1.0f;
#pragma unroll
  for (int l = 0; l < N; ++l) {
    const float other = __shfl_xor_sync(0xffffffffu, x[l], m);
    x[l] = __fmaf_rn(s, x[l], other);
  }
}

/// The final multiplication by c: the rounded product (never contracted into a later operation).
template <int D, int N>
KVQ_DEVICE void scale_rows(float (&x)[N]) {
  constexpr float c = math::rotation_scale<D, float>();
#pragma unroll
  for (int l = 0; l < N; ++l) x[l] = __fmul_rn(x[l], c);
}

/// Packed pairs with the sign masks applied -> floats (exact): out[l] = s_l · element l.
template <DType kIn, int N>
KVQ_DEVICE void unpack_signed_floats(const std::uint32_t (&x)[N / 2], const std::uint32_t* mask, float (&out)[N]) {
#pragma unroll
  for (int w = 0; w < N / 2; ++w) {
    const std::uint32_t y = x[w] ^ mask[w];
    out[2 * w] = lo<kIn>(y);
    out[2 * w + 1] = hi<kIn>(y);
  }
}

/// Centered keys: out[l] = s_l · (element l − mean[l % M]), the subtraction rounded once, then
/// the sign flipped (exact; flipping before subtracting would change the sign of exact zeros).
template <DType kIn, int N, int M>
KVQ_DEVICE void unpack_centered_signed_floats(const std::uint32_t (&x)[N / 2], const std::uint32_t* mask, const float* mean,
                                              float (&out)[N]) {
#pragma unroll
  for (int w = 0; w < N / 2; ++w) {
    const float a = __fsub_rn(lo<kIn>(x[w]), mean[(2 * w) % M]);
    const float b = __fsub_rn(hi<kIn>(x[w]), mean[(2 * w + 1) % M]);
    out[2 * w] = __uint_as_float(__float_as_uint(a) ^ (mask[w] << 16));
    out[2 * w + 1] = __uint_as_float(__float_as_uint(b) ^ (mask[w] & 0x80000000u));
  }
}

/// Centered keys, before the first read of μ: μ of an empty entry is written by
/// key_mean_kernel, of which the quantize kernel is a programmatic dependent on sm_90.
KVQ_DEVICE void wait_for_key_mean() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// μ of the 4 chunks of lane q of a segment (SegmentPlan<·, D>): mean[8j + i] = μ of row element
/// 8·chunk(q, j) + i. Plain loads: μ may have been written by the grid this one depends on.
template <int D>
KVQ_DEVICE void load_segment_mean(const float* row_mean, int q, float (&mean)[32]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int l = 8 * j;
    const auto* src = reinterpret_cast<const float4*>(row_mean + (segment_row_element<D>(q, l)));
    const float4 a = src[0], b = src[1];
    mean[l] = a.x, mean[l + 1] = a.y, mean[l + 2] = a.z, mean[l + 3] = a.w;
    mean[l + 4] = b.x, mean[l + 5] = b.y, mean[l + 6] = b.z, mean[l + 7] = b.w;
  }
}

/// μ of the 8 channels 8c .. 8c + 7 of a chunk.
KVQ_DEVICE void load_chunk_mean(const float* row_mean, int c, float (&mean)[8]) {
  const auto* src = reinterpret_cast<const float4*>(row_mean + 8 * c);
  const float4 a = src[0], b = src[1];
  mean[0] = a.x, mean[1] = a.y, mean[2] = a.z, mean[3] = a.w;
  mean[4] = b.x, mean[5] = b.y, mean[6] = b.z, mean[7] = b.w;
}

/// R·k of the key row whose segment lane q holds (SegmentPlan<·, D>): every lane of the warp
/// calls it; the lanes of a row are the aligned group of D/32 lanes around `lane`; `masks`:
/// load_segment_sign_masks<D>(lane). kCentered: R·(k − μ), `row_mean` = μ[b][h] (D floats).
template <int D, DType kIn, bool kCentered = false>
KVQ_DEVICE void rotate_key_segment(const std::uint32_t (&kx)[16], const std::uint32_t (&masks)[16], int lane, float (&out)[32],
                                   const float* row_mean = nullptr) {
  static_assert(math::rotation_supports(D), "rotated keys need a power-of-two head dim in [32, 512]");
  if constexpr (kCentered) {
    float mean[32];
    load_segment_mean<D>(row_mean, lane & (D / 32 - 1), mean);
    unpack_centered_signed_floats<kIn, 32, 32>(kx, masks, mean, out);
  } else {
    unpack_signed_floats<kIn, 32>(kx, masks, out);
  }
  if constexpr (D == 32) {
    local_stage<0>(out);
    local_stage<1>(out);
    local_stage<2>(out);
    local_stage<3>(out);
    local_stage<4>(out);
  } else {
    constexpr int kLanesPerRow = D / 32;
    local_stage<0>(out);
    local_stage<1>(out);
    local_stage<2>(out);
    lane_stage(out, lane, 1);
    local_stage<3>(out);
    local_stage<4>(out);
#pragma unroll
    for (int m = 2; m < kLanesPerRow; m *= 2) lane_stage(out, lane, m);
  }
  scale_rows<D>(out);
}

/// R·k of 4 key rows of which this thread holds channels 8c .. 8c + 7 (d[4j + w]: pair w of
/// token j, as load_key_round gives them); out[8j + i] = rotated channel 8c + i of token j.
/// Every lane of the warp calls it; a row spans the aligned group of D/8 lanes around `lane`;
/// `masks`: load_chunk_sign_masks<D>(lane). kCentered: R·(k − μ), `mean` = μ of the 8 channels
/// (load_chunk_mean).
template <int D, DType kIn, bool kCentered = false>
KVQ_DEVICE void rotate_key_chunks(const std::uint32_t (&d)[16], uint4 masks, int lane, float (&out)[32],
                                  const float* mean = nullptr) {
  static_assert(math::rotation_supports(D) && D <= 256, "PerChannel rotated keys need a row within a warp (D <= 256)");
  constexpr int kLanesPerRow = D / 8;
  const std::uint32_t m[16] = {masks.x, masks.y, masks.z, masks.w, masks.x, masks.y, masks.z, masks.w,
                               masks.x, masks.y, masks.z, masks.w, masks.x, masks.y, masks.z, masks.w};
  if constexpr (kCentered) unpack_centered_signed_floats<kIn, 32, 8>(d, m, mean, out);
  else unpack_signed_floats<kIn, 32>(d, m, out);
  local_stage<0>(out);
  local_stage<1>(out);
  local_stage<2>(out);
#pragma unroll
  for (int m2 = 1; m2 < kLanesPerRow; m2 *= 2) lane_stage(out, lane, m2);
  scale_rows<D>(out);
}

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
