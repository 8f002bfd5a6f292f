// Host API of GPU quantize-and-append: appends a chunk of bf16/fp16 keys and values to a
// packed low-bit cache (layout/cache_layout.hpp), bit-identical to
// kvq::reference::quantize_append.
//
//   kvq::AppendArguments args{k, v, num_tokens, d_lengths, max_length};
//   kvq::Status s = kvq::quantize_append(layout, d_cache, args, stream);
//
// Every entry point returns a Status and never throws, prints or exits. Bad arguments are
// refused before any launch (and nothing is written):
//   kErrorInvalidArgument  null cache or lengths; null k/v data with num_tokens > 0;
//                          negative num_tokens, max_length or strides; k and v of
//                          different dtypes, or (PerChannel keys) a dtype other than the
//                          layout's tail dtype; a layout shape that CacheLayout::make refuses.
//   kErrorNotSupported     k/v dtype other than bf16 and fp16; a layout the kernel does not
//                          implement (kernels::quantize::Traits::kSupported: head dim a multiple
//                          of 32 up to 512, groups of at least 8); with the dispatching
//                          overload, a variant not listed.
//   kErrorMisaligned       cache not 16-byte aligned, lengths not 4-byte aligned, k/v data
//                          not 2-byte aligned. K/V pointers or strides that are not 16-byte
//                          (8-element) aligned are accepted: the kernel then reads them with
//                          scalar loads (slower, same results).
//   kErrorCapacityExceeded max_length + num_tokens exceeds the capacity, or INT32_MAX.
//   kErrorCudaRuntime      a launch failed (cudaGetLastError after each launch).
// num_tokens == 0 is a no-op that launches nothing.
//
// max_length is a host-side upper bound on the device lengths that the caller knows; the
// kernel also checks each device length: a batch entry whose length is negative or whose
// length + num_tokens exceeds the capacity is left untouched (no byte written, length
// unchanged), so a wrong max_length can never make the kernel write outside the cache.
//
// K and V must not overlap the cache; the stream orders this call with the caller's work.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "kvq/kernels/quantize/quantize_append.cuh"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"
#include "kvq/spec/variant.hpp"
#include "kvq/status.hpp"

namespace kvq {

/// The chunk to append and the per-batch lengths it is appended at.
struct AppendArguments {
  Tensor4 k;                         ///< [batch, num_tokens, heads, HeadDim], bf16 or fp16, device
  Tensor4 v;                         ///< same shape and dtype as k
  std::int64_t num_tokens = 0;       ///< tokens appended to every batch entry
  std::int32_t* lengths = nullptr;   ///< device [batch]: read, then increased by num_tokens
  std::int32_t max_length = 0;       ///< host: an upper bound on the current lengths
};

namespace detail::append {

inline bool aligned(const void* p, std::uintptr_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; }

inline bool vector_loads_ok(const Tensor4& t) {
  return aligned(t.data, 16) && t.batch_stride % 8 == 0 && t.token_stride % 8 == 0 && t.head_stride % 8 == 0;
}

inline bool is_16bit_activation(DType d) { return d == DType::kBFloat16 || d == DType::kFloat16; }

/// Launches the lengths update after the quantize grid (a programmatic dependent launch on sm_90+).
inline Status launch_update_lengths(const AppendArguments& a, int batch, std::int64_t capacity, cudaStream_t stream) {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::kErrorCudaRuntime;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>((batch + 255) / 256));
  cfg.blockDim = dim3(256);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = major >= 9 ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, &kernels::quantize::update_lengths_kernel<std::int32_t>, a.lengths, batch,
                                           a.num_tokens, capacity);
  const cudaError_t last = cudaGetLastError();
  return e == cudaSuccess && last == cudaSuccess ? Status::kSuccess : Status::kErrorCudaRuntime;
}

}  // namespace detail::append

/// Checks everything quantize_append checks, without launching anything.
template <class Layout>
[[nodiscard]] Status can_implement(const Layout& l, const void* cache, const AppendArguments& a) {
  using Tr = kernels::quantize::Traits<Layout>;
  namespace ap = detail::append;
  if (!Tr::kSupported) return Status::kErrorNotSupported;
  Layout checked;
  if (Layout::make(l.shape, &checked) != Status::kSuccess) return Status::kErrorInvalidArgument;
  if (cache == nullptr || a.lengths == nullptr) return Status::kErrorInvalidArgument;
  if (a.num_tokens < 0 || a.max_length < 0) return Status::kErrorInvalidArgument;
  if (a.num_tokens > 0 && (a.k.data == nullptr || a.v.data == nullptr)) return Status::kErrorInvalidArgument;
  if (!ap::is_16bit_activation(a.k.dtype) || !ap::is_16bit_activation(a.v.dtype)) return Status::kErrorNotSupported;
  if (a.k.dtype != a.v.dtype) return Status::kErrorInvalidArgument;
  if (Layout::kHasTail && a.k.dtype != l.shape.tail_dtype) return Status::kErrorInvalidArgument;
  for (const Tensor4* t : {&a.k, &a.v})
    if (t->batch_stride < 0 || t->token_stride < 0 || t->head_stride < 0) return Status::kErrorInvalidArgument;
  if (!ap::aligned(cache, 16) || !ap::aligned(a.lengths, 4) || !ap::aligned(a.k.data, 2) || !ap::aligned(a.v.data, 2))
    return Status::kErrorMisaligned;
  const std::int64_t end = static_cast<std::int64_t>(a.max_length) + a.num_tokens;
  if (end > l.shape.capacity || end > INT32_MAX) return Status::kErrorCapacityExceeded;
  return Status::kSuccess;
}

namespace detail::append {

/// Knobs of the launch, for the benchmarks and tests; quantize_append uses the defaults.
struct LaunchOptions {
  bool update_lengths = true;  ///< launch update_lengths_kernel after the quantize kernel
};

/// Resident blocks per SM of the quantize kernel of a layout for inputs of dtype `in` on the
/// current device (for the benchmarks' reports).
template <class Layout, int kMinBlocks = kernels::quantize::Traits<Layout>::kMinBlocks>
[[nodiscard]] Status occupancy(DType in, int* blocks_per_sm) {
  using Tr = kernels::quantize::Traits<Layout>;
  if constexpr (Tr::kSupported) {
    auto* kernel = in == DType::kFloat16 ? &kernels::quantize::quantize_append_kernel<Layout, DType::kFloat16, kMinBlocks>
                                         : &kernels::quantize::quantize_append_kernel<Layout, DType::kBFloat16, kMinBlocks>;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, Tr::kThreads, 0) != cudaSuccess)
      return (void)cudaGetLastError(), Status::kErrorCudaRuntime;
    return Status::kSuccess;
  } else {
    return Status::kErrorNotSupported;
  }
}

/// The launches behind quantize_append, with the knobs of LaunchOptions; kMinBlocks selects the
/// register budget of the quantize kernel (benchmarks only).
template <class Layout, int kMinBlocks = kernels::quantize::Traits<Layout>::kMinBlocks>
[[nodiscard]] Status launch(const Layout& l, void* cache, const AppendArguments& a, cudaStream_t stream,
                            const LaunchOptions& opt = {}) {
  using Tr = kernels::quantize::Traits<Layout>;
  const Status s = can_implement(l, cache, a);
  if (s != Status::kSuccess) return s;
  if (a.num_tokens == 0) return Status::kSuccess;
  if constexpr (Tr::kSupported) {
    const std::int64_t tiles = Tr::tiles_per_head(a.num_tokens);
    const std::int64_t blocks = tiles * l.shape.heads * l.shape.batch;
    // (tile, head, batch) grid when heads and batch fit its y and z; else one dimension.
    const bool grid_3d = l.shape.heads <= 65535 && l.shape.batch <= 65535;
    if ((grid_3d ? tiles : blocks) > 0x7fffffff) return Status::kErrorNotSupported;
    const kernels::quantize::Params<Layout> p{l,
                                              layout::CachePointers<Layout>::from_base(l, cache),
                                              a.k,
                                              a.v,
                                              a.num_tokens,
                                              a.lengths,
                                              tiles,
                                              vector_loads_ok(a.k) && vector_loads_ok(a.v),
                                              grid_3d};
    auto* kernel = a.k.dtype == DType::kBFloat16
                       ? &kernels::quantize::quantize_append_kernel<Layout, DType::kBFloat16, kMinBlocks>
                       : &kernels::quantize::quantize_append_kernel<Layout, DType::kFloat16, kMinBlocks>;
    const dim3 grid = grid_3d ? dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(l.shape.heads),
                                     static_cast<unsigned>(l.shape.batch))
                              : dim3(static_cast<unsigned>(blocks));
    kernel<<<grid, Tr::kThreads, 0, stream>>>(p);
    if (cudaGetLastError() != cudaSuccess) return Status::kErrorCudaRuntime;
    if (!opt.update_lengths) return Status::kSuccess;
    return launch_update_lengths(a, l.shape.batch, l.shape.capacity, stream);
  } else {
    return Status::kErrorNotSupported;
  }
}

}  // namespace detail::append

/// Quantizes args.num_tokens tokens of K and V and appends them to every batch entry of a
/// device cache of layout.bytes() bytes, then increases the device lengths, in `stream`.
template <class Layout>
[[nodiscard]] Status quantize_append(const Layout& l, void* cache, const AppendArguments& a, cudaStream_t stream = 0) {
  return detail::append::launch<Layout>(l, cache, a, stream);
}

/// can_implement with the layout chosen at run time among the listed ones.
template <class... Layouts>
[[nodiscard]] Status can_implement(TypeList<Layouts...> list, const CacheVariant& variant, const layout::CacheShape& shape,
                                   const void* cache, const AppendArguments& a) {
  return dispatch_layout(list, variant, [&](auto tag) -> Status {
    using L = typename decltype(tag)::type;
    L l;
    if (L::make(shape, &l) != Status::kSuccess) return Status::kErrorInvalidArgument;
    return can_implement(l, cache, a);
  });
}

/// quantize_append with the layout chosen at run time among the listed ones; a variant
/// that is not listed gives Status::kErrorNotSupported.
template <class... Layouts>
[[nodiscard]] Status quantize_append(TypeList<Layouts...> list, const CacheVariant& variant, const layout::CacheShape& shape,
                                     void* cache, const AppendArguments& a, cudaStream_t stream = 0) {
  return dispatch_layout(list, variant, [&](auto tag) -> Status {
    using L = typename decltype(tag)::type;
    L l;
    if (L::make(shape, &l) != Status::kSuccess) return Status::kErrorInvalidArgument;
    return quantize_append(l, cache, a, stream);
  });
}

}  // namespace kvq
