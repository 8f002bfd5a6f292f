// CPU reference of attention over [quantized cache ; cache tail ; current chunk]:
// full softmax, no tiling, float64 accumulation, every correction mode computed
// per element from its definition. The oracle for the GPU kernels.
//
// Rotated keys (Layout::kRotatedKeys): the quantized segment holds R·k, so each query
// row q (read as float, then widened) is rotated once, in float64
// (math::hadamard_rotate<D, double>), and the rotated row q' = R·q scores the quantized
// keys: (R·q)·(R·k) = q·k. The correction of a quantized key uses q'_j with the
// rotated key's steps Δ_j. The tail and the current chunk hold keys as given: they are
// scored with q exactly as for an unrotated layout. Centered keys (Layout::kCenteredKeys)
// hold R·(k − μ): a quantized key's score gets q·μ added (in float64, from the stored μ),
// (R·q)·R(k − μ) + q·μ = q·k.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvq/layout/cache_layout.hpp"
#include "kvq/math/correction.hpp"
#include "kvq/math/rotation.hpp"
#include "kvq/reference/quantize_append.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/status.hpp"

namespace kvq::reference {

/// Segments of the key sequence, in order.
enum Segment : int { kSegmentQuantized = 0, kSegmentTail = 1, kSegmentChunk = 2, kNumSegments = 3 };

/// Inputs and outputs of one reference attention call (all host memory).
struct AttentionArgs {
  int batch = 0;
  int q_heads = 0;                  ///< Hq, a multiple of the cache's kv heads
  std::int64_t num_q = 0;           ///< rows of q per batch entry (max over the batch)
  std::int64_t num_chunk = 0;       ///< tokens of the current chunk per batch entry (max)
  Tensor4 q;                        ///< [batch, num_q, q_heads, HeadDim]
  Tensor4 k_chunk;                  ///< [batch, num_chunk, kv heads, HeadDim]
  Tensor4 v_chunk;                  ///< [batch, num_chunk, kv heads, HeadDim]
  const std::int32_t* cache_lengths = nullptr;  ///< [batch] cached tokens; null = empty cache
  const std::int32_t* q_lengths = nullptr;      ///< [batch] valid query rows; null = num_q for all
  const std::int32_t* chunk_lengths = nullptr;  ///< [batch] valid chunk tokens; null = num_chunk for all
  float scale = 0.0f;               ///< softmax scale, usually 1/sqrt(HeadDim)
  Mask mask = Mask::kNone;
  Correction correction = Correction::kNone;
  /// Outputs. out: [batch, num_q, q_heads, HeadDim] contiguous; rows at or beyond a
  /// batch entry's q length are not written.
  double* out = nullptr;
  double* lse = nullptr;   ///< optional [batch, q_heads, num_q], natural log
  double* mass = nullptr;  ///< optional [batch, q_heads, num_q, kNumSegments]: softmax mass on each segment
};

/// The correction of the score of query row `q` against a quantized key whose
/// elements have steps `steps` (HeadDim values read from the cache): the sum over
/// elements of correction_term(scale · q_j · Δ_j / 2), from the definition.
template <int HeadDim>
double key_correction(const double* q, const float* steps, double scale, Correction mode) {
  if (mode == Correction::kNone) return 0.0;
  double corr = 0.0;
  for (int c = 0; c < HeadDim; ++c) corr += math::correction_term(mode, scale * q[c] * static_cast<double>(steps[c]) / 2.0);
  return corr;
}

/// Reference attention. Query head hq reads kv head hq / (q_heads / kv heads). With a
/// rotated-key layout the cached keys are scored with the rotated query (see the top).
/// With Mask::kCausalLastSegment, query i of a batch entry with nq queries and nc
/// chunk tokens sees chunk token j iff j <= i + (nc − nq) (aligned at the end), and
/// every cached token. A row that sees no key at all gets output 0 and LSE −inf.
template <class Layout>
[[nodiscard]] Status attention(const Layout& l, const void* cache, const AttentionArgs& a) {
  constexpr int D = Layout::kHeadDim;
  const int hkv = l.shape.heads;
  if (a.batch != l.shape.batch || a.q_heads <= 0 || a.q_heads % hkv != 0) return Status::kErrorInvalidArgument;
  if (a.num_q < 0 || a.num_chunk < 0 || a.out == nullptr) return Status::kErrorInvalidArgument;
  if (a.num_q > 0 && a.q.data == nullptr) return Status::kErrorInvalidArgument;
  if (a.num_chunk > 0 && (a.k_chunk.data == nullptr || a.v_chunk.data == nullptr)) return Status::kErrorInvalidArgument;
  if (a.cache_lengths != nullptr && cache == nullptr) return Status::kErrorInvalidArgument;
  const int group = a.q_heads / hkv;
  // Pointers into the cache are formed only when there is one (no arithmetic on null).
  const layout::CachePointers<Layout> p =
      cache ? layout::CachePointers<Layout>::from_base(l, const_cast<void*>(cache)) : layout::CachePointers<Layout>{};

  for (int b = 0; b < a.batch; ++b) {
    const std::int64_t len = a.cache_lengths ? a.cache_lengths[b] : 0;
    const std::int64_t nq = a.q_lengths ? a.q_lengths[b] : a.num_q;
    const std::int64_t nc = a.chunk_lengths ? a.chunk_lengths[b] : a.num_chunk;
    if (len < 0 || len > l.shape.capacity || nq < 0 || nq > a.num_q || nc < 0 || nc > a.num_chunk)
      return Status::kErrorInvalidArgument;
    const std::int64_t qlen = Layout::quantized_length(len);
    const std::int64_t tlen = Layout::tail_length(len);
    const std::int64_t nkeys = qlen + tlen + nc;

    for (int h = 0; h < hkv; ++h) {
      // Keys and values of this kv head, dequantized once, with their segment.
      std::vector<double> keys(nkeys * D), values(nkeys * D);
      std::vector<float> steps(qlen * D);  // key steps Δ of the quantized segment
      std::vector<int> seg(nkeys);
      for (std::int64_t t = 0; t < nkeys; ++t) {
        for (int c = 0; c < D; ++c) {
          double kx, vx;
          if (t < qlen) {
            kx = dequantized_key(l, cache, b, h, t, c, &steps[t * D + c]);
            vx = dequantized_value(l, cache, b, h, t, c);
          } else if (t < qlen + tlen) {
            const int i = static_cast<int>(t - qlen);
            kx = load_as_float(p.k_tail, l.shape.tail_dtype, l.tail_index(b, h, i, c));
            vx = load_as_float(p.v_tail, l.shape.tail_dtype, l.tail_index(b, h, i, c));
          } else {
            const std::int64_t j = t - qlen - tlen;
            kx = load_as_float(a.k_chunk.data, a.k_chunk.dtype, a.k_chunk.offset(b, j, h, c));
            vx = load_as_float(a.v_chunk.data, a.v_chunk.dtype, a.v_chunk.offset(b, j, h, c));
          }
          keys[t * D + c] = kx;
          values[t * D + c] = vx;
        }
        seg[t] = t < qlen ? kSegmentQuantized : t < qlen + tlen ? kSegmentTail : kSegmentChunk;
      }

      for (int hq = h * group; hq < (h + 1) * group; ++hq) {
        for (std::int64_t i = 0; i < nq; ++i) {
          double q[D], qc[D];  // qc scores the quantized keys: q, or R·q for rotated keys
          for (int c = 0; c < D; ++c) q[c] = qc[c] = load_as_float(a.q.data, a.q.dtype, a.q.offset(b, i, hq, c));
          if constexpr (Layout::kRotatedKeys) math::hadamard_rotate<D>(qc);
          double qmu = 0.0;  // q·μ, added to the quantized keys' scores of a centered layout
          if constexpr (Layout::kCenteredKeys)
            if (qlen > 0)
              for (int c = 0; c < D; ++c) qmu += q[c] * static_cast<double>(p.k_mean[l.k_mean_index(b, h, c)]);
          std::vector<double> s(nkeys);
          double smax = -std::numeric_limits<double>::infinity();
          for (std::int64_t t = 0; t < nkeys; ++t) {
            const bool visible = a.mask == Mask::kNone || seg[t] != kSegmentChunk || (t - qlen - tlen) <= i + (nc - nq);
            if (!visible) {
              s[t] = -std::numeric_limits<double>::infinity();
              continue;
            }
            const double* qt = seg[t] == kSegmentQuantized ? qc : q;
            double dot = seg[t] == kSegmentQuantized ? qmu : 0.0;
            for (int c = 0; c < D; ++c) dot += qt[c] * keys[t * D + c];
            s[t] = a.scale * dot;
            if (seg[t] == kSegmentQuantized) s[t] -= key_correction<D>(qc, &steps[t * D], a.scale, a.correction);
            smax = std::max(smax, s[t]);
          }
          double* o = a.out + ((b * a.num_q + i) * a.q_heads + hq) * D;
          double segmass[kNumSegments] = {0.0, 0.0, 0.0};
          double sum = 0.0;
          for (int c = 0; c < D; ++c) o[c] = 0.0;
          if (smax != -std::numeric_limits<double>::infinity()) {
            for (std::int64_t t = 0; t < nkeys; ++t) {
              const double w = std::exp(s[t] - smax);
              sum += w;
              segmass[seg[t]] += w;
              for (int c = 0; c < D; ++c) o[c] += w * values[t * D + c];
            }
            for (int c = 0; c < D; ++c) o[c] /= sum;
          }
          const std::int64_t row = (static_cast<std::int64_t>(b) * a.q_heads + hq) * a.num_q + i;
          if (a.lse) a.lse[row] = sum > 0.0 ? smax + std::log(sum) : -std::numeric_limits<double>::infinity();
          if (a.mass)
            for (int sgi = 0; sgi < kNumSegments; ++sgi) a.mass[row * kNumSegments + sgi] = sum > 0.0 ? segmass[sgi] / sum : 0.0;
        }
      }
    }
  }
  return Status::kSuccess;
}

/// The same through block tables (host tables): refuses a cache length whose pages are
/// not all listed and in the pool.
template <class Paged>
[[nodiscard]] Status attention(const layout::PagedView<Paged>& view, const void* cache, const AttentionArgs& a) {
  if (a.cache_lengths != nullptr) {
    if (view.tables == nullptr || a.batch != view.shape.batch) return Status::kErrorInvalidArgument;
    for (int b = 0; b < a.batch; ++b)
      if (!view.pages_valid(b, a.cache_lengths[b])) return Status::kErrorInvalidArgument;
  }
  return attention<layout::PagedView<Paged>>(view, cache, a);
}

}  // namespace kvq::reference
