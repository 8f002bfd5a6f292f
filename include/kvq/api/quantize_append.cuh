// Host API of GPU quantize-and-append: appends a chunk of bf16/fp16 keys and values to a
// packed low-bit cache (layout/cache_layout.hpp), bit-identical to
// kvq::reference::quantize_append.
//
//   kvq::AppendArguments args;  // cache, k, v, num_tokens, device lengths, ...
//   kvq::AppendPlan<Layout> plan;
//   kvq::Status s = plan.initialize(layout, args);  // once: validates, queries the device
//   s = plan.run(args, stream);                     // per chunk: checks and launches
//   s = kvq::quantize_append(layout, args, stream); // both in one call
//
// Rotated-key layouts (Layout::kRotatedKeys) cache R·k (math/rotation.hpp) for every key token
// that is quantized, rotated on the device in float right before its quantization; the
// PerChannel key tail holds keys as given. Rotated PerChannel keys need HeadDim <= 256.
// Centered layouts (Layout::kCenteredKeys) cache R·(k − μ): run() first launches
// key_mean_kernel, which sets μ of every entry whose device length is 0 from this chunk's keys
// (the quantize kernel's guard applies), then the quantize kernel (on sm_90 its programmatic
// dependent, waiting for it before reading μ).
//
// Every entry point returns a Status and never throws, prints or exits; bad arguments
// are refused before any launch and nothing is written (README.md has the Status table).
// K and V pointers or strides that are not 16-byte (8-element) aligned are accepted: the
// kernel then reads them with scalar loads (slower, same results). num_tokens == 0 is a
// no-op that launches nothing.
//
// max_cache_length is a host-side upper bound on the device lengths (-1: unknown). The
// kernels also check each device length: a batch entry whose length is negative or whose
// length + num_tokens exceeds the capacity is left untouched (no byte written, length
// unchanged) and, where args.error is given, reported there (AppendError bits), so a
// wrong bound never makes the kernel write outside the cache and never drops a chunk
// silently.
//
// Paged caches: Layout = layout::PagedView<PagedCacheLayout<...>> (layout/paged_layout.hpp),
// the view bound to device block tables. The append writes each entry's tokens at its length
// through its table (filling the last listed page, then the next column's page), bit-identical
// to the reference's paged overload. The host checks the view (tables given, a stride of at
// least max_pages_per_entry columns, a valid paged shape); it cannot read device tables, so the
// kernels check the columns each entry's append writes: an entry with a column outside
// [0, num_pages) is left untouched (no byte written, length unchanged) and reported as
// kAppendErrorPage.
//
// K and V must not overlap the cache; the stream orders this call with the caller's work.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "kvq/device/error.cuh"
#include "kvq/device/launch.cuh"
#include "kvq/device/properties.cuh"
#include "kvq/kernels/quantize/quantize_append.cuh"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/layout/paged_layout.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"
#include "kvq/spec/variant.hpp"
#include "kvq/status.hpp"

namespace kvq {

/// Bits of AppendArguments::error, set (OR-ed) on the device by an append that had to
/// leave a batch entry untouched; that entry's length is unchanged.
enum AppendError : std::uint32_t {
  kAppendErrorCapacity = 1u,        ///< length + num_tokens exceeded the capacity
  kAppendErrorNegativeLength = 2u,  ///< the device length was negative
  kAppendErrorPage = 4u,            ///< paged: a table column the append writes holds no page of the pool
};

/// The chunk to append, the cache it goes to and the per-batch lengths it is appended at.
struct AppendArguments {
  void* cache = nullptr;             ///< base of the cache allocation (layout.bytes() bytes), device
  Tensor4 k;                         ///< [batch, num_tokens, heads, HeadDim], bf16 or fp16, device
  Tensor4 v;                         ///< same shape and dtype as k
  std::int64_t num_tokens = 0;       ///< tokens appended to every batch entry
  std::int32_t* lengths = nullptr;   ///< device [batch]: read, then increased by num_tokens
  /// Host upper bound of the device lengths; -1 = unknown (then only the device checks
  /// each entry). With a bound, bound + num_tokens above the capacity is refused on the host.
  std::int64_t max_cache_length = -1;
  /// Optional device word: AppendError bits OR-ed in for entries the append left untouched
  /// (the caller zeroes it and reads it when it wants to know).
  std::uint32_t* error = nullptr;
};

namespace detail::append {

inline bool aligned(const void* p, std::uintptr_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; }

inline bool vector_loads_ok(const Tensor4& t) {
  return aligned(t.data, 16) && t.batch_stride % 8 == 0 && t.token_stride % 8 == 0 && t.head_stride % 8 == 0;
}

inline bool is_16bit_activation(DType d) { return d == DType::kBFloat16 || d == DType::kFloat16; }

/// Whether a layout (or a paged view: its paged shape, tables and stride) is valid.
template <class Layout>
Status check_layout(const Layout& l) {
  if constexpr (layout::is_paged_view_v<Layout>) {
    return l.check();
  } else {
    Layout checked;
    if (Layout::make(l.shape, &checked) != Status::kSuccess) return Status::kErrorInvalidArgument;
  }
  return Status::kSuccess;
}

/// The checks of one call's arguments that need no device.
template <class Layout>
Status check_arguments(const Layout& l, const AppendArguments& a) {
  using Tr = kernels::quantize::Traits<Layout>;
  if (!Tr::kSupported) return Status::kErrorNotSupported;
  if (a.cache == nullptr || a.lengths == nullptr) return Status::kErrorInvalidArgument;
  if (a.num_tokens < 0 || a.max_cache_length < -1) return Status::kErrorInvalidArgument;
  if (a.num_tokens > 0 && (a.k.data == nullptr || a.v.data == nullptr)) return Status::kErrorInvalidArgument;
  if (!is_16bit_activation(a.k.dtype) || !is_16bit_activation(a.v.dtype)) return Status::kErrorNotSupported;
  if (a.k.dtype != a.v.dtype) return Status::kErrorInvalidArgument;
  if (Layout::kHasTail && a.k.dtype != l.shape.tail_dtype) return Status::kErrorInvalidArgument;
  for (const Tensor4* t : {&a.k, &a.v})
    if (t->batch_stride < 0 || t->token_stride < 0 || t->head_stride < 0) return Status::kErrorInvalidArgument;
  if (!aligned(a.cache, 16) || !aligned(a.lengths, 4) || !aligned(a.k.data, 2) || !aligned(a.v.data, 2) ||
      !aligned(a.error, 4))
    return Status::kErrorMisaligned;
  const std::int64_t end = (a.max_cache_length < 0 ? 0 : a.max_cache_length) + a.num_tokens;
  if (end > l.shape.capacity || end > INT32_MAX) return Status::kErrorCapacityExceeded;
  return Status::kSuccess;
}

/// Knobs of the launch, for the benchmarks and tests; quantize_append uses the defaults.
struct LaunchOptions {
  bool update_lengths = true;  ///< launch update_lengths_kernel after the quantize kernel
};

}  // namespace detail::append

/// Plan once, run many: initialize() validates the layout and the arguments and queries
/// the device once; run() checks the per-call arguments and launches the key mean (centered
/// layouts), the quantize kernel and the lengths update.
/// \tparam MinBlocks  resident blocks per SM asked of ptxas for the quantize kernel (its
///                    register budget); the default is the tuned one.
template <class Layout, int MinBlocks = kernels::quantize::Traits<Layout>::kMinBlocks>
class AppendPlan {
 public:
  using Traits = kernels::quantize::Traits<Layout>;

  /// The checks of initialize() that need no device.
  [[nodiscard]] static Status can_implement(const Layout& l, const AppendArguments& a) {
    if (!Traits::kSupported) return Status::kErrorNotSupported;
    const Status s = detail::append::check_layout(l);
    if (s != Status::kSuccess) return s;
    return detail::append::check_arguments(l, a);
  }

  [[nodiscard]] Status initialize(const Layout& l, const AppendArguments& a);
  /// Checks the per-call arguments (k/v dtype must stay the planned one) and launches.
  [[nodiscard]] Status run(const AppendArguments& a, cudaStream_t stream,
                           const detail::append::LaunchOptions& opt = {});

  bool initialized() const { return initialized_; }
  const Layout& layout() const { return layout_; }
  /// Resident blocks per SM of the quantize kernel for the planned dtype (benchmarks' reports).
  [[nodiscard]] Status occupancy(int* blocks_per_sm) const;

 private:
  Layout layout_{};
  DType dtype_ = DType::kBFloat16;
  bool programmatic_ = false;
  int sm_count_ = 1;
  bool initialized_ = false;
};

template <class Layout, int MinBlocks>
Status AppendPlan<Layout, MinBlocks>::initialize(const Layout& l, const AppendArguments& a) {
  initialized_ = false;
  Status s = can_implement(l, a);
  if (s != Status::kSuccess) return s;
  device::Properties dev;
  if ((s = device::Properties::query(&dev)) != Status::kSuccess) return s;
  if (dev.cc_major < 8) return Status::kErrorNotSupported;
  layout_ = l;
  dtype_ = a.k.dtype;
  programmatic_ = dev.cc_major >= 9;
  sm_count_ = dev.sm_count > 0 ? dev.sm_count : 1;
  initialized_ = true;
  return Status::kSuccess;
}

template <class Layout, int MinBlocks>
Status AppendPlan<Layout, MinBlocks>::occupancy(int* blocks_per_sm) const {
  if constexpr (Traits::kSupported) {
    auto* kernel = dtype_ == DType::kFloat16 ? &kernels::quantize::quantize_append_kernel<Layout, DType::kFloat16, MinBlocks>
                                             : &kernels::quantize::quantize_append_kernel<Layout, DType::kBFloat16, MinBlocks>;
    return device::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, Traits::kThreads, 0));
  } else {
    (void)blocks_per_sm;
    return Status::kErrorNotSupported;
  }
}

template <class Layout, int MinBlocks>
Status AppendPlan<Layout, MinBlocks>::run(const AppendArguments& a, cudaStream_t stream,
                                          const detail::append::LaunchOptions& opt) {
  namespace ap = detail::append;
  if (!initialized_) return Status::kErrorInvalidArgument;
  if (a.k.dtype != dtype_) return Status::kErrorInvalidArgument;
  Status s = ap::check_arguments(layout_, a);
  if (s != Status::kSuccess) return s;
  if (a.num_tokens == 0) return Status::kSuccess;
  if constexpr (Traits::kSupported) {
    const Layout& l = layout_;
    const std::int64_t tiles = Traits::tiles_per_head(a.num_tokens);
    const std::int64_t blocks = tiles * l.shape.heads * l.shape.batch;
    // (tile, head, batch) grid when heads and batch fit its y and z; else one dimension.
    const bool grid_3d = l.shape.heads <= 65535 && l.shape.batch <= 65535;
    if ((grid_3d ? tiles : blocks) > 0x7fffffff) return Status::kErrorNotSupported;
    const kernels::quantize::Params<Layout> p{l,
                                                  layout::CachePointers<Layout>::from_base(l, a.cache),
                                                  a.k,
                                                  a.v,
                                                  a.num_tokens,
                                                  a.lengths,
                                                  tiles,
                                                  ap::vector_loads_ok(a.k) && ap::vector_loads_ok(a.v),
                                                  grid_3d};
    if constexpr (Layout::kCenteredKeys) {
      // Few blocks: with no empty entry each only reads lengths.
      using KP = kernels::quantize::KeyMeanPlan;
      const std::int64_t items = KP::items(l), cap = 4 * static_cast<std::int64_t>(sm_count_);
      device::LaunchShape mean;
      mean.grid = dim3(static_cast<unsigned>(items < cap ? items : cap));
      mean.block = dim3(static_cast<unsigned>(KP::kThreads));
      auto* mean_kernel = dtype_ == DType::kBFloat16 ? &kernels::quantize::key_mean_kernel<Layout, DType::kBFloat16>
                                                     : &kernels::quantize::key_mean_kernel<Layout, DType::kFloat16>;
      if ((s = device::launch(mean_kernel, mean, stream, p)) != Status::kSuccess) return s;
    }
    auto* kernel = dtype_ == DType::kBFloat16 ? &kernels::quantize::quantize_append_kernel<Layout, DType::kBFloat16, MinBlocks>
                                              : &kernels::quantize::quantize_append_kernel<Layout, DType::kFloat16, MinBlocks>;
    device::LaunchShape shape;
    shape.programmatic = Layout::kCenteredKeys && programmatic_;
    shape.grid = grid_3d ? dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(l.shape.heads),
                                static_cast<unsigned>(l.shape.batch))
                         : dim3(static_cast<unsigned>(blocks));
    shape.block = dim3(static_cast<unsigned>(Traits::kThreads));
    if ((s = device::launch(kernel, shape, stream, p)) != Status::kSuccess) return s;
    if (!opt.update_lengths) return Status::kSuccess;
    device::LaunchShape upd;
    upd.grid = dim3(static_cast<unsigned>((l.shape.batch + 255) / 256));
    upd.block = dim3(256);
    upd.programmatic = programmatic_;
    if constexpr (layout::is_paged_view_v<Layout>)
      return device::launch(&kernels::quantize::update_lengths_paged_kernel<Layout>, upd, stream, l, a.lengths,
                            l.shape.batch, a.num_tokens, a.error);
    else
      return device::launch(&kernels::quantize::update_lengths_kernel<std::int32_t>, upd, stream, a.lengths, l.shape.batch,
                          a.num_tokens, l.shape.capacity, a.error);
  } else {
    return Status::kErrorNotSupported;
  }
}

/// Quantizes args.num_tokens tokens of K and V and appends them to every batch entry of
/// the device cache at args.cache, then increases the device lengths, in `stream`.
template <class Layout>
[[nodiscard]] Status quantize_append(const Layout& l, const AppendArguments& a, cudaStream_t stream) {
  AppendPlan<Layout> plan;
  const Status s = plan.initialize(l, a);
  return s != Status::kSuccess ? s : plan.run(a, stream);
}

/// quantize_append with the layout chosen at run time among the listed ones; a variant
/// that is not listed gives Status::kErrorNotSupported.
template <class... Layouts>
[[nodiscard]] Status quantize_append(TypeList<Layouts...> list, const CacheVariant& variant, const layout::CacheShape& shape,
                                     const AppendArguments& a, cudaStream_t stream) {
  return dispatch_layout(list, variant, [&](auto tag) -> Status {
    using L = typename decltype(tag)::type;
    L l;
    if (L::make(shape, &l) != Status::kSuccess) return Status::kErrorInvalidArgument;
    return quantize_append(l, a, stream);
  });
}

}  // namespace kvq
