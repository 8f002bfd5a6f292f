// Host API of the fused chunk attention: queries [batch, num_q, q_heads, D] attend to
// [quantized cache ; cache tail ; current chunk] with the Jensen correction of the
// quantized keys, with the semantics of kvq::reference::attention.
//
//   kvq::AttentionArguments a;  // device pointers, shapes, strides
//   kvq::Status s = kvq::attention<Layout, kvq::Correction::kTaylor2>(layout, a, stream);
//
// Two kernels implement it: the Hopper kernel (kernels/sm90/attention.cuh, wgmma,
// warp-specialised) for PerToken keys on compute capability 9.0 when the caller is
// compiled for sm_90a, and the mma.sync kernel (kernels/sm80/attention.cuh, sm_80+)
// for everything else; attention_path() tells which one a call uses.
//
// Every entry point returns a Status and never throws, prints or exits. Bad arguments
// and unsupported variants are refused before any launch; a failed launch returns
// kErrorCudaRuntime (the error is read and cleared with cudaGetLastError).
//
// Build time: each attention<Layout, Mode> compiles two kernels (bf16 and fp16
// inputs). Instantiate each variant once, in its own translation unit, with
// KVQ_INSTANTIATE_ATTENTION(Layout, Mode), and declare it elsewhere with
// KVQ_DECLARE_ATTENTION(Layout, Mode) (Layout must be a type alias: no commas).
#pragma once

#include <cuda.h>  // CUtensorMap and its enums (types only: the encoder comes through the runtime)
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvq/kernels/sm80/attention.cuh"
#include "kvq/kernels/sm90/attention.cuh"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"
#include "kvq/spec/variant.hpp"
#include "kvq/status.hpp"

namespace kvq {

/// Arguments of one attention call. All pointers are device pointers.
struct AttentionArguments {
  int batch = 0;              ///< must equal the cache layout's batch
  int q_heads = 0;            ///< Hq, a multiple of the cache's kv heads (GQA: q head h reads kv head h / (Hq/Hkv))
  std::int64_t num_q = 0;     ///< query rows per batch entry (max over the batch)
  std::int64_t num_chunk = 0; ///< current-chunk tokens per batch entry (max over the batch)
  Tensor4 q;                  ///< [batch, num_q, q_heads, D], bf16 or fp16
  Tensor4 k_chunk;            ///< [batch, num_chunk, kv heads, D], q's dtype
  Tensor4 v_chunk;            ///< [batch, num_chunk, kv heads, D], q's dtype
  Tensor4 o;                  ///< [batch, num_q, q_heads, D], q's dtype; rows >= q length are not written
  const void* cache = nullptr;                  ///< base of the cache allocation (layout.bytes() bytes)
  const std::int32_t* cache_lengths = nullptr;  ///< [batch] cached tokens; null = empty cache (as the reference)
  const std::int32_t* q_lengths = nullptr;      ///< [batch] valid query rows; null = num_q for all
  const std::int32_t* chunk_lengths = nullptr;  ///< [batch] valid chunk tokens; null = num_chunk for all
  float scale = 0.0f;         ///< softmax scale (> 0), usually 1/sqrt(D)
  Mask mask = Mask::kNone;
  float* lse = nullptr;       ///< optional [batch, q_heads, num_q] float32, natural log
  float* mass = nullptr;      ///< optional [batch, q_heads, num_q, 3] float32: softmax mass per segment
  /// Optional host upper bound of the cache lengths (<= capacity); -1 = the capacity.
  /// Device lengths are clamped into [0, bound] (and q/chunk lengths into [0, num_q] /
  /// [0, num_chunk]): the kernel never reads outside the cache whatever the device holds.
  std::int64_t max_cache_length = -1;
};

/// A (layout, correction) pair for the runtime dispatch.
template <class Layout_, Correction Mode_>
struct AttentionVariant {
  using Layout = Layout_;
  static constexpr Correction kMode = Mode_;
};

/// Whether the mma.sync kernel (every architecture) implements a (layout, correction)
/// pair (compile time): head dim 64 or 128, groups of at least 8, code words of a multiple
/// of 4 codes (2, 4 and 8 bits), and Exact only with PerChannel keys.
/// kernels::sm90::variant_supported says the same of the Hopper kernel; attention<> refuses
/// a pair that no kernel implements with Status::kErrorNotSupported.
template <class Layout, Correction Mode>
constexpr bool attention_variant_supported() {
  constexpr int kD = Layout::kHeadDim;
  using K = typename Layout::KSpec;
  using V = typename Layout::VSpec;
  return (kD == 64 || kD == 128) && K::kGroupSize >= 8 && V::kGroupSize >= 8 && (32 / K::kBits) % 4 == 0 &&
         (32 / V::kBits) % 4 == 0 && (kD * K::kBits) % 128 == 0 && (kD * V::kBits) % 128 == 0 &&
         !(K::kPerToken && Mode == Correction::kExact);
}

namespace detail {

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
inline bool strides_aligned(const Tensor4& t) {
  return t.batch_stride % 8 == 0 && t.token_stride % 8 == 0 && t.head_stride % 8 == 0;
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
  return p;
}

/// cuTensorMapEncodeTiled from the driver, looked up once through the runtime (no link
/// against libcuda); null where the driver does not provide it.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
#if CUDART_VERSION >= 12050
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

/// A TMA descriptor of chunk tensor t (16-bit elements, [batch][num_chunk][kv heads][D]
/// with its strides) read in boxes of 64 channels x `box_tokens` tokens with the 128-byte
/// swizzle; false (nothing written) where the driver refuses it.
inline bool encode_chunk_map(unsigned char (&out)[128], const Tensor4& t, int head_dim, std::int64_t tokens, int heads,
                             int batch, int box_tokens) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || tokens <= 0 || heads <= 0 || batch <= 0) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(tokens),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(t.token_stride) * 2, static_cast<cuuint64_t>(t.head_stride) * 2,
                                 static_cast<cuuint64_t>(t.batch_stride) * 2};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_tokens), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  static_assert(sizeof(map) == sizeof(out), "a CUtensorMap is 128 bytes");
  if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, t.data, dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
    return false;
  std::memcpy(out, &map, sizeof(map));
  return true;
}

/// Tr::kChunkMapTokens where the kernel reads the chunk through TMA descriptors (0: not).
template <class Tr, class = void>
struct ChunkMapTokens {
  static constexpr int value = 0;
};
template <class Tr>
struct ChunkMapTokens<Tr, std::void_t<decltype(Tr::kChunkMapTokens)>> {
  static constexpr int value = Tr::kChunkMapTokens;
};

/// Launches `kernel` (either kernel) with Tr's threads and shared memory over the grid
/// (ceil(num_q / Tr::kRows), q_heads, batch).
template <class Tr, class Kernel>
Status launch_kernel(Kernel kernel, const typename Tr::Layout& layout, const AttentionArguments& a, cudaStream_t stream) {
  kernels::common::AttentionParams<typename Tr::Layout> p = make_params(layout, a);
  if constexpr (ChunkMapTokens<Tr>::value > 0) {
    // Both or neither: the kernel copies the chunk with cp.async where chunk_maps is 0.
    constexpr int kBox = ChunkMapTokens<Tr>::value;
    const int heads = layout.shape.heads;
    p.chunk_maps = encode_chunk_map(p.k_chunk_map, a.k_chunk, Tr::kHeadDim, a.num_chunk, heads, a.batch, kBox) &&
                           encode_chunk_map(p.v_chunk_map, a.v_chunk, Tr::kHeadDim, a.num_chunk, heads, a.batch, kBox)
                       ? 1
                       : 0;
  }
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes) != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::kErrorCudaRuntime;
  }
  const dim3 grid(static_cast<unsigned>((a.num_q + Tr::kRows - 1) / Tr::kRows), static_cast<unsigned>(a.q_heads),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kErrorCudaRuntime;
}

template <class Tr>
Status launch_attention(const typename Tr::Layout& layout, const AttentionArguments& a, cudaStream_t stream) {
  return launch_kernel<Tr>(kernels::sm80::attention_kernel<Tr>, layout, a, stream);
}

/// Whether this translation unit was compiled with device code for compute capability 9.0
/// (nvcc's __CUDA_ARCH_LIST__); KVQ_DISABLE_SM90_PATH turns the Hopper path off.
constexpr bool sm90_compiled() {
#if defined(__CUDA_ARCH_LIST__) && !defined(KVQ_DISABLE_SM90_PATH)
  constexpr int archs[] = {__CUDA_ARCH_LIST__};
  for (int x : archs)
    if (x == 900) return true;
#endif
  return false;
}

/// Whether the Hopper kernel of Tr can run on the current device: a 9.0 device and kernel
/// code built for sm_90a (built for plain sm_90 or from PTX of another architecture, the
/// kernel is only a trap: then its register count gives it away and the mma.sync kernel
/// is used instead). The answer per kernel is computed once.
template <class Tr>
bool sm90_kernel_usable() {
  if constexpr (!sm90_compiled()) {
    return false;
  } else {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (major != 9 || minor != 0) return false;
    static const bool built = [] {
      cudaFuncAttributes attr{};
      if (cudaFuncGetAttributes(&attr, kernels::sm90::attention_kernel<Tr>) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
      }
      return attr.numRegs >= 64;  // the real kernel runs at its launch bound (168)
    }();
    return built;
  }
}

/// Device checks: compute capability 8.0+ and enough opt-in shared memory.
inline Status check_device(int smem_bytes) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::kErrorNoDevice;
  }
  int major = 0, smem = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::kErrorCudaRuntime;
  }
  if (major < 8 || smem < smem_bytes) return Status::kErrorNotSupported;
  return Status::kSuccess;
}

template <class Layout, Correction Mode>
inline constexpr bool sm90_variant_supported_v = kernels::sm90::variant_supported<Layout, Mode>();

template <class Config>
constexpr bool is_sm90_config() {
  return kernels::sm90::IsConfig<Config>::value;
}

/// can_implement with an explicit kernel choice: an mma.sync tile configuration (see
/// kernels::sm80::TileConfig) or a kernels::sm90::Config (the Hopper kernel: refused with
/// kErrorNotSupported where it cannot run or does not implement the variant).
template <class Layout, Correction Mode, class Config>
Status can_implement_with_config(const Layout& layout, const AttentionArguments& a) {
  constexpr bool kSupported = is_sm90_config<Config>() ? sm90_variant_supported_v<Layout, Mode>
                                                       : attention_variant_supported<Layout, Mode>();
  if constexpr (!kSupported) {
    (void)layout, (void)a;
    return Status::kErrorNotSupported;
  } else {
    // Shapes and lengths.
    if (a.batch < 0 || a.q_heads <= 0 || a.num_q < 0 || a.num_chunk < 0) return Status::kErrorInvalidArgument;
    if (a.batch != layout.shape.batch || layout.shape.heads <= 0 || a.q_heads % layout.shape.heads != 0)
      return Status::kErrorInvalidArgument;
    if (a.max_cache_length > layout.shape.capacity) return Status::kErrorInvalidArgument;
    if (!(a.scale > 0.0f) || !std::isfinite(a.scale)) return Status::kErrorInvalidArgument;
    if (a.mask != Mask::kNone && a.mask != Mask::kCausalLastSegment) return Status::kErrorInvalidArgument;
    if (a.q_heads > 65535 || a.batch > 65535) return Status::kErrorNotSupported;
    if (a.num_q > (std::int64_t{1} << 31) * 64) return Status::kErrorNotSupported;
    // Element types.
    if (a.q.dtype != DType::kBFloat16 && a.q.dtype != DType::kFloat16) return Status::kErrorNotSupported;
    const bool has_q = a.batch > 0 && a.num_q > 0;
    const bool has_chunk = a.batch > 0 && a.num_chunk > 0;
    if (has_q && a.o.dtype != a.q.dtype) return Status::kErrorInvalidArgument;
    if (has_chunk && (a.k_chunk.dtype != a.q.dtype || a.v_chunk.dtype != a.q.dtype)) return Status::kErrorInvalidArgument;
    if (Layout::kHasTail && a.cache_lengths != nullptr && layout.shape.tail_dtype != a.q.dtype)
      return Status::kErrorNotSupported;
    // Pointers.
    if (has_q && (a.q.data == nullptr || a.o.data == nullptr)) return Status::kErrorInvalidArgument;
    if (has_chunk && (a.k_chunk.data == nullptr || a.v_chunk.data == nullptr)) return Status::kErrorInvalidArgument;
    if (a.cache_lengths != nullptr && a.cache == nullptr) return Status::kErrorInvalidArgument;
    // Alignment: 16-byte loads and 4-byte stores of 16-bit rows.
    if (has_q && (!aligned16(a.q.data) || !aligned16(a.o.data) || !strides_aligned(a.q) || !strides_aligned(a.o)))
      return Status::kErrorMisaligned;
    if (has_chunk && (!aligned16(a.k_chunk.data) || !aligned16(a.v_chunk.data) || !strides_aligned(a.k_chunk) ||
                      !strides_aligned(a.v_chunk)))
      return Status::kErrorMisaligned;
    if (a.cache != nullptr && !aligned16(a.cache)) return Status::kErrorMisaligned;
    if (a.lse != nullptr && (reinterpret_cast<std::uintptr_t>(a.lse) & 3u) != 0) return Status::kErrorMisaligned;
    if (a.mass != nullptr && (reinterpret_cast<std::uintptr_t>(a.mass) & 3u) != 0) return Status::kErrorMisaligned;
    if constexpr (is_sm90_config<Config>()) {
      using Tr = kernels::sm90::Traits<Layout, Mode, DType::kBFloat16, Config>;
      const Status s = check_device(Tr::kSmemBytes);
      if (s != Status::kSuccess) return s;
      using Tr16 = kernels::sm90::Traits<Layout, Mode, DType::kFloat16, Config>;
      const bool usable = a.q.dtype == DType::kBFloat16 ? sm90_kernel_usable<Tr>() : sm90_kernel_usable<Tr16>();
      return usable ? Status::kSuccess : Status::kErrorNotSupported;
    } else {
      using Tr = kernels::sm80::Traits<Layout, Mode, DType::kBFloat16, Config>;
      return check_device(Tr::kSmemBytes);
    }
  }
}

/// attention with an explicit tile configuration (tests and benchmarks compare configurations).
template <class Layout, Correction Mode, class Config>
Status attention_with_config(const Layout& layout, const AttentionArguments& a, cudaStream_t stream) {
  const Status s = can_implement_with_config<Layout, Mode, Config>(layout, a);
  if (s != Status::kSuccess) return s;
  if constexpr (is_sm90_config<Config>()) {
    if constexpr (sm90_variant_supported_v<Layout, Mode>) {
      if (a.batch == 0 || a.num_q == 0) return Status::kSuccess;
      if (a.q.dtype == DType::kBFloat16) {
        using Tr = kernels::sm90::Traits<Layout, Mode, DType::kBFloat16, Config>;
        return launch_kernel<Tr>(kernels::sm90::attention_kernel<Tr>, layout, a, stream);
      }
      using Tr = kernels::sm90::Traits<Layout, Mode, DType::kFloat16, Config>;
      return launch_kernel<Tr>(kernels::sm90::attention_kernel<Tr>, layout, a, stream);
    } else {
      (void)stream;
      return Status::kErrorNotSupported;
    }
  } else if constexpr (attention_variant_supported<Layout, Mode>()) {
    if (a.batch == 0 || a.num_q == 0) return Status::kSuccess;
    if (a.q.dtype == DType::kBFloat16) {
      return launch_attention<kernels::sm80::Traits<Layout, Mode, DType::kBFloat16, Config>>(layout, a, stream);
    }
    return launch_attention<kernels::sm80::Traits<Layout, Mode, DType::kFloat16, Config>>(layout, a, stream);
  } else {
    (void)stream;
    return Status::kErrorNotSupported;
  }
}

}  // namespace detail

/// Checks the arguments of attention<Layout, Mode> without launching anything.
template <class Layout, Correction Mode>
[[nodiscard]] Status can_implement(const Layout& layout, const AttentionArguments& a) {
  return detail::can_implement_with_config<Layout, Mode, kernels::sm80::DefaultTileConfig<Layout::kHeadDim>>(layout, a);
}

/// Which kernel attention<Layout, Mode> runs for these arguments on the current device:
/// the Hopper kernel (in its configuration kernels::sm90::DefaultConfig<Layout, Mode>) when
/// it implements the variant and can run here, else the mma.sync kernel.
enum class AttentionPath { kMmaSync, kSm90 };
template <class Layout, Correction Mode>
[[nodiscard]] AttentionPath attention_path(const Layout& layout, const AttentionArguments& a) {
  if constexpr (kernels::sm90::variant_supported<Layout, Mode>()) {
    if (detail::can_implement_with_config<Layout, Mode, kernels::sm90::DefaultConfig<Layout, Mode>>(layout, a) ==
        Status::kSuccess)
      return AttentionPath::kSm90;
  }
  (void)layout, (void)a;
  return AttentionPath::kMmaSync;
}

/// Fused chunk attention over the cache described by `layout` (at a.cache) and the
/// current chunk, enqueued on `stream`. On an H100/H200 (compute capability 9.0, code
/// built for sm_90a) the variants the Hopper kernel implements run on it (warpgroup MMA,
/// warp-specialised); everything else runs on the mma.sync kernel. Same arguments, same
/// results within the stated tolerances.
template <class Layout, Correction Mode>
[[nodiscard]] Status attention(const Layout& layout, const AttentionArguments& a, cudaStream_t stream) {
  if (attention_path<Layout, Mode>(layout, a) == AttentionPath::kSm90)
    return detail::attention_with_config<Layout, Mode, kernels::sm90::DefaultConfig<Layout, Mode>>(layout, a, stream);
  return detail::attention_with_config<Layout, Mode, kernels::sm80::DefaultTileConfig<Layout::kHeadDim>>(layout, a, stream);
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
        return attention<L, V::kMode>(l, a, stream);
      });
}

}  // namespace kvq

/// Explicit instantiation of one variant (Layout must be a type alias without commas).
#define KVQ_INSTANTIATE_ATTENTION(Layout, Mode) \
  template kvq::Status kvq::attention<Layout, Mode>(const Layout&, const kvq::AttentionArguments&, cudaStream_t);
/// Declaration of a variant instantiated in another translation unit.
#define KVQ_DECLARE_ATTENTION(Layout, Mode) \
  extern template kvq::Status kvq::attention<Layout, Mode>(const Layout&, const kvq::AttentionArguments&, cudaStream_t);
