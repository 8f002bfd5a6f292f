// Host-side pieces of kvq::AttentionPlan (api/attention.cuh): argument checks, the kernel
// parameters of a call, which kernel reads a paged view's tiles, the chosen kernel and its
// split-KV plan.
#pragma once

#include <cmath>
#include <cstdint>

#include "kvq/api/attention_arguments.hpp"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/split.hpp"
#include "kvq/kernels/decode/kernel.cuh"
#include "kvq/kernels/sm80/attention.cuh"
#include "kvq/kernels/sm90/attention.cuh"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/layout/paged_layout.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"
#include "kvq/status.hpp"

namespace kvq {

namespace detail::attention {

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
inline bool aligned4(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 3u) == 0; }
inline bool strides_aligned(const Tensor4& t) {
  return t.batch_stride % 8 == 0 && t.token_stride % 8 == 0 && t.head_stride % 8 == 0;
}
inline bool strides_nonnegative(const Tensor4& t) {
  return t.batch_stride >= 0 && t.token_stride >= 0 && t.head_stride >= 0;
}

/// The checks of one call's arguments that need no device (see README's Status table).
template <class Layout>
Status check_arguments(const Layout& layout, const AttentionArguments& a) {
  if constexpr (layout::is_paged_view_v<Layout>) {
    const Status s = layout.check();
    if (s != Status::kSuccess) return s;
  }
  // Shapes and lengths.
  if (a.batch < 0 || a.q_heads <= 0 || a.num_q < 0 || a.num_chunk < 0) return Status::kErrorInvalidArgument;
  if (a.batch != layout.shape.batch || layout.shape.heads <= 0 || a.q_heads % layout.shape.heads != 0)
    return Status::kErrorInvalidArgument;
  if (a.max_cache_length < -1 || a.max_cache_length > layout.shape.capacity) return Status::kErrorInvalidArgument;
  if (!(a.scale > 0.0f) || !std::isfinite(a.scale)) return Status::kErrorInvalidArgument;
  if (a.mask != Mask::kNone && a.mask != Mask::kCausalLastSegment) return Status::kErrorInvalidArgument;
  if (a.splits < 0 || a.splits > kMaxAttentionSplits) return Status::kErrorInvalidArgument;
  if (a.q_heads > 65535 || a.batch > 65535) return Status::kErrorNotSupported;
  if (a.num_q > (std::int64_t{1} << 31) * 64) return Status::kErrorNotSupported;
  // Element types.
  if (a.q.dtype != DType::kBFloat16 && a.q.dtype != DType::kFloat16) return Status::kErrorNotSupported;
  const bool has_q = a.batch > 0 && a.num_q > 0;
  const bool has_chunk = a.batch > 0 && a.num_chunk > 0;
  if (has_q && a.o.dtype != a.q.dtype) return Status::kErrorInvalidArgument;
  if (has_chunk && (a.k_chunk.dtype != a.q.dtype || a.v_chunk.dtype != a.q.dtype)) return Status::kErrorInvalidArgument;
  if (Layout::kHasTail && a.cache_lengths != nullptr && layout.shape.tail_dtype != a.q.dtype)
    return Status::kErrorInvalidArgument;
  // Pointers and strides.
  if (has_q && (a.q.data == nullptr || a.o.data == nullptr)) return Status::kErrorInvalidArgument;
  if (has_chunk && (a.k_chunk.data == nullptr || a.v_chunk.data == nullptr)) return Status::kErrorInvalidArgument;
  if (a.cache_lengths != nullptr && a.cache == nullptr) return Status::kErrorInvalidArgument;
  if (!strides_nonnegative(a.q) || !strides_nonnegative(a.o) || !strides_nonnegative(a.k_chunk) ||
      !strides_nonnegative(a.v_chunk))
    return Status::kErrorInvalidArgument;
  // Alignment: 16-byte loads and 4-byte stores of 16-bit rows.
  if (has_q && (!aligned16(a.q.data) || !aligned16(a.o.data) || !strides_aligned(a.q) || !strides_aligned(a.o)))
    return Status::kErrorMisaligned;
  if (has_chunk && (!aligned16(a.k_chunk.data) || !aligned16(a.v_chunk.data) || !strides_aligned(a.k_chunk) ||
                    !strides_aligned(a.v_chunk)))
    return Status::kErrorMisaligned;
  if (a.cache != nullptr && !aligned16(a.cache)) return Status::kErrorMisaligned;
  if ((a.cache_lengths != nullptr && !aligned4(a.cache_lengths)) || (a.q_lengths != nullptr && !aligned4(a.q_lengths)) ||
      (a.chunk_lengths != nullptr && !aligned4(a.chunk_lengths)))
    return Status::kErrorMisaligned;
  if ((a.lse != nullptr && !aligned4(a.lse)) || (a.mass != nullptr && !aligned4(a.mass)) ||
      (a.error != nullptr && !aligned4(a.error)))
    return Status::kErrorMisaligned;
  return Status::kSuccess;
}

/// The kernel parameters of one call (both kernels take the same).
template <class Layout>
kernels::common::AttentionParams<Layout> make_params(const Layout& layout, const AttentionArguments& a) {
  kernels::common::AttentionParams<Layout> p{};
  p.layout = layout;
  if (a.cache != nullptr) {  // null: empty cache, never dereferenced
    const auto ptr = layout::CachePointers<Layout>::from_base(layout, const_cast<void*>(a.cache));
    p.k_codes = ptr.k_codes;
    p.k_meta = ptr.k_meta;
    p.v_codes = ptr.v_codes;
    p.v_meta = ptr.v_meta;
    p.k_tail = ptr.k_tail;
    p.v_tail = ptr.v_tail;
  }
  p.q = a.q.data;
  p.k_chunk = a.k_chunk.data;
  p.v_chunk = a.v_chunk.data;
  p.o = a.o.data;
  const Tensor4* t[4] = {&a.q, &a.k_chunk, &a.v_chunk, &a.o};
  std::int64_t* s[4] = {p.q_stride, p.k_stride, p.v_stride, p.o_stride};
  for (int i = 0; i < 4; ++i) {
    s[i][0] = t[i]->batch_stride;
    s[i][1] = t[i]->token_stride;
    s[i][2] = t[i]->head_stride;
  }
  p.cache_lengths = a.cache_lengths;
  p.q_lengths = a.q_lengths;
  p.chunk_lengths = a.chunk_lengths;
  p.num_q = a.num_q;
  p.num_chunk = a.num_chunk;
  p.max_cache_length = a.max_cache_length < 0 ? layout.shape.capacity : a.max_cache_length;
  if (a.cache == nullptr) p.max_cache_length = 0;
  p.q_heads = a.q_heads;
  p.q_per_kv = a.q_heads / layout.shape.heads;
  p.scale = a.scale;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  p.causal = a.mask == Mask::kCausalLastSegment ? 1 : 0;
  p.lse = a.lse;
  p.mass = a.mass;
  p.error = a.error;
  return p;
}

/// Whether a kernel of traits Tr reads the tiles of a paged view (any contiguous layout: true):
/// the mma.sync kernel needs tiles inside pages (page_tokens a multiple of kTileN); the Hopper
/// kernel also takes tiles of whole pages (kTileN a multiple of page_tokens), with metadata
/// pieces that start 16-byte aligned.
template <class Tr, class Layout>
bool paged_tiles_fit(const Layout& l, bool hopper) {
  if constexpr (layout::is_paged_view_v<Layout>) {
    const int pt = l.page_tokens();
    if (pt <= 0) return false;
    const bool aligned = (pt * Tr::kKMetaBytesPerToken) % 16 == 0 && (pt * Tr::kVMetaBytesPerToken) % 16 == 0;
    if (pt % Tr::kTileN == 0) return !hopper || aligned;
    return hopper && Tr::kTileN % pt == 0 && aligned;
  } else {
    (void)l, (void)hopper;
    return true;
  }
}

template <class Config>
constexpr bool is_sm90_config() {
  return kernels::sm90::IsConfig<Config>::value;
}

/// The kernel of (Layout, Mode, Config) for one element type, with its launch shape.
template <class Layout>
struct KernelChoice {
  using Kernel = void (*)(kernels::common::AttentionParams<Layout>);
  Kernel kernel = nullptr;
  int threads = 0;
  int rows = 0;
  int smem_bytes = 0;
  int chunk_map_tokens = 0;  ///< > 0: the kernel reads the chunk through TMA maps with boxes of this many tokens
  AttentionPath path = AttentionPath::kSm80;
  int tile_n = 0;  ///< key tokens per tile
};

/// The short-query kernel (AttentionPath::kShort).
template <class Layout>
struct ShortChoice {
  using Kernel = void (*)(kernels::decode::Params<Layout>);
  Kernel kernel = nullptr;
  int threads = 0;
  int smem_bytes = 0;
};

/// Split-KV of a plan: the splits of each CTA's key sequence, the combine of their partial
/// states and the num_q the workspace was sized for.
struct SplitPlan {
  using Combine = void (*)(kernels::decode::CombineParams);
  Combine combine = nullptr;
  int splits = 1;
  std::int64_t num_q = 0;
};

/// The combine of the splits' partial states for q's dtype.
template <class Layout>
SplitPlan::Combine combine_kernel(DType dtype) {
  constexpr int kD = Layout::kHeadDim;
  return dtype == DType::kBFloat16 ? &kernels::decode::combine_kernel<kD, DType::kBFloat16>
                                   : &kernels::decode::combine_kernel<kD, DType::kFloat16>;
}

/// Points p's split-KV fields at the workspace (splits x rows: O, then LSE, then masses).
template <class Layout>
void set_workspace(kernels::common::AttentionParams<Layout>& p, void* workspace, int splits, const AttentionArguments& a) {
  const std::int64_t rows = static_cast<std::int64_t>(a.batch) * a.q_heads * a.num_q;
  auto* ws = static_cast<float*>(workspace);
  p.splits = splits;
  p.ws_o = ws;
  p.ws_lse = ws + splits * rows * Layout::kHeadDim;
  p.ws_mass = p.ws_lse + splits * rows;
}

template <class Tr, class Layout>
KernelChoice<Layout> sm80_kernel() {
  return {&kernels::sm80::attention_kernel<Tr>, Tr::kThreads, Tr::kRows, Tr::kSmemBytes, 0, AttentionPath::kSm80, Tr::kTileN};
}
template <class Tr, class Layout>
KernelChoice<Layout> sm90_kernel() {
  return {&kernels::sm90::attention_kernel<Tr>, Tr::kThreads, Tr::kRows, Tr::kSmemBytes, Tr::kChunkMapTokens,
          AttentionPath::kSm90, Tr::kTileN};
}

}  // namespace detail::attention

}  // namespace kvq
