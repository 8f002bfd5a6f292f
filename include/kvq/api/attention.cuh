// Host API of the fused chunk attention: queries [batch, num_q, q_heads, D] attend to
// [quantized cache ; cache tail ; current chunk] with the Jensen correction of the
// quantized keys, with the semantics of kvq::reference::attention.
//
//   kvq::AttentionPlan<Layout, kvq::Correction::kTaylor2> plan;   // once
//   kvq::Status s = plan.initialize(layout, args);                  // validates, selects the kernel
//   s = plan.run(args, stream);                                     // per call: checks and launches
//   s = kvq::attention<kvq::Correction::kTaylor2>(layout, args, stream);  // both in one call
//
// Three kernels implement it: the Hopper kernel (kernels/sm90: wgmma, warp-specialised) for
// PerToken keys with 2- or 4-bit codes on compute capability 9.0 when its translation
// unit was compiled for sm_90a, the mma.sync kernel (kernels/sm80, sm_80+) for
// everything else, and for short queries (decode) the short-query kernel (kernels/decode,
// sm_80+: the q heads of a kv head packed into one CTA, the key sequence split across
// CTAs and the splits merged; forced with ShortQueryConfig; kernels/decode/schedule.hpp
// states when AutoConfig takes it: at most 16 queries). Every entry point returns a Status and never throws, prints or exits; the Status
// table is in README.md.
//
// Paged caches: Layout = layout::PagedView<PagedCacheLayout<...>> (layout/paged_layout.hpp),
// the view bound to device block tables (one table serves every head of the layer). The
// same kernels read each tile through the table: the Hopper kernel where page_tokens is a
// multiple of its tile or divides it (one bulk copy per page of a tile) and page_tokens ×
// metadata bytes per token is a multiple of 16, else the mma.sync kernel where page_tokens is
// a multiple of its tile; other page sizes give kErrorNotSupported. The plan keeps the view
// (its tables pointer) from initialize(): tables are edited in place between calls. The host
// checks the view (PagedView::check); the kernels check the columns of each entry's quantized
// tokens: an entry with a column outside [0, num_pages) is skipped (its output, LSE and mass
// rows are not written, no page is read) and reported in AttentionArguments::error.
//
// Build time: each AttentionPlan<Layout, Mode> compiles up to eight kernels (the two chunk
// kernels, the short-query kernel and its combine, x bf16/fp16). Instantiate each variant
// once with KVQ_INSTANTIATE_ATTENTION(Layout, Mode) and declare it elsewhere with
// KVQ_DECLARE_ATTENTION(Layout, Mode): a declaring translation unit compiles no kernel of
// that variant.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvq/api/attention_arguments.hpp"
#include "kvq/api/attention_detail.cuh"
#include "kvq/device/error.cuh"
#include "kvq/device/launch.cuh"
#include "kvq/device/properties.cuh"
#include "kvq/device/tensor_map.cuh"
#include "kvq/kernels/decode/kernel.cuh"
#include "kvq/kernels/decode/schedule.hpp"
#include "kvq/kernels/sm80/attention.cuh"
#include "kvq/kernels/sm90/attention.cuh"
#include "kvq/kernels/sm90/schedule.hpp"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/layout/paged_layout.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"
#include "kvq/spec/variant.hpp"
#include "kvq/status.hpp"

namespace kvq {

/// Plan once, run many: validates what does not change between calls (layout, batch, q
/// heads, dtype, mask), queries the device once, selects the kernel and sets its function
/// attributes in initialize(); run() checks the per-call arguments and launches.
///
/// \tparam Config  AutoConfig (the default: the Hopper kernel where it implements the
///                 variant and runs on the device, else the mma.sync kernel), or a kernel
///                 configuration that forces one kernel: a kernels::sm90::Config (the Hopper
///                 kernel; kErrorNotSupported where it cannot run) or a
///                 kernels::sm80::TileConfig (the mma.sync kernel).
///
/// A plan belongs to the device that was current at initialize(); it keeps the chunk's
/// TMA descriptors of the last call, so one plan must not run concurrently from several
/// host threads. The kernel-launching members are defined out of the class, so that
/// KVQ_DECLARE_ATTENTION (an extern template) keeps their kernels out of declaring files.
template <class Layout, Correction Mode, class Config = AutoConfig>
class AttentionPlan {
 public:
  static constexpr bool kForcedSm90 = detail::attention::is_sm90_config<Config>();
  static constexpr bool kForcedShort = std::is_same_v<Config, ShortQueryConfig>;
  static constexpr bool kAuto = std::is_same_v<Config, AutoConfig>;
  static constexpr bool kSm90Implemented = kernels::sm90::variant_supported<Layout, Mode>();
  /// The mma.sync kernel and the short-query kernel implement the same variants.
  static constexpr bool kSm80Implemented = attention_variant_supported<Layout, Mode>();
  /// Whether some kernel of this Config implements the variant (compile time).
  static constexpr bool kImplemented = kForcedSm90 ? kSm90Implemented : kSm80Implemented || (kAuto && kSm90Implemented);

  AttentionPlan() = default;
  AttentionPlan(const AttentionPlan&) = delete;
  AttentionPlan& operator=(const AttentionPlan&) = delete;
  AttentionPlan(AttentionPlan&& o) noexcept { *this = static_cast<AttentionPlan&&>(o); }
  AttentionPlan& operator=(AttentionPlan&& o) noexcept {
    if (this != &o) {
      release_workspace();
      layout_ = o.layout_, dtype_ = o.dtype_, q_heads_ = o.q_heads_, mask_ = o.mask_, device_ = o.device_;
      initialized_ = o.initialized_, choice_ = o.choice_, short_ = o.short_, split_ = o.split_, maps_ = o.maps_;
      requested_splits_ = o.requested_splits_;
      workspace_ = o.workspace_, workspace_bytes_ = o.workspace_bytes_;
      o.workspace_ = nullptr, o.workspace_bytes_ = 0, o.initialized_ = false;
    }
    return *this;
  }
  ~AttentionPlan() { release_workspace(); }

  /// The checks of initialize() that need no device: argument checks and whether a kernel
  /// of Config implements the variant.
  [[nodiscard]] static Status can_implement(const Layout& layout, const AttentionArguments& a) {
    if constexpr (!kImplemented) {
      (void)layout, (void)a;
      return Status::kErrorNotSupported;
    } else {
      return detail::attention::check_arguments(layout, a);
    }
  }

  /// Validates the arguments, queries the current device, selects the kernel and its splits
  /// (AttentionArguments::splits) and sets its function attributes. On failure the plan
  /// stays uninitialized. A plan with more than one split allocates its workspace here
  /// (cudaMalloc of splits x batch x q_heads x num_q x (D + 4) floats; freed by the
  /// destructor or the next initialize): run() allocates nothing, so it may be captured in
  /// a CUDA graph.
  [[nodiscard]] Status initialize(const Layout& layout, const AttentionArguments& a);

  /// Checks the per-call arguments against the plan and launches on `stream`. Arguments
  /// that initialize() fixed (batch, q heads, dtype, mask, splits, layout) must not change:
  /// kErrorInvalidArgument if they do. With more than one split, a num_q above
  /// initialize()'s (the workspace's size) is kErrorInvalidArgument on the short-query path
  /// and runs unsplit on the chunk kernels.
  [[nodiscard]] Status run(const AttentionArguments& a, cudaStream_t stream);

  bool initialized() const { return initialized_; }
  /// The kernel that run() launches (valid after a successful initialize()).
  AttentionPath path() const { return choice_.path; }
  /// The splits of each CTA's key sequence (split-KV; 1: none).
  int splits() const { return split_.splits; }
  /// Bytes of the workspace the plan holds (0 unless it splits).
  std::size_t workspace_bytes() const { return workspace_bytes_; }
  const Layout& layout() const { return layout_; }

 private:
  Status initialize_short(const Layout& layout, const AttentionArguments& a, const device::Properties& dev);
  Status run_short(const AttentionArguments& a, cudaStream_t stream);
  Status allocate_splits(const AttentionArguments& a, detail::attention::SplitPlan sp);
  Status combine(const AttentionArguments& a, int splits, const kernels::common::AttentionParams<Layout>& p,
                 cudaStream_t stream);
  void release_workspace() {
    if (workspace_ != nullptr) (void)cudaFree(workspace_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
  }

  Layout layout_{};
  DType dtype_ = DType::kBFloat16;
  int q_heads_ = 0;
  Mask mask_ = Mask::kNone;
  int device_ = -1;
  bool initialized_ = false;
  detail::attention::KernelChoice<Layout> choice_{};
  detail::attention::ShortChoice<Layout> short_{};
  detail::attention::SplitPlan split_{};
  int requested_splits_ = 0;
  device::ChunkMapCache maps_{};
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
};

template <class Layout, Correction Mode, class Config>
Status AttentionPlan<Layout, Mode, Config>::initialize(const Layout& layout, const AttentionArguments& a) {
  namespace at = detail::attention;
  initialized_ = false;
  Status s = can_implement(layout, a);
  if (s != Status::kSuccess) return s;
  if constexpr (kImplemented) {
    device::Properties dev;
    if ((s = device::Properties::query(&dev)) != Status::kSuccess) return s;
    if (dev.cc_major < 8) return Status::kErrorNotSupported;
    if constexpr (kForcedShort) return initialize_short(layout, a, dev);
    const bool bf16 = a.q.dtype == DType::kBFloat16;
    at::KernelChoice<Layout> c{};
    bool chosen = false;
    if constexpr (kForcedSm90 || (kAuto && kSm90Implemented)) {
      using Sm90Config = std::conditional_t<kForcedSm90, Config, kernels::sm90::DefaultConfig<Layout, Mode>>;
      using TrB = kernels::sm90::Traits<Layout, Mode, DType::kBFloat16, Sm90Config>;
      using TrH = kernels::sm90::Traits<Layout, Mode, DType::kFloat16, Sm90Config>;
      const at::KernelChoice<Layout> k = bf16 ? at::sm90_kernel<TrB, Layout>() : at::sm90_kernel<TrH, Layout>();
      bool runnable = dev.is_sm90() && dev.smem_optin >= k.smem_bytes && at::paged_tiles_fit<TrB>(layout, true);
      if (runnable) {
        // The kernel's own build says whether it has the wgmma code: built for any target
        // but sm_90a it is a stub that declares kernels::sm90::kStubSharedBytes of static
        // shared memory (the real kernel declares none).
        cudaFuncAttributes attr{};
        if ((s = device::check(cudaFuncGetAttributes(&attr, k.kernel))) != Status::kSuccess) return s;
        runnable = attr.sharedSizeBytes == 0;
      }
      if (runnable) {
        c = k;
        chosen = true;
      } else if constexpr (kForcedSm90) {
        return Status::kErrorNotSupported;
      }
    }
    if constexpr (!kForcedSm90 && !kForcedShort && kSm80Implemented) {
      if (!chosen) {
        using Tiles = std::conditional_t<kAuto, kernels::sm80::DefaultTileConfig<Layout::kHeadDim>, Config>;
        using TrB = kernels::sm80::Traits<Layout, Mode, DType::kBFloat16, Tiles>;
        using TrH = kernels::sm80::Traits<Layout, Mode, DType::kFloat16, Tiles>;
        if (!at::paged_tiles_fit<TrB>(layout, false)) return Status::kErrorNotSupported;
        c = bf16 ? at::sm80_kernel<TrB, Layout>() : at::sm80_kernel<TrH, Layout>();
        if (dev.smem_optin < c.smem_bytes) return Status::kErrorNotSupported;
        chosen = true;
      }
    }
    if (!chosen) return Status::kErrorNotSupported;
    if constexpr (kAuto && kernels::decode::kAutoSelect && kSm80Implemented) {
      kernels::decode::ShortQueryShape sh;
      sh.batch = a.batch;
      sh.q_heads = a.q_heads;
      sh.kv_heads = layout.shape.heads;
      sh.num_q = a.num_q;
      sh.sm_count = dev.sm_count;
      // The short-query kernel where its shared memory fits the device (else the chunk kernel).
      constexpr int kShortSmem = kernels::decode::Traits<Layout, Mode, DType::kBFloat16>::kSmemBytes >
                                         kernels::decode::Traits<Layout, Mode, DType::kFloat16>::kSmemBytes
                                     ? kernels::decode::Traits<Layout, Mode, DType::kBFloat16>::kSmemBytes
                                     : kernels::decode::Traits<Layout, Mode, DType::kFloat16>::kSmemBytes;
      if (kernels::decode::prefer_short_query(sh) && dev.smem_optin >= kShortSmem &&
          at::paged_tiles_fit<kernels::decode::Traits<Layout, Mode, DType::kBFloat16>>(layout, false))
        return initialize_short(layout, a, dev);
    }
    // cudaFuncSetAttribute resets the runtime's last error even when it succeeds: it is
    // called only when the kernel's limit is not yet high enough on this device (once per
    // kernel and device), so that an error the caller has pending survives.
    cudaFuncAttributes attr{};
    if ((s = device::check(cudaFuncGetAttributes(&attr, c.kernel))) != Status::kSuccess) return s;
    if (attr.maxDynamicSharedSizeBytes < c.smem_bytes &&
        (s = device::check(cudaFuncSetAttribute(c.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem_bytes))) !=
            Status::kSuccess)
      return s;
    // Split-KV on the Hopper kernel (kernels/sm90/schedule.hpp).
    at::SplitPlan sp{};
    if (c.path == AttentionPath::kSm90) {
      kernels::sm90::ChunkSplitShape sh;
      sh.batch = a.batch;
      sh.q_heads = a.q_heads;
      sh.num_q = a.num_q;
      const std::int64_t bound = a.cache == nullptr ? 0 : a.max_cache_length < 0 ? layout.shape.capacity : a.max_cache_length;
      sh.max_keys = bound + a.num_chunk;
      sh.rows = c.rows;
      sh.tile_n = c.tile_n;
      sh.head_dim = Layout::kHeadDim;
      sh.sm_count = dev.sm_count;
      sp.splits = a.splits > 0 ? a.splits : kernels::sm90::chunk_splits(sh);
      sp.combine = at::combine_kernel<Layout>(a.q.dtype);
    }
    if ((s = allocate_splits(a, sp)) != Status::kSuccess) return s;
    layout_ = layout;
    dtype_ = a.q.dtype;
    q_heads_ = a.q_heads;
    mask_ = a.mask;
    requested_splits_ = a.splits;
    device_ = dev.device;
    choice_ = c;
    maps_ = device::ChunkMapCache{};
    initialized_ = true;
    return Status::kSuccess;
  } else {
    return Status::kErrorNotSupported;
  }
}

template <class Layout, Correction Mode, class Config>
Status AttentionPlan<Layout, Mode, Config>::initialize_short(const Layout& layout, const AttentionArguments& a,
                                                              const device::Properties& dev) {
  namespace dk = kernels::decode;
  if constexpr (kSm80Implemented) {
    using TrB = dk::Traits<Layout, Mode, DType::kBFloat16>;
    using TrH = dk::Traits<Layout, Mode, DType::kFloat16>;
    // Paged views: tiles inside pages (page_tokens a multiple of the 64-token tile).
    if (!detail::attention::paged_tiles_fit<TrB>(layout, false)) return Status::kErrorNotSupported;
    const bool bf16 = a.q.dtype == DType::kBFloat16;
    detail::attention::ShortChoice<Layout> sc;
    sc.kernel = bf16 ? &dk::attention_kernel<TrB> : &dk::attention_kernel<TrH>;
    sc.threads = TrB::kThreads;
    sc.smem_bytes = bf16 ? TrB::kSmemBytes : TrH::kSmemBytes;
    if (dev.smem_optin < sc.smem_bytes) return Status::kErrorNotSupported;
    Status s;
    cudaFuncAttributes attr{};
    if ((s = device::check(cudaFuncGetAttributes(&attr, sc.kernel))) != Status::kSuccess) return s;
    if (attr.maxDynamicSharedSizeBytes < sc.smem_bytes &&
        (s = device::check(cudaFuncSetAttribute(sc.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, sc.smem_bytes))) !=
            Status::kSuccess)
      return s;
    // Resident CTAs per SM from the kernel's registers and shared memory (no occupancy
    // call: kvq calls leave the caller's pending CUDA error alone).
    int smem_per_sm = 0;
    if ((s = device::check(cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev.device))) !=
        Status::kSuccess)
      return s;
    const int regs = attr.numRegs > 0 ? (attr.numRegs + 7) / 8 * 8 : 255;
    const int by_regs = 65536 / (regs * sc.threads);
    const int by_smem = smem_per_sm / (sc.smem_bytes + static_cast<int>(attr.sharedSizeBytes) + 1024);
    int per_sm = by_regs < by_smem ? by_regs : by_smem;
    per_sm = per_sm < 1 ? 1 : per_sm;
    dk::ShortQueryShape sh;
    sh.batch = a.batch;
    sh.q_heads = a.q_heads;
    sh.kv_heads = layout.shape.heads;
    sh.num_q = a.num_q;
    const std::int64_t bound = a.cache == nullptr ? 0 : a.max_cache_length < 0 ? layout.shape.capacity : a.max_cache_length;
    sh.max_keys = bound + a.num_chunk;
    sh.sm_count = dev.sm_count;
    sh.ctas_per_sm = per_sm > 0 ? per_sm : 1;
    detail::attention::SplitPlan sp{};
    sp.splits = a.splits > 0 ? a.splits : dk::short_query_splits(sh);
    sp.combine = detail::attention::combine_kernel<Layout>(a.q.dtype);
    if ((s = allocate_splits(a, sp)) != Status::kSuccess) return s;
    layout_ = layout;
    dtype_ = a.q.dtype;
    q_heads_ = a.q_heads;
    mask_ = a.mask;
    requested_splits_ = a.splits;
    device_ = dev.device;
    choice_ = detail::attention::KernelChoice<Layout>{};
    choice_.path = AttentionPath::kShort;
    short_ = sc;
    maps_ = device::ChunkMapCache{};
    initialized_ = true;
    return Status::kSuccess;
  } else {
    (void)layout, (void)a, (void)dev;
    return Status::kErrorNotSupported;
  }
}

template <class Layout, Correction Mode, class Config>
Status AttentionPlan<Layout, Mode, Config>::allocate_splits(const AttentionArguments& a, detail::attention::SplitPlan sp) {
  release_workspace();
  sp.splits = sp.splits < 1 ? 1 : sp.splits;
  sp.num_q = a.num_q;
  if (sp.splits > 1) {
    // Per split and row (batch x q heads x num_q): O (D floats), LSE and 3 masses.
    const std::size_t rows =
        static_cast<std::size_t>(a.batch) * static_cast<std::size_t>(a.q_heads) * static_cast<std::size_t>(a.num_q);
    const std::size_t bytes = static_cast<std::size_t>(sp.splits) * rows *
                              static_cast<std::size_t>(kernels::common::split_floats_per_row(Layout::kHeadDim)) * sizeof(float);
    if (bytes > 0) {
      const Status s = device::check(cudaMalloc(&workspace_, bytes));
      if (s != Status::kSuccess) {
        workspace_ = nullptr;
        return s;
      }
      workspace_bytes_ = bytes;
    }
  }
  split_ = sp;
  return Status::kSuccess;
}

template <class Layout, Correction Mode, class Config>
Status AttentionPlan<Layout, Mode, Config>::combine(const AttentionArguments& a, int splits,
                                                    const kernels::common::AttentionParams<Layout>& p, cudaStream_t stream) {
  namespace dk = kernels::decode;
  dk::CombineParams cp{};
  cp.ws_o = p.ws_o;
  cp.ws_lse = p.ws_lse;
  cp.ws_mass = a.mass != nullptr ? p.ws_mass : nullptr;
  cp.splits = splits;
  cp.batch = a.batch;
  cp.q_heads = a.q_heads;
  cp.num_q = a.num_q;
  cp.q_lengths = a.q_lengths;
  cp.o = a.o.data;
  cp.o_stride[0] = a.o.batch_stride;
  cp.o_stride[1] = a.o.token_stride;
  cp.o_stride[2] = a.o.head_stride;
  cp.lse = a.lse;
  cp.mass = a.mass;
  const std::int64_t rows = static_cast<std::int64_t>(a.batch) * a.q_heads * a.num_q;
  const std::int64_t blocks = (rows + dk::kCombineWarps - 1) / dk::kCombineWarps;
  if (blocks > 0x7fffffff) return Status::kErrorNotSupported;
  device::LaunchShape cs;
  cs.grid = dim3(static_cast<unsigned>(blocks));
  cs.block = dim3(32 * dk::kCombineWarps);
  return device::launch(split_.combine, cs, stream, cp);
}

template <class Layout, Correction Mode, class Config>
Status AttentionPlan<Layout, Mode, Config>::run_short(const AttentionArguments& a, cudaStream_t stream) {
  namespace dk = kernels::decode;
  if constexpr (kSm80Implemented) {
    const int splits = split_.splits;
    if (splits > 1 && a.num_q > split_.num_q) return Status::kErrorInvalidArgument;
    dk::Params<Layout> pp = detail::attention::make_params(layout_, a);
    const std::int64_t packed = a.num_q * pp.q_per_kv;
    const std::int64_t row_blocks = (packed + dk::kRowsPerCta - 1) / dk::kRowsPerCta;
    if (row_blocks * splits > 0x7fffffff) return Status::kErrorNotSupported;
    pp.row_blocks = static_cast<int>(row_blocks);
    if (splits > 1) detail::attention::set_workspace(pp, workspace_, splits, a);
    device::LaunchShape shape;
    shape.grid = dim3(static_cast<unsigned>(row_blocks * splits), static_cast<unsigned>(layout_.shape.heads),
                      static_cast<unsigned>(a.batch));
    shape.block = dim3(static_cast<unsigned>(short_.threads));
    shape.smem_bytes = short_.smem_bytes;
    const Status s = device::launch(short_.kernel, shape, stream, pp);
    return s != Status::kSuccess || splits == 1 ? s : combine(a, splits, pp, stream);
  } else {
    (void)a, (void)stream;
    return Status::kErrorNotSupported;
  }
}

template <class Layout, Correction Mode, class Config>
Status AttentionPlan<Layout, Mode, Config>::run(const AttentionArguments& a, cudaStream_t stream) {
  if (!initialized_) return Status::kErrorInvalidArgument;
  if (a.q.dtype != dtype_ || a.q_heads != q_heads_ || a.mask != mask_ || a.splits != requested_splits_)
    return Status::kErrorInvalidArgument;
  const Status s = detail::attention::check_arguments(layout_, a);
  if (s != Status::kSuccess) return s;
  if (a.batch == 0 || a.num_q == 0) return Status::kSuccess;
  if (choice_.path == AttentionPath::kShort) return run_short(a, stream);
  kernels::common::AttentionParams<Layout> p = detail::attention::make_params(layout_, a);
  if (choice_.chunk_map_tokens > 0) {
    if (!maps_.matches(a.k_chunk, a.v_chunk, a.num_chunk))
      maps_.update(a.k_chunk, a.v_chunk, a.num_chunk, Layout::kHeadDim, layout_.shape.heads, a.batch,
                   choice_.chunk_map_tokens);
    if (maps_.ok) {
      for (int i = 0; i < 128; ++i) p.k_chunk_map[i] = maps_.k_map[i], p.v_chunk_map[i] = maps_.v_map[i];
      p.chunk_maps = 1;
    }
  }
  // Split-KV where the workspace holds this num_q (else unsplit: the kernels run either way).
  const int splits = split_.splits > 1 && a.num_q <= split_.num_q ? split_.splits : 1;
  const std::int64_t row_blocks = (a.num_q + choice_.rows - 1) / choice_.rows;
  if (row_blocks * splits > 0x7fffffff) return Status::kErrorNotSupported;
  if (splits > 1) {
    p.row_blocks = static_cast<int>(row_blocks);
    detail::attention::set_workspace(p, workspace_, splits, a);
  }
  device::LaunchShape shape;
  shape.grid = dim3(static_cast<unsigned>(row_blocks * splits), static_cast<unsigned>(a.q_heads), static_cast<unsigned>(a.batch));
  shape.block = dim3(static_cast<unsigned>(choice_.threads));
  shape.smem_bytes = choice_.smem_bytes;
  const Status ls = device::launch(choice_.kernel, shape, stream, p);
  return ls != Status::kSuccess || splits == 1 ? ls : combine(a, splits, p, stream);
}

/// Fused chunk attention in one call: an AttentionPlan<Layout, Mode> initialized and run
/// on `stream` (the device queries and function attributes of initialize() on every call;
/// an engine that calls it per layer and chunk keeps a plan instead).
template <Correction Mode, class Layout>
[[nodiscard]] Status attention(const Layout& layout, const AttentionArguments& a, cudaStream_t stream) {
  AttentionPlan<Layout, Mode> plan;
  const Status s = plan.initialize(layout, a);
  return s != Status::kSuccess ? s : plan.run(a, stream);
}

/// Which kernel attention<Mode>(layout, a, ...) runs on the current device, or the Status
/// that initialize() returns (through *status where given) when none runs.
template <Correction Mode, class Layout>
[[nodiscard]] AttentionPath attention_path(const Layout& layout, const AttentionArguments& a, Status* status = nullptr) {
  AttentionPlan<Layout, Mode> plan;
  const Status s = plan.initialize(layout, a);
  if (status != nullptr) *status = s;
  return plan.path();
}

/// Runtime dispatch: runs the first listed AttentionVariant whose layout matches `variant`
/// and whose correction is `mode` (the dtype is q's, bf16 or fp16, dispatched inside);
/// kErrorNotSupported when none is listed.
template <class... Variants>
[[nodiscard]] Status attention(TypeList<Variants...> list, const CacheVariant& variant, Correction mode,
                               const layout::CacheShape& shape, const AttentionArguments& a, cudaStream_t stream) {
  return dispatch(
      list,
      [&](auto tag) {
        using V = typename decltype(tag)::type;
        return variant_of<typename V::Layout>() == variant && V::kMode == mode;
      },
      [&](auto tag) {
        using V = typename decltype(tag)::type;
        using L = typename V::Layout;
        L l;
        const Status s = L::make(shape, &l);
        if (s != Status::kSuccess) return s;
        return attention<V::kMode>(l, a, stream);
      });
}

}  // namespace kvq

/// Explicit instantiation of one variant's plan and kernels (Layout must be a type alias
/// without commas).
#define KVQ_INSTANTIATE_ATTENTION(Layout, Mode) template class kvq::AttentionPlan<Layout, Mode, kvq::AutoConfig>;
/// Declaration of a variant instantiated in another translation unit: its kernels are not
/// compiled here.
#define KVQ_DECLARE_ATTENTION(Layout, Mode) extern template class kvq::AttentionPlan<Layout, Mode, kvq::AutoConfig>;
