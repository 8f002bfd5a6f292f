/* kvq's C ABI: the default variant set of kvq (quantize-and-append, fused chunk attention)
 * compiled into one shared library, for callers that are not C++ (the Python package loads
 * it with ctypes). No torch header, no C++ type crosses it: one build serves every torch.
 *
 *   kvq_c_cache* c;
 *   kvq_c_cache_create(&variant, batch, kv_heads, capacity, KVQ_C_BF16, device, &c);
 *   kvq_c_cache_bytes(c);                         // bytes of the cache allocation
 *   kvq_c_append(c, &append_args);                // per chunk: quantize and append
 *   kvq_c_attention(c, &attention_args);          // per call: fused attention
 *   kvq_c_cache_destroy(c);
 *
 * Every function returns a kvq::Status code (KVQ_C_SUCCESS = 0; kvq_c_status_string names
 * it) and never throws, prints or exits. kvq_c_append and kvq_c_attention neither allocate,
 * synchronize nor read device memory on the host: they check their arguments, then enqueue
 * kernels on the given stream, so they may be captured into a CUDA graph. A failed check
 * launches nothing. The plans behind them (kernel choice, function attributes) are made at
 * kvq_c_cache_create and kvq_c_prepare_attention, or by the first call of a
 * (correction, mask, q heads) combination; call kvq_c_prepare_attention (or run once)
 * before capturing. Each num_q gets a plan of its own at its first call (the kernel and the
 * split-KV workspace, cudaMalloc, sized for that num_q; up to 8 per (correction, mask, q
 * heads), further ones with more than 16 query rows share one unsplit plan): run a call of
 * each shape once before capturing it. One cache handle must not be used from several host threads at once
 * (calls on one handle are serialized by a mutex).
 *
 * Paged caches (kvq_c_paged_cache_create): a pool of pages addressed through int32 block
 * tables, [batch][table_stride]; token t of entry b lives in page tables[b][t / page_tokens].
 * The handle keeps the tables pointer given at creation and reads it at every call: edit
 * the tables in place between calls (in stream order), never move them.
 *
 * kvq_c_merge_states (kvq::merge_states) needs no cache: it combines partial attention
 * results (O, LSE) of the same queries over disjoint key sets (split caches, context
 * parallelism across GPUs) on a stream, under the same rules (no allocation, no
 * synchronization).
 */
#ifndef KVQ_C_H_
#define KVQ_C_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define KVQ_C_API __declspec(dllexport)
#else
#define KVQ_C_API __attribute__((visibility("default")))
#endif

#define KVQ_C_ABI_VERSION 2

/* Status codes: the values of kvq::Status. */
enum {
  KVQ_C_SUCCESS = 0,
  KVQ_C_ERROR_INVALID_ARGUMENT = 1,
  KVQ_C_ERROR_MISALIGNED = 2,
  KVQ_C_ERROR_CAPACITY_EXCEEDED = 3,
  KVQ_C_ERROR_NOT_SUPPORTED = 4,
  KVQ_C_ERROR_NO_DEVICE = 5,
  KVQ_C_ERROR_CUDA_RUNTIME = 6
};
/* Activation dtypes (KVQ_C_FP32: merge_states' parts and output only). */
enum { KVQ_C_FP16 = 0, KVQ_C_BF16 = 1, KVQ_C_FP32 = 2 };
/* Key granularity. */
enum { KVQ_C_PER_TOKEN = 0, KVQ_C_PER_CHANNEL = 1 };
/* Key rotation. */
enum { KVQ_C_ROTATION_NONE = 0, KVQ_C_ROTATION_HADAMARD = 1, KVQ_C_ROTATION_HADAMARD_CENTERED = 2 };
/* Error bits of the device words (append: kvq::AppendError, attention: kvq::AttentionError). */
enum {
  KVQ_C_APPEND_ERROR_CAPACITY = 1,
  KVQ_C_APPEND_ERROR_NEGATIVE_LENGTH = 2,
  KVQ_C_APPEND_ERROR_PAGE = 4,
  KVQ_C_ATTENTION_ERROR_PAGE = 4
};
/* Correction modes. */
enum { KVQ_C_CORRECTION_NONE = 0, KVQ_C_CORRECTION_TAYLOR2 = 1, KVQ_C_CORRECTION_TAYLOR4 = 2, KVQ_C_CORRECTION_EXACT = 3 };
/* Masks. */
enum { KVQ_C_MASK_NONE = 0, KVQ_C_MASK_CAUSAL_LAST_SEGMENT = 1 };

/* A cache variant (fp16 scales for keys and values). */
typedef struct kvq_c_variant {
  int32_t k_bits;
  int32_t k_group;
  int32_t k_granularity; /* KVQ_C_PER_TOKEN or KVQ_C_PER_CHANNEL */
  int32_t v_bits;
  int32_t v_group;
  int32_t head_dim;
  int32_t rotation; /* KVQ_C_ROTATION_* */
} kvq_c_variant;

/* One append: num_tokens tokens of k and v ([batch, tokens, heads, head_dim], strides in
 * elements, head_dim stride 1) appended to every batch entry at its device length, which is
 * then increased by num_tokens. An entry whose length + num_tokens exceeds the capacity is
 * left untouched and, where error is given, KVQ append error bits are OR-ed into *error. */
typedef struct kvq_c_append_args {
  void* cache;        /* device, kvq_c_cache_bytes bytes, 16-byte aligned */
  int32_t* lengths;   /* device [batch] */
  const void* k;      /* device */
  const void* v;      /* device */
  uint32_t* error;    /* device word or NULL */
  void* stream;       /* cudaStream_t */
  int64_t k_stride[3]; /* batch, token, head */
  int64_t v_stride[3];
  int64_t num_tokens;
  int64_t max_cache_length; /* host bound of the device lengths, -1 = unknown */
  int32_t dtype;            /* KVQ_C_FP16 / KVQ_C_BF16: the cache's dtype */
  int32_t batch;            /* checked against the cache */
  int32_t heads;            /* checked against the cache */
  int32_t head_dim;         /* checked against the cache */
} kvq_c_append_args;

/* One attention call (kvq::AttentionArguments): q [batch, num_q, q_heads, D] attends to the
 * cache and the current chunk k_chunk/v_chunk [batch, num_chunk, kv_heads, D]; o like q;
 * lse [batch, q_heads, num_q] and mass [batch, q_heads, num_q, 3] float32 or NULL. */
typedef struct kvq_c_attention_args {
  const void* cache;
  const int32_t* cache_lengths; /* device [batch]; NULL = empty cache */
  const void* q;
  const void* k_chunk;
  const void* v_chunk;
  void* o;
  float* lse;
  float* mass;
  uint32_t* error; /* device word or NULL: paged caches OR in KVQ_C_ATTENTION_ERROR_PAGE for a
                      skipped entry (a table column of its cached tokens outside the pool; its
                      output rows are not written) */
  void* stream; /* cudaStream_t */
  int64_t q_stride[3];
  int64_t k_stride[3];
  int64_t v_stride[3];
  int64_t o_stride[3];
  int64_t num_q;
  int64_t num_chunk;
  int64_t max_cache_length; /* host bound of the device lengths, -1 = the capacity */
  float scale;
  int32_t correction; /* KVQ_C_CORRECTION_* */
  int32_t mask;       /* KVQ_C_MASK_* */
  int32_t dtype;      /* the cache's dtype */
  int32_t batch;
  int32_t q_heads;
  int32_t kv_heads; /* checked against the cache */
  int32_t head_dim; /* checked against the cache */
} kvq_c_attention_args;

/* One merge of attention states (kvq::merge_states): num_parts partial results of the same
 * queries over disjoint key sets combined into the result over their union,
 *   LSE = log sum_p exp(LSE_p),  O = sum_p exp(LSE_p - LSE) O_p.
 * A part with LSE_p = -inf (no key) weighs nothing and its O_p is not read; a row whose parts
 * are all -inf gets O = 0 and LSE = -inf; a NaN LSE_p makes the row NaN. Part p's O is at
 * o_parts + p * o_part_stride elements ([batch, num_q, heads, head_dim], strides in
 * elements, head_dim stride 1), its LSE at lse_parts + p * lse_part_stride (dense [batch,
 * heads, num_q] float32, as kvq_c_attention writes it). The merged O may overwrite one part's
 * O (same strides). head_dim is a multiple of 32 in [32, 512]. */
typedef struct kvq_c_merge_args {
  const void* o_parts;
  const float* lse_parts;
  void* o;    /* merged O [batch, num_q, heads, head_dim] */
  float* lse; /* merged LSE [batch, heads, num_q] float32, or NULL */
  void* stream; /* cudaStream_t of device `device` */
  int64_t o_parts_stride[3]; /* batch, token, head */
  int64_t o_stride[3];
  int64_t o_part_stride;
  int64_t lse_part_stride;
  int64_t num_q;
  int32_t num_parts; /* >= 1 */
  int32_t batch;
  int32_t heads;
  int32_t head_dim;
  int32_t parts_dtype; /* KVQ_C_FP16 / KVQ_C_BF16 / KVQ_C_FP32 */
  int32_t dtype;       /* of o, the same set */
  int32_t device;      /* CUDA device of every pointer (made current for the launch) */
  int32_t reserved;    /* 0 */
} kvq_c_merge_args;

typedef struct kvq_c_cache kvq_c_cache;

KVQ_C_API int32_t kvq_c_abi_version(void);
/* sizeof(kvq_c_append_args) and sizeof(kvq_c_attention_args), for binding checks. */
KVQ_C_API int32_t kvq_c_append_args_size(void);
KVQ_C_API int32_t kvq_c_attention_args_size(void);
KVQ_C_API const char* kvq_c_status_string(int32_t status);
/* The CUDA error of this host thread's last failed runtime call inside kvq (after a
 * KVQ_C_ERROR_CUDA_RUNTIME), as cudaGetErrorString words; "no error" where none failed. */
KVQ_C_API const char* kvq_c_last_cuda_error_string(void);

/* The compiled cache variants: index 0..count-1; *corrections gets the bit (1 << mode) of
 * every correction mode whose attention is compiled for the variant, and the bit
 * (1 << (8 + mode)) of those compiled for its paged form (kvq_c_paged_cache_create). */
KVQ_C_API int32_t kvq_c_variant_count(void);
KVQ_C_API int32_t kvq_c_variant_get(int32_t index, kvq_c_variant* out, uint32_t* corrections);

/* A cache of `variant` for `batch` entries of `kv_heads` heads and `capacity` tokens, with
 * activations (and the unquantized key tail) of `dtype`, on CUDA device `device`. Plans the
 * append. KVQ_C_ERROR_NOT_SUPPORTED where the variant is not compiled. device = -1 makes a
 * host-only handle (no device needed) for the *_host functions; its kvq_c_append,
 * kvq_c_attention and kvq_c_prepare_attention return KVQ_C_ERROR_INVALID_ARGUMENT. */
KVQ_C_API int32_t kvq_c_cache_create(const kvq_c_variant* variant, int32_t batch, int32_t kv_heads, int64_t capacity,
                                     int32_t dtype, int32_t device, kvq_c_cache** out);
/* A paged cache of `variant`: a pool of num_pages pages of page_tokens tokens (every kv head
 * of a layer; page_tokens a multiple of the key tokens per group and of what the attention
 * kernels take: a multiple of 64, or 32 on sm_90) for `batch` entries of at most
 * max_pages_per_entry pages each, read through `tables` (int32, [batch][table_stride],
 * table_stride >= max_pages_per_entry; device memory, or host memory for a host-only handle,
 * device -1). KVQ_C_ERROR_NOT_SUPPORTED where the variant has no paged attention compiled. */
KVQ_C_API int32_t kvq_c_paged_cache_create(const kvq_c_variant* variant, int32_t batch, int32_t kv_heads,
                                           int32_t page_tokens, int64_t num_pages, int32_t max_pages_per_entry,
                                           const int32_t* tables, int64_t table_stride, int32_t dtype, int32_t device,
                                           kvq_c_cache** out);
KVQ_C_API void kvq_c_cache_destroy(kvq_c_cache* cache);
/* Bytes of the cache allocation (layout.bytes(): for a paged cache the pool, tails and
 * means); -1 for a NULL handle. */
KVQ_C_API int64_t kvq_c_cache_bytes(const kvq_c_cache* cache);
/* Tokens one entry can hold (capacity, or max_pages_per_entry x page_tokens); -1 for NULL. */
KVQ_C_API int64_t kvq_c_cache_capacity(const kvq_c_cache* cache);
/* Key tokens per quantization group: 1 (PerToken keys) or G (PerChannel keys, whose last
 * length % G tokens stay unquantized in the tail). */
KVQ_C_API int32_t kvq_c_cache_key_tokens_per_group(const kvq_c_cache* cache);

/* Plans the attention of (correction, mask, q_heads) ahead of the first call (for CUDA
 * graph capture: the plan's device queries then happen before it). */
KVQ_C_API int32_t kvq_c_prepare_attention(kvq_c_cache* cache, int32_t correction, int32_t mask, int32_t q_heads);

KVQ_C_API int32_t kvq_c_append(kvq_c_cache* cache, const kvq_c_append_args* args);
KVQ_C_API int32_t kvq_c_attention(kvq_c_cache* cache, const kvq_c_attention_args* args);

/* sizeof(kvq_c_merge_args), for binding checks. */
KVQ_C_API int32_t kvq_c_merge_args_size(void);
/* Enqueues the merge on args->stream (one kernel; nothing for zero rows). */
KVQ_C_API int32_t kvq_c_merge_states(const kvq_c_merge_args* args);

/* Host-side helpers for tests (CPU only, host memory, slow). For a paged handle, host_tables
 * is a host copy of its tables (same stride; NULL: the handle's own tables, which must then be
 * host memory, as a host-only handle's are); contiguous handles ignore it.
 * kvq_c_dequantize_host reads a host copy of the cache and the lengths and writes, for every
 * batch entry b, kv head h and cached token t < lengths[b], the key and value as attention
 * sees them, in the keys' original space (rotated keys rotated back, μ added), to
 * keys/values [batch, heads, capacity, head_dim] float32 (capacity: kvq_c_cache_capacity); for the quantized tokens
 * (t < lengths[b] - lengths[b] % key_tokens_per_group) it writes the step of every key
 * element to key_steps (same shape; in the rotated space for rotated keys). Other
 * elements are not written. */
KVQ_C_API int32_t kvq_c_dequantize_host(const kvq_c_cache* cache, const void* host_cache, const int32_t* host_lengths,
                                        const int32_t* host_tables, float* keys, float* values, float* key_steps);
/* The CPU reference (kvq/reference) on host memory, for tests: quantize-and-append of
 * num_tokens tokens of k and v (dtype KVQ_C_FP16/BF16, strides in elements) into a host cache
 * with host lengths; and attention (args as kvq_c_attention's, every pointer a host pointer;
 * o/lse/mass ignored) writing out [batch, num_q, q_heads, D], lse [batch, q_heads, num_q] and
 * mass [batch, q_heads, num_q, 3] as float64 (lse and mass optional). */
KVQ_C_API int32_t kvq_c_quantize_append_host(const kvq_c_cache* cache, void* host_cache, int32_t* host_lengths,
                                             const int32_t* host_tables, const kvq_c_append_args* args);
KVQ_C_API int32_t kvq_c_attention_host(const kvq_c_cache* cache, const int32_t* host_tables,
                                       const kvq_c_attention_args* args, double* out, double* lse, double* mass);
/* The CPU reference of kvq_c_merge_states on host memory (args' pointers host pointers;
 * o, stream and device ignored): out [batch, num_q, heads, head_dim] and lse (optional)
 * [batch, heads, num_q] float64. */
KVQ_C_API int32_t kvq_c_merge_states_host(const kvq_c_merge_args* args, double* out, double* lse);
/* rows[n][head_dim] <- R·rows (float64), R the key rotation of the head dim (64 or 128). */
KVQ_C_API int32_t kvq_c_rotate_rows_host(int32_t head_dim, double* rows, int64_t n);

#ifdef __cplusplus
}
#endif

#endif /* KVQ_C_H_ */
