// Loads and stores of the quantize-append kernel: 16-byte (or scalar) loads of input rows
// straight into registers, vector stores, and where the stream of one (batch entry, head)
// lands (Head).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/traits.cuh"
#include "kvq/math/float_bits.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

/// 8 elements at p (16-byte aligned when `vec`) as four packed pairs.
KVQ_DEVICE uint4 load_chunk(const std::uint16_t* p, bool vec) {
  if (vec) return __ldg(reinterpret_cast<const uint4*>(p));
  std::uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = static_cast<std::uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p) + 2 * i)) |
           (static_cast<std::uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p) + 2 * i + 1)) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

/// 8- and 16-byte global stores (p 8- or 16-byte aligned). Written in PTX: NVVM splits the
/// equivalent uint2/uint4 stores of this kernel into 32-bit stores.
KVQ_DEVICE void store_v2(std::uint32_t* p, std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(__cvta_generic_to_global(p)), "r"(a), "r"(b) : "memory");
#else
  p[0] = a, p[1] = b;
#endif
}
KVQ_DEVICE void store_v4(std::uint32_t* p, std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "r"(a), "r"(b), "r"(c), "r"(d)
               : "memory");
#else
  p[0] = a, p[1] = b, p[2] = c, p[3] = d;
#endif
}

/// 8 elements at p: one 16-byte load (kVec: p is 16-byte aligned) or 8 scalar loads.
template <bool kVec>
KVQ_DEVICE uint4 load16(const std::uint16_t* p) {
  if constexpr (kVec) return __ldg(reinterpret_cast<const uint4*>(p));
  else return load_chunk(p, false);
}

/// The element of a tail store: exactly store_from_float(load_as_float(x)) of the reference
/// (identity except that NaNs become the canonical NaN of the dtype).
template <DType kIn>
KVQ_DEVICE std::uint32_t round_trip_pair(std::uint32_t w) {
  std::uint32_t out = 0;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const auto x = static_cast<std::uint16_t>(w >> (16 * half));
    std::uint16_t y;
    if constexpr (kIn == DType::kBFloat16) y = math::float_to_bf16_bits_rn(math::bf16_bits_to_float(x));
    else y = math::float_to_half_bits_rn(math::half_bits_to_float(x));
    out |= static_cast<std::uint32_t>(y) << (16 * half);
  }
  return out;
}

/// The append of one (batch entry, head): where its stream lands.
struct Head {
  int b, h;
  std::int64_t tail;   ///< tokens in the key tail before this append
  std::int64_t qlen;   ///< quantized tokens before this append
  std::int64_t total;  ///< stream tokens: tail + num_tokens
  std::int64_t full;   ///< stream tokens in full key groups (quantized now)
  bool ok;             ///< the append fits (else nothing is written for this batch entry)
};

/// Paged views: whether every table column that the append of n tokens at length len writes
/// (tokens [quantized_length(len), len + n)) holds a page of the pool; contiguous layouts: true.
/// One thread, a loop over the columns (the lengths kernels).
template <class Layout>
KVQ_DEVICE bool append_pages_ok(const Layout& l, int b, std::int64_t len, std::int64_t n) {
  if constexpr (layout::is_paged_view_v<Layout>) {
    for (std::int64_t i = l.first_page(Layout::quantized_length(len)), e = l.end_page(len + n); i < e; ++i)
      if (!l.page_ok(b, i)) return false;
  } else {
    (void)l, (void)b, (void)len, (void)n;
  }
  return true;
}

/// The Head of (b, h). Every thread of the block calls it (paged views: the block checks the
/// table columns of the append together, one barrier).
template <class Layout>
KVQ_DEVICE Head make_head(const Params<Layout>& p, int b, int h) {
  Head hd{};
  hd.b = b;
  hd.h = h;
  const std::int64_t len = p.lengths[b];
  hd.ok = len >= 0 && len + p.num_tokens <= p.layout.shape.capacity;
  if constexpr (layout::is_paged_view_v<Layout>) {
    // A column outside the pool leaves the whole entry untouched (update_lengths_paged_kernel
    // reports it and keeps the length).
    bool bad = false;
    if (hd.ok) {
      const std::int64_t e = p.layout.end_page(len + p.num_tokens);
      for (std::int64_t i = p.layout.first_page(Layout::quantized_length(len)) + threadIdx.x; i < e; i += blockDim.x)
        bad = bad || !p.layout.page_ok(b, i);
    }
    hd.ok = __syncthreads_or(bad) == 0 && hd.ok;
  }
  if (!hd.ok) return hd;
  hd.tail = Layout::tail_length(len);
  hd.qlen = len - hd.tail;
  hd.total = hd.tail + p.num_tokens;
  hd.full = hd.total - hd.total % Layout::kKeyTokensPerGroup;
  return hd;
}

/// Element 0 of stream token s of K (is_k) or V: the old tail, then the chunk.
template <class Layout>
KVQ_DEVICE const std::uint16_t* row_src(const Params<Layout>& p, const Head& hd, bool is_k, std::int64_t s, bool& vec) {
  if (Layout::kHasTail && s < hd.tail) {
    vec = true;  // the tail region is 256-byte aligned and rows are multiples of 64 bytes
    const void* base = is_k ? p.cache.k_tail : p.cache.v_tail;
    return static_cast<const std::uint16_t*>(base) + p.layout.tail_index(hd.b, hd.h, static_cast<int>(s), 0);
  }
  vec = p.vector_loads;
  const Tensor4& x = is_k ? p.k : p.v;
  return static_cast<const std::uint16_t*>(x.data) + x.offset(hd.b, s - hd.tail, hd.h, 0);
}

/// The 4 chunks of lane q of stream token s (SegmentPlan::chunk), or zeros when !valid; kVec:
/// the inputs allow 16-byte loads (p.vector_loads; the tail always does), else scalar loads.
/// Callers branch on p.vector_loads once, outside, so that neither path is predicated into the other.
template <bool kVec, class Layout>
KVQ_DEVICE void load_segment(const Params<Layout>& p, const Head& hd, bool is_k, std::int64_t s, int q, bool valid,
                             std::uint32_t (&x)[16]) {
  using SP = SegmentPlan<typename Layout::VSpec, Layout::kHeadDim>;
  if (valid) {
    bool vec;
    const std::uint16_t* src = row_src(p, hd, is_k, s, vec);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint4 c = load16<kVec>(src + 8 * SP::chunk(q, j));
      x[4 * j] = c.x, x[4 * j + 1] = c.y, x[4 * j + 2] = c.z, x[4 * j + 3] = c.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 16; ++i) x[i] = 0u;
  }
}
template <class Layout>
KVQ_DEVICE void load_segment_any(const Params<Layout>& p, const Head& hd, bool is_k, std::int64_t s, int q, bool valid,
                                 std::uint32_t (&x)[16]) {
  if (p.vector_loads) load_segment<true>(p, hd, is_k, s, q, valid, x);
  else load_segment<false>(p, hd, is_k, s, q, valid, x);
}

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
