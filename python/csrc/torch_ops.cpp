// libkvq_torch: C++ kernels of the kvq torch ops (kvq::append, kvq::attention,
// kvq::merge_states), registered for the CUDA and CPU dispatch keys through PyTorch's stable
// C ABI (torch/csrc/stable), so that one build serves torch 2.10 and later. The Python package
// defines the schemas and fake implementations (kvq/ops.py), loads this library where it was
// built, and falls back to its Python kernels otherwise: both check the same things and
// enqueue the same C ABI calls; this one saves the dispatcher's crossing into Python and the
// Python checks and allocations (host time per call).
//
// It does not link libkvq_c: the package hands it the C ABI's functions of the libkvq_c it
// loaded (kvq_torch_set_functions) and registers each cache (kvq_torch_bind), so that handles
// and functions come from one library. A refused argument throws std::invalid_argument
// (Python ValueError), a refused or failed C call std::runtime_error (RuntimeError). The
// package's methods call the Python kernel directly in eager mode (typed errors) and the ops
// under tracing, so these kernels serve compiled graphs and direct torch.ops.kvq calls.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kvq_c.h"

#define KVQ_TORCH_API extern "C" __attribute__((visibility("default")))

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

/// The C ABI functions of the libkvq_c the package loaded.
struct Functions {
  int32_t (*append)(kvq_c_cache*, const kvq_c_append_args*) = nullptr;
  int32_t (*attention)(kvq_c_cache*, const kvq_c_attention_args*) = nullptr;
  int32_t (*merge)(const kvq_c_merge_args*) = nullptr;
  int32_t (*append_host)(const kvq_c_cache*, void*, int32_t*, const int32_t*, const kvq_c_append_args*) = nullptr;
  int32_t (*attention_host)(const kvq_c_cache*, const int32_t*, const kvq_c_attention_args*, double*, double*,
                            double*) = nullptr;
  int32_t (*merge_host)(const kvq_c_merge_args*, double*, double*) = nullptr;
  const char* (*status_string)(int32_t) = nullptr;
  const char* (*cuda_error_string)() = nullptr;
};
Functions g_fn;

/// What the checks need to know of a cache (kvq.cache.CacheMeta).
struct Entry {
  kvq_c_cache* handle = nullptr;
  int32_t device = 0;  ///< CUDA device index; -1: a CPU cache (the C reference)
  int32_t batch = 0, kv_heads = 0, head_dim = 0;
  int64_t capacity = 0, nbytes = 0;
  ScalarType dtype = ScalarType::BFloat16;
  int32_t dtype_code = KVQ_C_BF16;
  uint32_t corrections = 0;  ///< bit (1 << mode) per compiled correction
  int32_t table_columns = 0;  ///< paged: max_pages_per_entry; 0: contiguous
};
std::mutex g_mutex;
std::vector<Entry> g_entries;  ///< by cache_id; handle null once unbound

Entry entry_of(int64_t cache_id) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (cache_id < 0 || cache_id >= static_cast<int64_t>(g_entries.size()) || g_entries[cache_id].handle == nullptr)
    throw std::invalid_argument("kvq: cache_id " + std::to_string(cache_id) + " names no live kvq cache");
  return g_entries[cache_id];
}

[[noreturn]] void refuse(const std::string& what) { throw std::invalid_argument("kvq: " + what); }

void check_status(int32_t s, const char* where) {
  if (s == KVQ_C_SUCCESS) return;
  std::string msg = std::string(where) + " failed: " + (g_fn.status_string ? g_fn.status_string(s) : "error") +
                    " (kvq status " + std::to_string(s) + ")";
  if (s == KVQ_C_ERROR_CUDA_RUNTIME && g_fn.cuda_error_string) msg += std::string(": ") + g_fn.cuda_error_string();
  throw std::runtime_error(msg);
}

std::string where(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  return t.is_cuda() ? "cuda:" + std::to_string(t.get_device_index()) : "another device";
}

std::string cache_device(const Entry& e) { return e.device < 0 ? "cpu" : "cuda:" + std::to_string(e.device); }

bool on_cache_device(const Tensor& t, const Entry& e) {
  return e.device < 0 ? t.is_cpu() : t.is_cuda() && t.get_device_index() == e.device;
}

const char* dtype_name(ScalarType s) {
  switch (s) {
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Half: return "float16";
    case ScalarType::Float: return "float32";
    case ScalarType::Int: return "int32";
    case ScalarType::Byte: return "uint8";
    default: return "another dtype";
  }
}

/// The cache's buffer, lengths, error word and block table (shapes, dtypes, devices).
void check_cache_tensors(const Entry& e, int64_t cache_id, const Tensor& cache, const Tensor& lengths,
                         const Tensor& error, const std::optional<Tensor>& table) {
  if (cache.dim() != 1 || cache.size(0) != e.nbytes || cache.scalar_type() != ScalarType::Byte ||
      !on_cache_device(cache, e) || (cache.numel() > 0 && cache.stride(0) != 1))
    refuse("the cache tensor must be the uint8 [" + std::to_string(e.nbytes) + "] buffer on " + cache_device(e) +
           " of cache_id " + std::to_string(cache_id));
  if (lengths.dim() != 1 || lengths.size(0) != e.batch || lengths.scalar_type() != ScalarType::Int ||
      !on_cache_device(lengths, e) || (e.batch > 1 && lengths.stride(0) != 1))
    refuse("the lengths tensor must be int32 [" + std::to_string(e.batch) + "] on " + cache_device(e));
  if (error.dim() != 1 || error.size(0) != 1 || error.scalar_type() != ScalarType::Int || !on_cache_device(error, e))
    refuse("the error tensor must be int32 [1] on " + cache_device(e));
  if (table.has_value() != (e.table_columns > 0))
    refuse("cache_id " + std::to_string(cache_id) + " is " + (e.table_columns > 0 ? "paged" : "contiguous") +
           ": block_table must be " + (e.table_columns > 0 ? "its int32 table" : "None"));
  if (table.has_value()) {
    const Tensor& t = *table;
    if (t.dim() != 2 || t.size(0) != e.batch || t.size(1) != e.table_columns || t.scalar_type() != ScalarType::Int ||
        !on_cache_device(t, e))
      refuse("the block_table tensor must be int32 [" + std::to_string(e.batch) + ", " +
             std::to_string(e.table_columns) + "] on " + cache_device(e));
  }
}

/// One [batch, tokens, heads, head_dim] activation (kvq/_validate.py check_tensor): returns
/// the (batch, token, head) strides, 0 along dimensions of size 1.
std::array<int64_t, 3> check_activation(const char* name, const Tensor& t, const Entry& e, int64_t heads,
                                        int64_t tokens) {
  if (!on_cache_device(t, e)) refuse(std::string(name) + " is on " + where(t) + " but the cache is on " + cache_device(e));
  if (t.scalar_type() != e.dtype)
    refuse(std::string(name) + " has dtype " + dtype_name(t.scalar_type()) + " but the cache was made for " +
           dtype_name(e.dtype));
  if (t.dim() != 4) refuse(std::string(name) + " must be 4-D [batch, tokens, heads, head_dim]");
  if (t.size(0) != e.batch)
    refuse(std::string(name) + " has batch " + std::to_string(t.size(0)) + " but the cache has batch " +
           std::to_string(e.batch));
  if (t.size(3) != e.head_dim)
    refuse(std::string(name) + " has head_dim " + std::to_string(t.size(3)) + " but the cache has head_dim " +
           std::to_string(e.head_dim));
  if (heads >= 0 && t.size(2) != heads)
    refuse(std::string(name) + " has " + std::to_string(t.size(2)) + " heads, expected " + std::to_string(heads));
  if (tokens >= 0 && t.size(1) != tokens)
    refuse(std::string(name) + " has " + std::to_string(t.size(1)) + " tokens, expected " + std::to_string(tokens));
  if (t.size(3) > 1 && t.stride(3) != 1) refuse(std::string(name) + " must have a unit stride along head_dim");
  std::array<int64_t, 3> s{};
  for (int i = 0; i < 3; ++i) {
    if (t.stride(i) < 0) refuse(std::string(name) + " has a negative stride");
    s[i] = t.size(i) > 1 ? t.stride(i) : 0;
  }
  return s;
}

/// Attention reads q, k_chunk, v_chunk and writes o 16 bytes at a time.
void check_vector_access(const char* name, const Tensor& t, const std::array<int64_t, 3>& s) {
  static const char* dims[3] = {"batch", "token", "head"};
  for (int i = 0; i < 3; ++i)
    if (s[i] % 8 != 0)
      refuse(std::string(name) + "'s " + dims[i] + " stride " + std::to_string(s[i]) +
             " is not a multiple of 8 elements (16 bytes); call .contiguous()");
  if (t.numel() > 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0)
    refuse(std::string(name) + "'s data is not 16-byte aligned (a view at an odd offset?); call .contiguous()");
}

void* current_stream(const Entry& e) {
  if (e.device < 0) return nullptr;
  void* s = nullptr;
  if (aoti_torch_get_current_cuda_stream(e.device, &s) != AOTI_TORCH_SUCCESS)
    throw std::runtime_error("kvq: cannot read torch's current CUDA stream");
  return s;
}

/// An uninitialized dense tensor on CUDA device `device` (-1: the CPU), made by the allocator
/// directly (aoti_torch_empty_strided): new_empty goes through the dispatcher, a few times the
/// host time.
Tensor empty_on(int32_t device, std::initializer_list<int64_t> sizes, int32_t dtype) {
  int64_t size[4] = {}, stride[4] = {};
  const int64_t n = static_cast<int64_t>(sizes.size());
  int64_t i = 0;
  for (int64_t v : sizes) size[i++] = v;
  for (int64_t k = n - 1, s = 1; k >= 0; --k) stride[k] = s, s *= size[k] > 1 ? size[k] : 1;
  AtenTensorHandle h = nullptr;
  const int32_t type = device < 0 ? aoti_torch_device_type_cpu() : aoti_torch_device_type_cuda();
  if (aoti_torch_empty_strided(n, size, stride, dtype, type, device < 0 ? 0 : device, &h) != AOTI_TORCH_SUCCESS)
    throw std::runtime_error("kvq: cannot allocate an output tensor");
  return Tensor(h);
}
int32_t aoti_dtype(ScalarType s) {
  switch (s) {
    case ScalarType::BFloat16: return aoti_torch_dtype_bfloat16();
    case ScalarType::Half: return aoti_torch_dtype_float16();
    default: return aoti_torch_dtype_float32();
  }
}

const int32_t* table_ptr(const std::optional<Tensor>& table) {
  return table.has_value() ? static_cast<const int32_t*>(table->data_ptr()) : nullptr;
}

std::tuple<Tensor, Tensor, Tensor> attention(Tensor cache, Tensor lengths, std::optional<Tensor> block_table,
                                             Tensor error, Tensor q, Tensor k_chunk, Tensor v_chunk, int64_t cache_id,
                                             int64_t correction, int64_t mask, double scale, bool return_lse,
                                             bool return_mass, int64_t max_cache_length) {
  const Entry e = entry_of(cache_id);
  check_cache_tensors(e, cache_id, cache, lengths, error, block_table);
  const auto qs = check_activation("q", q, e, -1, -1);
  const int64_t b = q.size(0), nq = q.size(1), hq = q.size(2), d = e.head_dim;
  if (hq < e.kv_heads || hq % e.kv_heads != 0)
    refuse("q has " + std::to_string(hq) + " heads, which is not a multiple of the cache's " +
           std::to_string(e.kv_heads) + " kv heads");
  if (hq > 65535) refuse("q has " + std::to_string(hq) + " heads; at most 65535 are supported");
  const auto ks = check_activation("k_chunk", k_chunk, e, e.kv_heads, -1);
  const int64_t nc = k_chunk.size(1);
  const auto vs = check_activation("v_chunk", v_chunk, e, e.kv_heads, nc);
  check_vector_access("q", q, qs);
  check_vector_access("k_chunk", k_chunk, ks);
  check_vector_access("v_chunk", v_chunk, vs);
  if (correction < 0 || correction > 3 || !(e.corrections >> correction & 1u))
    refuse("correction " + std::to_string(correction) + " is not compiled for this cache variant");
  if (mask != KVQ_C_MASK_NONE && mask != KVQ_C_MASK_CAUSAL_LAST_SEGMENT) refuse("mask must be 'none' or 'causal'");
  if (!(scale > 0.0 && std::isfinite(scale))) refuse("scale must be positive and finite");

  const int32_t f32 = aoti_torch_dtype_float32();
  Tensor o = empty_on(e.device, {b, nq, hq, d}, aoti_dtype(e.dtype));
  Tensor lse = return_lse ? empty_on(e.device, {b, hq, nq}, f32) : empty_on(e.device, {0}, f32);
  Tensor mass = return_mass ? empty_on(e.device, {b, hq, nq, 3}, f32) : empty_on(e.device, {0}, f32);
  kvq_c_attention_args a{};
  a.cache = cache.data_ptr();
  a.cache_lengths = static_cast<const int32_t*>(lengths.data_ptr());
  a.q = q.data_ptr();
  a.k_chunk = k_chunk.data_ptr();
  a.v_chunk = v_chunk.data_ptr();
  a.o = o.data_ptr();
  a.lse = return_lse ? static_cast<float*>(lse.data_ptr()) : nullptr;
  a.mass = return_mass ? static_cast<float*>(mass.data_ptr()) : nullptr;
  a.error = static_cast<uint32_t*>(error.data_ptr());
  a.stream = current_stream(e);
  for (int i = 0; i < 3; ++i) a.q_stride[i] = qs[i], a.k_stride[i] = ks[i], a.v_stride[i] = vs[i];
  a.o_stride[0] = b > 1 ? nq * hq * d : 0;
  a.o_stride[1] = nq > 1 ? hq * d : 0;
  a.o_stride[2] = hq > 1 ? d : 0;
  a.num_q = nq;
  a.num_chunk = nc;
  a.max_cache_length = max_cache_length;
  a.scale = static_cast<float>(scale);
  a.correction = static_cast<int32_t>(correction);
  a.mask = static_cast<int32_t>(mask);
  a.dtype = e.dtype_code;
  a.batch = static_cast<int32_t>(b);
  a.q_heads = static_cast<int32_t>(hq);
  a.kv_heads = e.kv_heads;
  a.head_dim = e.head_dim;
  if (e.device >= 0) {
    check_status(g_fn.attention(e.handle, &a), "kvq attention");
    return {o, lse, mass};
  }
  // A CPU cache: the C reference in float64, then the outputs' dtypes (no query row: nothing to compute).
  if (nq == 0) return {o, lse, mass};
  const int32_t f64 = aoti_torch_dtype_float64();
  Tensor o64 = empty_on(-1, {b, nq, hq, d}, f64);
  Tensor lse64 = empty_on(-1, {b, hq, nq}, f64);
  Tensor mass64 = empty_on(-1, {b, hq, nq, 3}, f64);
  check_status(g_fn.attention_host(e.handle, table_ptr(block_table), &a, static_cast<double*>(o64.data_ptr()),
                                   static_cast<double*>(lse64.data_ptr()), static_cast<double*>(mass64.data_ptr())),
               "kvq attention (CPU reference)");
  torch::stable::copy_(o, o64);
  if (return_lse) torch::stable::copy_(lse, lse64);
  if (return_mass) torch::stable::copy_(mass, mass64);
  return {o, lse, mass};
}

void append(Tensor cache, Tensor lengths, std::optional<Tensor> block_table, Tensor k, Tensor v, Tensor error,
            int64_t cache_id, int64_t max_cache_length) {
  const Entry e = entry_of(cache_id);
  check_cache_tensors(e, cache_id, cache, lengths, error, block_table);
  const auto ks = check_activation("k", k, e, e.kv_heads, -1);
  const int64_t n = k.size(1);
  const auto vs = check_activation("v", v, e, e.kv_heads, n);
  if (n > e.capacity)
    refuse("appending " + std::to_string(n) + " tokens to a cache of capacity " + std::to_string(e.capacity));
  kvq_c_append_args a{};
  a.cache = cache.data_ptr();
  a.lengths = static_cast<int32_t*>(lengths.data_ptr());
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.error = static_cast<uint32_t*>(error.data_ptr());
  a.stream = current_stream(e);
  for (int i = 0; i < 3; ++i) a.k_stride[i] = ks[i], a.v_stride[i] = vs[i];
  a.num_tokens = n;
  a.max_cache_length = max_cache_length;
  a.dtype = e.dtype_code;
  a.batch = e.batch;
  a.heads = e.kv_heads;
  a.head_dim = e.head_dim;
  if (e.device >= 0) {
    check_status(g_fn.append(e.handle, &a), "kvq append");
  } else {  // the reference refuses a call that does not fit every entry: the package's Python kernel says which
    check_status(g_fn.append_host(e.handle, cache.data_ptr(), static_cast<int32_t*>(lengths.data_ptr()),
                                  table_ptr(block_table), &a),
                 "kvq append (CPU reference)");
  }
}

std::tuple<Tensor, Tensor> merge_states(Tensor o_parts, Tensor lse_parts, bool return_lse) {
  const bool cpu = o_parts.is_cpu();
  if (!(cpu || o_parts.is_cuda()) || where(o_parts) != where(lse_parts))
    refuse("o_parts is on " + where(o_parts) + " but lse_parts on " + where(lse_parts));
  if (o_parts.dim() != 5) refuse("o_parts must be 5-D [parts, batch, num_q, heads, head_dim]");
  const int64_t p = o_parts.size(0), b = o_parts.size(1), n = o_parts.size(2), h = o_parts.size(3),
                d = o_parts.size(4);
  const ScalarType dt = o_parts.scalar_type();
  int32_t code;
  if (dt == ScalarType::BFloat16) code = KVQ_C_BF16;
  else if (dt == ScalarType::Half) code = KVQ_C_FP16;
  else if (dt == ScalarType::Float) code = KVQ_C_FP32;
  else refuse(std::string("o_parts has dtype ") + dtype_name(dt) + "; merge_states takes bfloat16, float16 or float32");
  if (lse_parts.scalar_type() != ScalarType::Float) refuse("lse_parts must be float32");
  if (lse_parts.dim() != 4 || lse_parts.size(0) != p || lse_parts.size(1) != b || lse_parts.size(2) != h ||
      lse_parts.size(3) != n)
    refuse("lse_parts must be [parts, batch, heads, num_q] to match o_parts");
  if (p < 1) refuse("merge_states needs at least one part");
  if (d < 32 || d > 512 || d % 32 != 0) refuse("head_dim " + std::to_string(d) + " is not supported by merge_states");
  if (d > 1 && o_parts.stride(4) != 1) refuse("o_parts must have a unit stride along head_dim");
  const int64_t want[3] = {h * n, n, 1}, sizes[3] = {b, h, n};
  for (int i = 0; i < 3; ++i)
    if (sizes[i] > 1 && lse_parts.stride(i + 1) != want[i]) refuse("every part of lse_parts must be dense");
  for (int i = 0; i < 5; ++i)
    if (o_parts.stride(i) < 0 || (i < 4 && lse_parts.stride(i) < 0)) refuse("merge_states takes no negative strides");
  const int32_t device = cpu ? -1 : o_parts.get_device_index(), f32 = aoti_torch_dtype_float32();
  Tensor o = empty_on(device, {b, n, h, d}, aoti_dtype(dt));
  Tensor lse = return_lse ? empty_on(device, {b, h, n}, f32) : empty_on(device, {0}, f32);
  kvq_c_merge_args m{};
  m.o_parts = o_parts.data_ptr();
  m.lse_parts = static_cast<const float*>(lse_parts.data_ptr());
  m.o = o.data_ptr();
  m.lse = return_lse ? static_cast<float*>(lse.data_ptr()) : nullptr;
  const int64_t sz[4] = {p, b, n, h};
  for (int i = 0; i < 3; ++i) m.o_parts_stride[i] = sz[i + 1] > 1 ? o_parts.stride(i + 1) : 0;
  m.o_stride[0] = b > 1 ? n * h * d : 0;
  m.o_stride[1] = n > 1 ? h * d : 0;
  m.o_stride[2] = h > 1 ? d : 0;
  m.o_part_stride = p > 1 ? o_parts.stride(0) : 0;
  m.lse_part_stride = p > 1 ? lse_parts.stride(0) : 0;
  m.num_q = n;
  m.num_parts = static_cast<int32_t>(p);
  m.batch = static_cast<int32_t>(b);
  m.heads = static_cast<int32_t>(h);
  m.head_dim = static_cast<int32_t>(d);
  m.parts_dtype = m.dtype = code;
  if (!cpu) {
    m.device = o_parts.get_device_index();
    if (aoti_torch_get_current_cuda_stream(m.device, &m.stream) != AOTI_TORCH_SUCCESS)
      throw std::runtime_error("kvq: cannot read torch's current CUDA stream");
    check_status(g_fn.merge(&m), "kvq merge_states");
    return {o, lse};
  }
  const int32_t f64 = aoti_torch_dtype_float64();
  Tensor o64 = empty_on(-1, {b, n, h, d}, f64);
  Tensor lse64 = empty_on(-1, {b, h, n}, f64);
  check_status(g_fn.merge_host(&m, static_cast<double*>(o64.data_ptr()), static_cast<double*>(lse64.data_ptr())),
               "kvq merge_states (CPU reference)");
  torch::stable::copy_(o, o64);
  if (return_lse) torch::stable::copy_(lse, lse64);
  return {o, lse};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(kvq, CUDA, m) {
  m.impl("attention", TORCH_BOX(&attention));
  m.impl("append", TORCH_BOX(&append));
  m.impl("merge_states", TORCH_BOX(&merge_states));
}

STABLE_TORCH_LIBRARY_IMPL(kvq, CPU, m) {
  m.impl("attention", TORCH_BOX(&attention));
  m.impl("append", TORCH_BOX(&append));
  m.impl("merge_states", TORCH_BOX(&merge_states));
}

#define KVQ_TORCH_ABI_VERSION 1

KVQ_TORCH_API int32_t kvq_torch_abi_version(void) { return KVQ_TORCH_ABI_VERSION * 1000 + KVQ_C_ABI_VERSION; }

/// The C ABI functions of the loaded libkvq_c (all of them, else the call is refused).
KVQ_TORCH_API int32_t kvq_torch_set_functions(void* append, void* attention, void* merge, void* append_host,
                                              void* attention_host, void* merge_host, void* status_string,
                                              void* cuda_error_string) {
  if (!append || !attention || !merge || !append_host || !attention_host || !merge_host || !status_string ||
      !cuda_error_string)
    return KVQ_C_ERROR_INVALID_ARGUMENT;
  Functions f;
  f.append = reinterpret_cast<decltype(f.append)>(append);
  f.attention = reinterpret_cast<decltype(f.attention)>(attention);
  f.merge = reinterpret_cast<decltype(f.merge)>(merge);
  f.append_host = reinterpret_cast<decltype(f.append_host)>(append_host);
  f.attention_host = reinterpret_cast<decltype(f.attention_host)>(attention_host);
  f.merge_host = reinterpret_cast<decltype(f.merge_host)>(merge_host);
  f.status_string = reinterpret_cast<decltype(f.status_string)>(status_string);
  f.cuda_error_string = reinterpret_cast<decltype(f.cuda_error_string)>(cuda_error_string);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_fn = f;
  return KVQ_C_SUCCESS;
}

/// Registers cache `cache_id` (kvq.ops.register): its handle and what the checks need.
KVQ_TORCH_API int32_t kvq_torch_bind(int64_t cache_id, void* handle, int32_t device, int32_t batch, int32_t kv_heads,
                                     int32_t head_dim, int64_t capacity, int64_t nbytes, int32_t dtype_code,
                                     uint32_t corrections, int32_t table_columns) {
  if (cache_id < 0 || handle == nullptr || (dtype_code != KVQ_C_BF16 && dtype_code != KVQ_C_FP16))
    return KVQ_C_ERROR_INVALID_ARGUMENT;
  Entry e;
  e.handle = static_cast<kvq_c_cache*>(handle);
  e.device = device;
  e.batch = batch;
  e.kv_heads = kv_heads;
  e.head_dim = head_dim;
  e.capacity = capacity;
  e.nbytes = nbytes;
  e.dtype_code = dtype_code;
  e.dtype = dtype_code == KVQ_C_BF16 ? ScalarType::BFloat16 : ScalarType::Half;
  e.corrections = corrections;
  e.table_columns = table_columns;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (static_cast<int64_t>(g_entries.size()) <= cache_id) g_entries.resize(static_cast<std::size_t>(cache_id) + 1);
  g_entries[static_cast<std::size_t>(cache_id)] = e;
  return KVQ_C_SUCCESS;
}

KVQ_TORCH_API void kvq_torch_unbind(int64_t cache_id) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (cache_id >= 0 && cache_id < static_cast<int64_t>(g_entries.size())) g_entries[cache_id] = Entry{};
}
