// kvq's C ABI (kvq_c.h) over the variants of variants.cuh: a cache handle owns the plans
// of one layout; the attention kernels are compiled in the attention_*.cu files and only
// declared here.
#include "kvq_c.h"

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include <kvq/api/merge.cuh>
#include <kvq/math/rotation.hpp>
#include <kvq/reference/attention.hpp>
#include <kvq/reference/merge.hpp>
#include <kvq/reference/quantize_append.hpp>

#include "variants.cuh"

KVQ_C_FOR_EACH_ATTENTION_VARIANT(KVQ_DECLARE_ATTENTION)

static_assert(sizeof(kvq_c_append_args) == 128, "kvq_c_append_args: the Python binding packs 128 bytes");
static_assert(sizeof(kvq_c_attention_args) == 232, "kvq_c_attention_args: the Python binding packs 232 bytes");
static_assert(offsetof(kvq_c_attention_args, scale) == 200, "kvq_c_attention_args layout");
static_assert(offsetof(kvq_c_append_args, dtype) == 112, "kvq_c_append_args layout");
static_assert(sizeof(kvq_c_merge_args) == 144, "kvq_c_merge_args: the Python binding packs 144 bytes");
static_assert(offsetof(kvq_c_merge_args, num_parts) == 112, "kvq_c_merge_args layout");
static_assert(static_cast<int>(kvq::Status::kErrorCudaRuntime) == KVQ_C_ERROR_CUDA_RUNTIME, "status codes");
static_assert(static_cast<int>(kvq::kAppendErrorCapacity) == KVQ_C_APPEND_ERROR_CAPACITY &&
                  static_cast<int>(kvq::kAppendErrorPage) == KVQ_C_APPEND_ERROR_PAGE &&
                  static_cast<int>(kvq::kAppendErrorNegativeLength) == KVQ_C_APPEND_ERROR_NEGATIVE_LENGTH &&
                  static_cast<int>(kvq::kAttentionErrorPage) == KVQ_C_ATTENTION_ERROR_PAGE,
              "error bits");

namespace kvq_c {
namespace {

using kvq::Correction;
using kvq::DType;
using kvq::Mask;
using kvq::Status;

int code(Status s) { return static_cast<int>(s); }

bool to_dtype(int32_t d, DType* out) {
  if (d == KVQ_C_FP16) return *out = DType::kFloat16, true;
  if (d == KVQ_C_BF16) return *out = DType::kBFloat16, true;
  return false;
}

kvq::CacheVariant to_cache_variant(const kvq_c_variant& v) {
  kvq::CacheVariant c;
  c.k_bits = v.k_bits;
  c.k_group = v.k_group;
  c.k_granularity = v.k_granularity == KVQ_C_PER_CHANNEL ? kvq::Granularity::kPerChannel : kvq::Granularity::kPerToken;
  c.k_scale = kvq::ScaleType::kFloat16;
  c.v_bits = v.v_bits;
  c.v_group = v.v_group;
  c.v_scale = kvq::ScaleType::kFloat16;
  c.head_dim = v.head_dim;
  c.k_rotation = v.rotation == KVQ_C_ROTATION_HADAMARD            ? kvq::Rotation::kHadamard
                 : v.rotation == KVQ_C_ROTATION_HADAMARD_CENTERED ? kvq::Rotation::kHadamardCentered
                                                                  : kvq::Rotation::kNone;
  return c;
}

template <class Layout>
kvq_c_variant c_variant_of() {
  using K = typename Layout::KSpec;
  using V = typename Layout::VSpec;
  kvq_c_variant v{};
  v.k_bits = K::kBits;
  v.k_group = K::kGroupSize;
  v.k_granularity = K::kPerToken ? KVQ_C_PER_TOKEN : KVQ_C_PER_CHANNEL;
  v.v_bits = V::kBits;
  v.v_group = V::kGroupSize;
  v.head_dim = Layout::kHeadDim;
  v.rotation = Layout::kKeyRotation == kvq::Rotation::kHadamard           ? KVQ_C_ROTATION_HADAMARD
               : Layout::kKeyRotation == kvq::Rotation::kHadamardCentered ? KVQ_C_ROTATION_HADAMARD_CENTERED
                                                                          : KVQ_C_ROTATION_NONE;
  return v;
}

template <class Layout>
uint32_t mode_bits() {
  return (kHasAttention<Layout, Correction::kNone> ? 1u : 0u) | (kHasAttention<Layout, Correction::kTaylor2> ? 2u : 0u) |
         (kHasAttention<Layout, Correction::kTaylor4> ? 4u : 0u) | (kHasAttention<Layout, Correction::kExact> ? 8u : 0u);
}

/// Bit (1 << mode) per compiled mode of the layout, (1 << (8 + mode)) of its paged form.
template <class Layout>
uint32_t correction_bits() {
  return mode_bits<Layout>() | mode_bits<PagedViewOf<Layout>>() << 8;
}

kvq::Tensor4 tensor(const void* p, DType d, const int64_t* s) {
  return {const_cast<void*>(p), d, s[0], s[1], s[2]};
}

bool to_merge_dtype(int32_t d, DType* out) {
  if (d == KVQ_C_FP32) return *out = DType::kFloat32, true;
  return to_dtype(d, out);
}

/// kvq::MergeArguments of a kvq_c_merge_args (false where a dtype or the reserved word is bad).
bool merge_arguments(const kvq_c_merge_args& c, kvq::MergeArguments* a) {
  DType pd, od;
  if (!to_merge_dtype(c.parts_dtype, &pd) || !to_merge_dtype(c.dtype, &od) || c.reserved != 0) return false;
  a->num_parts = c.num_parts;
  a->batch = c.batch;
  a->heads = c.heads;
  a->num_q = c.num_q;
  a->head_dim = c.head_dim;
  a->o_parts = tensor(c.o_parts, pd, c.o_parts_stride);
  a->o_part_stride = c.o_part_stride;
  a->lse_parts = c.lse_parts;
  a->lse_part_stride = c.lse_part_stride;
  a->o = tensor(c.o, od, c.o_stride);
  a->lse = c.lse;
  return true;
}

/// Makes `device` current for the lifetime of the guard (restores the previous one).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    status_ = kvq::device::check(cudaGetDevice(&previous_));
    if (status_ == Status::kSuccess && previous_ != device) {
      status_ = kvq::device::check(cudaSetDevice(device));
      switched_ = status_ == Status::kSuccess;
    }
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(previous_);
  }
  Status status() const { return status_; }

 private:
  int previous_ = -1;
  bool switched_ = false;
  Status status_ = Status::kSuccess;
};

}  // namespace

/// The type-erased cache behind kvq_c_cache.
struct CacheBase {
  virtual ~CacheBase() = default;
  virtual int append(const kvq_c_append_args& a) = 0;
  virtual int attention(const kvq_c_attention_args& a) = 0;
  virtual int prepare(int correction, int mask, int q_heads) = 0;
  virtual int dequantize_host(const void* cache, const int32_t* lengths, const int32_t* tables, float* keys,
                              float* values, float* steps) const = 0;
  virtual int quantize_append_host(void* cache, int32_t* lengths, const int32_t* tables,
                                   const kvq_c_append_args& a) const = 0;
  virtual int attention_host(const int32_t* tables, const kvq_c_attention_args& a, double* out, double* lse,
                             double* mass) const = 0;
  bool host_only = false;
  int64_t bytes = 0;
  int64_t capacity = 0;
  int key_tokens_per_group = 1;
  int device = 0;
  int batch = 0;
  int heads = 0;
  int head_dim = 0;
  DType dtype = DType::kBFloat16;
  std::mutex mutex;
};

namespace {

/// A cache of Layout: a contiguous layout, or the PagedView of a paged layout (kPaged), bound
/// at creation to the tables it reads at every call.
template <class Layout>
class Cache final : public CacheBase {
 public:
  static constexpr int kD = Layout::kHeadDim;
  static constexpr bool kPaged = kvq::layout::is_paged_view_v<Layout>;

  Status initialize(const kvq::layout::CacheShape& shape, int dev) {
    if constexpr (kPaged) {
      return Status::kErrorInvalidArgument;
    } else {
      const Status s = Layout::make(shape, &layout_);
      return s != Status::kSuccess ? s : finish_initialize(dev);
    }
  }

  Status initialize_paged(const kvq::layout::PagedShape& shape, const int32_t* tables, int64_t table_stride, int dev) {
    if constexpr (!kPaged) {
      (void)shape, (void)tables, (void)table_stride, (void)dev;
      return Status::kErrorInvalidArgument;
    } else {
      typename Layout::Layout paged;
      Status s = Layout::Layout::make(shape, &paged);
      if (s != Status::kSuccess) return s;
      layout_ = Layout::bind(paged, tables, table_stride);
      if ((s = layout_.check()) != Status::kSuccess) return s;
      return finish_initialize(dev);
    }
  }

 private:
  Status finish_initialize(int dev) {
    Status s;
    bytes = layout_.bytes();
    capacity = layout_.shape.capacity;
    key_tokens_per_group = Layout::kKeyTokensPerGroup;
    device = dev;
    batch = layout_.shape.batch;
    heads = layout_.shape.heads;
    head_dim = kD;
    dtype = layout_.shape.tail_dtype;
    host_only = dev < 0;
    if (host_only) return Status::kSuccess;
    // The append plan needs only the layout and the dtype: placeholder (aligned, never
    // dereferenced) pointers stand for the buffers that every call passes.
    kvq::AppendArguments a;
    a.cache = reinterpret_cast<void*>(std::uintptr_t{256});
    a.lengths = reinterpret_cast<std::int32_t*>(std::uintptr_t{256});
    a.k = kvq::Tensor4{nullptr, dtype, 0, 0, 0};
    a.v = a.k;
    DeviceGuard guard(device);
    if ((s = guard.status()) != Status::kSuccess) return s;
    return append_plan_.initialize(layout_, a);
  }

  /// The layout reading `tables` (host copies of a paged cache's tables; null: the bound ones).
  Layout with_tables(const int32_t* tables) const {
    Layout l = layout_;
    if constexpr (kPaged) {
      if (tables != nullptr) l.tables = tables;
    } else {
      (void)tables;
    }
    return l;
  }

 public:
  int append(const kvq_c_append_args& c) override {
    DType d;
    if (host_only || !to_dtype(c.dtype, &d) || d != dtype || c.batch != batch || c.heads != heads || c.head_dim != kD)
      return code(Status::kErrorInvalidArgument);
    kvq::AppendArguments a;
    a.cache = c.cache;
    a.lengths = c.lengths;
    a.k = tensor(c.k, d, c.k_stride);
    a.v = tensor(c.v, d, c.v_stride);
    a.num_tokens = c.num_tokens;
    a.max_cache_length = c.max_cache_length;
    a.error = c.error;
    std::lock_guard<std::mutex> lock(mutex);
    DeviceGuard guard(device);
    if (guard.status() != Status::kSuccess) return code(guard.status());
    return code(append_plan_.run(a, static_cast<cudaStream_t>(c.stream)));
  }

  int attention(const kvq_c_attention_args& c) override {
    DType d;
    if (host_only || !to_dtype(c.dtype, &d) || d != dtype || c.batch != batch || c.kv_heads != heads || c.head_dim != kD)
      return code(Status::kErrorInvalidArgument);
    kvq::AttentionArguments a;
    a.cache = c.cache;
    a.batch = c.batch;
    a.q_heads = c.q_heads;
    a.num_q = c.num_q;
    a.num_chunk = c.num_chunk;
    a.q = tensor(c.q, d, c.q_stride);
    a.k_chunk = tensor(c.k_chunk, d, c.k_stride);
    a.v_chunk = tensor(c.v_chunk, d, c.v_stride);
    a.o = tensor(c.o, d, c.o_stride);
    a.cache_lengths = c.cache_lengths;
    a.scale = c.scale;
    if (c.mask != KVQ_C_MASK_NONE && c.mask != KVQ_C_MASK_CAUSAL_LAST_SEGMENT) return code(Status::kErrorInvalidArgument);
    a.mask = c.mask == KVQ_C_MASK_NONE ? Mask::kNone : Mask::kCausalLastSegment;
    a.lse = c.lse;
    a.mass = c.mass;
    a.error = c.error;
    a.max_cache_length = c.max_cache_length;
    std::lock_guard<std::mutex> lock(mutex);
    DeviceGuard guard(device);
    if (guard.status() != Status::kSuccess) return code(guard.status());
    auto stream = static_cast<cudaStream_t>(c.stream);
    switch (c.correction) {
      case KVQ_C_CORRECTION_NONE: return code(run<Correction::kNone>(none_, a, stream));
      case KVQ_C_CORRECTION_TAYLOR2: return code(run<Correction::kTaylor2>(taylor2_, a, stream));
      case KVQ_C_CORRECTION_TAYLOR4: return code(run<Correction::kTaylor4>(taylor4_, a, stream));
      case KVQ_C_CORRECTION_EXACT: return code(run<Correction::kExact>(exact_, a, stream));
      default: return code(Status::kErrorInvalidArgument);
    }
  }

  int prepare(int correction, int mask, int q_heads) override {
    if (host_only) return code(Status::kErrorInvalidArgument);
    if (mask != KVQ_C_MASK_NONE && mask != KVQ_C_MASK_CAUSAL_LAST_SEGMENT) return code(Status::kErrorInvalidArgument);
    // Placeholder arguments of the planned shape: an empty call (no query row) that fixes
    // batch, q heads, dtype and mask; initialize() launches nothing.
    kvq::AttentionArguments a;
    a.batch = batch;
    a.q_heads = q_heads;
    a.q = kvq::Tensor4{nullptr, dtype, 0, 0, 0};
    a.k_chunk = a.v_chunk = a.o = a.q;
    a.scale = 1.0f;
    a.mask = mask == KVQ_C_MASK_NONE ? Mask::kNone : Mask::kCausalLastSegment;
    std::lock_guard<std::mutex> lock(mutex);
    DeviceGuard guard(device);
    if (guard.status() != Status::kSuccess) return code(guard.status());
    switch (correction) {
      case KVQ_C_CORRECTION_NONE: return code(plan_for<Correction::kNone>(none_, a, nullptr));
      case KVQ_C_CORRECTION_TAYLOR2: return code(plan_for<Correction::kTaylor2>(taylor2_, a, nullptr));
      case KVQ_C_CORRECTION_TAYLOR4: return code(plan_for<Correction::kTaylor4>(taylor4_, a, nullptr));
      case KVQ_C_CORRECTION_EXACT: return code(plan_for<Correction::kExact>(exact_, a, nullptr));
      default: return code(Status::kErrorInvalidArgument);
    }
  }

  int dequantize_host(const void* cache, const int32_t* lengths, const int32_t* tables, float* keys, float* values,
                      float* steps) const override {
    if (cache == nullptr || lengths == nullptr || keys == nullptr || values == nullptr || steps == nullptr)
      return code(Status::kErrorInvalidArgument);
    const Layout l = with_tables(tables);
    const auto p = kvq::layout::CachePointers<Layout>::from_base(l, const_cast<void*>(cache));
    const int64_t cap = l.shape.capacity;
    for (int b = 0; b < batch; ++b) {
      const int64_t len = lengths[b];
      if (len < 0 || len > cap) return code(Status::kErrorInvalidArgument);
      if constexpr (kPaged) {
        if (!l.pages_valid(b, len)) return code(Status::kErrorInvalidArgument);
      }
      const int64_t qlen = Layout::quantized_length(len);
      for (int h = 0; h < heads; ++h) {
        for (int64_t t = 0; t < len; ++t) {
          const int64_t row = ((static_cast<int64_t>(b) * heads + h) * cap + t) * kD;
          if (t < qlen) {
            double k[kD];
            for (int c = 0; c < kD; ++c) {
              k[c] = kvq::reference::dequantized_key(l, cache, b, h, t, c, &steps[row + c]);
              values[row + c] = kvq::reference::dequantized_value(l, cache, b, h, t, c);
            }
            if constexpr (Layout::kRotatedKeys) kvq::math::hadamard_rotate_inverse<kD>(k);
            for (int c = 0; c < kD; ++c) {
              double x = k[c];
              if constexpr (Layout::kCenteredKeys) x += static_cast<double>(p.k_mean[l.k_mean_index(b, h, c)]);
              keys[row + c] = static_cast<float>(x);
            }
          } else {
            const int i = static_cast<int>(t - qlen);
            for (int c = 0; c < kD; ++c) {
              keys[row + c] = kvq::load_as_float(p.k_tail, l.shape.tail_dtype, l.tail_index(b, h, i, c));
              values[row + c] = kvq::load_as_float(p.v_tail, l.shape.tail_dtype, l.tail_index(b, h, i, c));
            }
          }
        }
      }
    }
    return code(Status::kSuccess);
  }

  int quantize_append_host(void* cache, int32_t* lengths, const int32_t* tables,
                           const kvq_c_append_args& c) const override {
    DType d;
    if (!to_dtype(c.dtype, &d) || d != dtype || c.batch != batch || c.heads != heads || c.head_dim != kD)
      return code(Status::kErrorInvalidArgument);
    return code(kvq::reference::quantize_append(with_tables(tables), cache, lengths, tensor(c.k, d, c.k_stride),
                                                tensor(c.v, d, c.v_stride), c.num_tokens));
  }

  int attention_host(const int32_t* tables, const kvq_c_attention_args& c, double* out, double* lse,
                     double* mass) const override {
    DType d;
    if (!to_dtype(c.dtype, &d) || d != dtype || c.batch != batch || c.kv_heads != heads || c.head_dim != kD)
      return code(Status::kErrorInvalidArgument);
    kvq::reference::AttentionArgs a;
    a.batch = c.batch;
    a.q_heads = c.q_heads;
    a.num_q = c.num_q;
    a.num_chunk = c.num_chunk;
    a.q = tensor(c.q, d, c.q_stride);
    a.k_chunk = tensor(c.k_chunk, d, c.k_stride);
    a.v_chunk = tensor(c.v_chunk, d, c.v_stride);
    a.cache_lengths = c.cache_lengths;
    a.scale = c.scale;
    a.mask = c.mask == KVQ_C_MASK_NONE ? Mask::kNone : Mask::kCausalLastSegment;
    switch (c.correction) {
      case KVQ_C_CORRECTION_NONE: a.correction = Correction::kNone; break;
      case KVQ_C_CORRECTION_TAYLOR2: a.correction = Correction::kTaylor2; break;
      case KVQ_C_CORRECTION_TAYLOR4: a.correction = Correction::kTaylor4; break;
      case KVQ_C_CORRECTION_EXACT: a.correction = Correction::kExact; break;
      default: return code(Status::kErrorInvalidArgument);
    }
    a.out = out;
    a.lse = lse;
    a.mass = mass;
    return code(kvq::reference::attention(with_tables(tables), c.cache, a));
  }

 private:
  template <Correction Mode>
  struct Entry {
    int q_heads;
    Mask mask;
    std::int64_t num_q;  ///< the num_q the plan was initialized with (0: the shared unsplit plan)
    kvq::AttentionPlan<Layout, Mode> plan;
  };
  /// Plans are kept per (q heads, mask, num_q): a plan chooses its kernel (the short-query
  /// kernel for 1..16 queries) and its splits and workspace for the num_q it was initialized
  /// with (kernels/decode/schedule.hpp, kernels/sm90/schedule.hpp). Beyond kMaxPlansPerKind
  /// num_q values of one (q heads, mask), calls with more than 16 query rows share the plan
  /// initialized with num_q 0 (the chunk kernels, unsplit), so that varying shapes do not
  /// grow the plans without bound.
  static constexpr std::size_t kMaxPlansPerKind = 8;
  struct Unsupported {};
  template <Correction Mode>
  using Plans = std::conditional_t<kHasAttention<Layout, Mode>, std::vector<std::unique_ptr<Entry<Mode>>>, Unsupported>;

  /// The plan of (q heads, mask) of one mode, initialized on first use with `a`; run
  /// (when `stream_or_null` is not null) is up to the caller.
  template <Correction Mode, class P>
  Status plan_for(P& plans, const kvq::AttentionArguments& a, kvq::AttentionPlan<Layout, Mode>** out) {
    if constexpr (!kHasAttention<Layout, Mode>) {
      (void)plans, (void)a, (void)out;
      return Status::kErrorNotSupported;
    } else {
      std::int64_t key = a.num_q;
      std::size_t same_kind = 0;
      for (auto& e : plans) {
        if (e->q_heads != a.q_heads || e->mask != a.mask) continue;
        ++same_kind;
        if (e->num_q == key) {
          if (out) *out = &e->plan;
          return Status::kSuccess;
        }
      }
      if (same_kind >= kMaxPlansPerKind && key > kvq::kernels::decode::kMaxShortQueries) {
        key = 0;
        for (auto& e : plans)
          if (e->q_heads == a.q_heads && e->mask == a.mask && e->num_q == 0) {
            if (out) *out = &e->plan;
            return Status::kSuccess;
          }
      }
      if (a.q_heads <= 0 || a.q_heads % heads != 0) return Status::kErrorInvalidArgument;
      std::unique_ptr<Entry<Mode>> e(new (std::nothrow) Entry<Mode>{a.q_heads, a.mask, key, {}});
      if (!e) return Status::kErrorInvalidArgument;
      kvq::AttentionArguments init = a;
      init.num_q = key;
      const Status s = e->plan.initialize(layout_, init);
      if (s != Status::kSuccess) return s;
      if (out) *out = &e->plan;
      plans.push_back(std::move(e));
      return Status::kSuccess;
    }
  }

  template <Correction Mode, class P>
  Status run(P& plans, const kvq::AttentionArguments& a, cudaStream_t stream) {
    if constexpr (!kHasAttention<Layout, Mode>) {
      (void)plans, (void)a, (void)stream;
      return Status::kErrorNotSupported;
    } else {
      kvq::AttentionPlan<Layout, Mode>* plan = nullptr;
      const Status s = plan_for<Mode>(plans, a, &plan);
      return s != Status::kSuccess ? s : plan->run(a, stream);
    }
  }

  Layout layout_{};
  kvq::AppendPlan<Layout> append_plan_;
  Plans<Correction::kNone> none_;
  Plans<Correction::kTaylor2> taylor2_;
  Plans<Correction::kTaylor4> taylor4_;
  Plans<Correction::kExact> exact_;
};

template <class... Ls>
constexpr int32_t count(kvq::TypeList<Ls...>) {
  return static_cast<int32_t>(sizeof...(Ls));
}

template <class... Ls>
void variant_at(kvq::TypeList<Ls...>, int32_t index, kvq_c_variant* out, uint32_t* bits) {
  int32_t i = 0;
  ((i++ == index ? (*out = c_variant_of<Ls>(), *bits = correction_bits<Ls>(), 0) : 0), ...);
}

}  // namespace
}  // namespace kvq_c

struct kvq_c_cache {
  std::unique_ptr<kvq_c::CacheBase> impl;
};

namespace kvq_c {
/// *out = a new handle owning `impl` where its creation succeeded (status s).
int32_t hand_out(kvq::Status s, std::unique_ptr<CacheBase> impl, kvq_c_cache** out) {
  if (s != kvq::Status::kSuccess) return static_cast<int32_t>(s);
  auto* h = new (std::nothrow) kvq_c_cache{std::move(impl)};
  if (h == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  *out = h;
  return KVQ_C_SUCCESS;
}
}  // namespace kvq_c

extern "C" {

int32_t kvq_c_abi_version(void) { return KVQ_C_ABI_VERSION; }
int32_t kvq_c_append_args_size(void) { return static_cast<int32_t>(sizeof(kvq_c_append_args)); }
int32_t kvq_c_attention_args_size(void) { return static_cast<int32_t>(sizeof(kvq_c_attention_args)); }

const char* kvq_c_status_string(int32_t status) {
  if (status < 0 || status > KVQ_C_ERROR_CUDA_RUNTIME) return "unknown status";
  return kvq::to_string(static_cast<kvq::Status>(status));
}

const char* kvq_c_last_cuda_error_string(void) { return cudaGetErrorString(kvq::last_cuda_error()); }

int32_t kvq_c_variant_count(void) { return kvq_c::count(kvq_c::Layouts{}); }

int32_t kvq_c_variant_get(int32_t index, kvq_c_variant* out, uint32_t* corrections) {
  if (out == nullptr || corrections == nullptr || index < 0 || index >= kvq_c_variant_count())
    return KVQ_C_ERROR_INVALID_ARGUMENT;
  kvq_c::variant_at(kvq_c::Layouts{}, index, out, corrections);
  return KVQ_C_SUCCESS;
}

int32_t kvq_c_cache_create(const kvq_c_variant* variant, int32_t batch, int32_t kv_heads, int64_t capacity, int32_t dtype,
                           int32_t device, kvq_c_cache** out) {
  if (out == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  *out = nullptr;
  kvq::DType d;
  if (variant == nullptr || !kvq_c::to_dtype(dtype, &d) || batch <= 0 || kv_heads <= 0 || capacity < 0 || device < -1)
    return KVQ_C_ERROR_INVALID_ARGUMENT;
  const kvq::layout::CacheShape shape{batch, kv_heads, capacity, d};
  std::unique_ptr<kvq_c::CacheBase> impl;
  const kvq::Status s =
      kvq::dispatch_layout(kvq_c::Layouts{}, kvq_c::to_cache_variant(*variant), [&](auto tag) -> kvq::Status {
        using L = typename decltype(tag)::type;
        std::unique_ptr<kvq_c::Cache<L>> c(new (std::nothrow) kvq_c::Cache<L>());
        if (!c) return kvq::Status::kErrorInvalidArgument;
        const kvq::Status r = c->initialize(shape, device);
        if (r == kvq::Status::kSuccess) impl = std::move(c);
        return r;
      });
  return kvq_c::hand_out(s, std::move(impl), out);
}

int32_t kvq_c_paged_cache_create(const kvq_c_variant* variant, int32_t batch, int32_t kv_heads, int32_t page_tokens,
                                 int64_t num_pages, int32_t max_pages_per_entry, const int32_t* tables,
                                 int64_t table_stride, int32_t dtype, int32_t device, kvq_c_cache** out) {
  if (out == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  *out = nullptr;
  kvq::DType d;
  if (variant == nullptr || !kvq_c::to_dtype(dtype, &d) || batch <= 0 || kv_heads <= 0 || page_tokens <= 0 ||
      num_pages < 0 || max_pages_per_entry <= 0 || tables == nullptr || table_stride < max_pages_per_entry ||
      device < -1)
    return KVQ_C_ERROR_INVALID_ARGUMENT;
  kvq::layout::PagedShape shape;
  shape.batch = batch;
  shape.heads = kv_heads;
  shape.page_tokens = page_tokens;
  shape.num_pages = num_pages;
  shape.max_pages_per_entry = max_pages_per_entry;
  shape.tail_dtype = d;
  std::unique_ptr<kvq_c::CacheBase> impl;
  const kvq::Status s =
      kvq::dispatch_layout(kvq_c::Layouts{}, kvq_c::to_cache_variant(*variant), [&](auto tag) -> kvq::Status {
        using L = typename decltype(tag)::type;
        if constexpr (!kvq_c::kHasPagedAttention<L>) {
          return kvq::Status::kErrorNotSupported;
        } else {
          std::unique_ptr<kvq_c::Cache<kvq_c::PagedViewOf<L>>> c(new (std::nothrow) kvq_c::Cache<kvq_c::PagedViewOf<L>>());
          if (!c) return kvq::Status::kErrorInvalidArgument;
          const kvq::Status r = c->initialize_paged(shape, tables, table_stride, device);
          if (r == kvq::Status::kSuccess) impl = std::move(c);
          return r;
        }
      });
  return kvq_c::hand_out(s, std::move(impl), out);
}

void kvq_c_cache_destroy(kvq_c_cache* cache) { delete cache; }

int64_t kvq_c_cache_bytes(const kvq_c_cache* cache) { return cache ? cache->impl->bytes : -1; }

int64_t kvq_c_cache_capacity(const kvq_c_cache* cache) { return cache ? cache->impl->capacity : -1; }

int32_t kvq_c_cache_key_tokens_per_group(const kvq_c_cache* cache) {
  return cache ? cache->impl->key_tokens_per_group : -1;
}

int32_t kvq_c_prepare_attention(kvq_c_cache* cache, int32_t correction, int32_t mask, int32_t q_heads) {
  if (cache == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  return cache->impl->prepare(correction, mask, q_heads);
}

int32_t kvq_c_append(kvq_c_cache* cache, const kvq_c_append_args* args) {
  if (cache == nullptr || args == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  return cache->impl->append(*args);
}

int32_t kvq_c_attention(kvq_c_cache* cache, const kvq_c_attention_args* args) {
  if (cache == nullptr || args == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  return cache->impl->attention(*args);
}

int32_t kvq_c_merge_args_size(void) { return static_cast<int32_t>(sizeof(kvq_c_merge_args)); }

int32_t kvq_c_merge_states(const kvq_c_merge_args* args) {
  kvq::MergeArguments a;
  if (args == nullptr || args->device < 0 || !kvq_c::merge_arguments(*args, &a)) return KVQ_C_ERROR_INVALID_ARGUMENT;
  const kvq::Status checked = kvq::merge_states_can_implement(a);
  if (checked != kvq::Status::kSuccess) return kvq_c::code(checked);
  if (a.batch == 0 || a.heads == 0 || a.num_q == 0) return KVQ_C_SUCCESS;
  kvq_c::DeviceGuard guard(args->device);
  if (guard.status() != kvq::Status::kSuccess) return kvq_c::code(guard.status());
  return kvq_c::code(kvq::merge_states(a, static_cast<cudaStream_t>(args->stream)));
}

int32_t kvq_c_merge_states_host(const kvq_c_merge_args* args, double* out, double* lse) {
  kvq::MergeArguments a;
  if (args == nullptr || out == nullptr || !kvq_c::merge_arguments(*args, &a)) return KVQ_C_ERROR_INVALID_ARGUMENT;
  a.o.data = out;  // the merge's checks see a placeholder output; the reference writes `out`
  a.o.dtype = kvq::DType::kFloat32;
  a.o.batch_stride = a.o.token_stride = a.o.head_stride = 0;
  a.lse = nullptr;
  const kvq::Status checked = kvq::merge_states_can_implement(a);
  if (checked != kvq::Status::kSuccess) return kvq_c::code(checked);
  kvq::reference::MergeArgs r;
  r.num_parts = a.num_parts;
  r.batch = a.batch;
  r.heads = a.heads;
  r.num_q = a.num_q;
  r.dim = a.head_dim;
  r.o_parts = a.o_parts;
  r.o_part_stride = a.o_part_stride;
  r.lse_parts = a.lse_parts;
  r.lse_part_stride = a.lse_part_stride;
  r.out = out;
  r.lse = lse;
  return kvq_c::code(kvq::reference::merge_states(r));
}

int32_t kvq_c_dequantize_host(const kvq_c_cache* cache, const void* host_cache, const int32_t* host_lengths,
                              const int32_t* host_tables, float* keys, float* values, float* key_steps) {
  if (cache == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  return cache->impl->dequantize_host(host_cache, host_lengths, host_tables, keys, values, key_steps);
}

int32_t kvq_c_quantize_append_host(const kvq_c_cache* cache, void* host_cache, int32_t* host_lengths,
                                   const int32_t* host_tables, const kvq_c_append_args* args) {
  if (cache == nullptr || args == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  return cache->impl->quantize_append_host(host_cache, host_lengths, host_tables, *args);
}

int32_t kvq_c_attention_host(const kvq_c_cache* cache, const int32_t* host_tables, const kvq_c_attention_args* args,
                             double* out, double* lse, double* mass) {
  if (cache == nullptr || args == nullptr || out == nullptr) return KVQ_C_ERROR_INVALID_ARGUMENT;
  return cache->impl->attention_host(host_tables, *args, out, lse, mass);
}

int32_t kvq_c_rotate_rows_host(int32_t head_dim, double* rows, int64_t n) {
  if (rows == nullptr || n < 0) return KVQ_C_ERROR_INVALID_ARGUMENT;
  if (head_dim == 64) {
    for (int64_t i = 0; i < n; ++i) kvq::math::hadamard_rotate<64>(rows + i * 64);
  } else if (head_dim == 128) {
    for (int64_t i = 0; i < n; ++i) kvq::math::hadamard_rotate<128>(rows + i * 128);
  } else {
    return KVQ_C_ERROR_NOT_SUPPORTED;
  }
  return KVQ_C_SUCCESS;
}

}  // extern "C"
