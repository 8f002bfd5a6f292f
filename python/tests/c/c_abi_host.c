/* kvq's C ABI from C, on the host only (a host-only handle, device -1: no GPU needed): the
 * variant listing, status strings, refusals, and the CPU reference behind the host
 * functions (quantize-and-append, dequantization, attention) on a small cache. Exits 0 when
 * every check holds, 1 otherwise (each failure printed). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvq_c.h"

static int failures = 0;
#define CHECK(cond)                                                 \
  do {                                                              \
    if (!(cond)) {                                                  \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                   \
    }                                                               \
  } while (0)

/* bf16 bits of a float (round to nearest even; the inputs are finite). */
static uint16_t bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static float uniform(unsigned* s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)((*s >> 8) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

int main(void) {
  enum { B = 1, H = 2, D = 128, CAP = 64, N = 40, NQ = 8 };
  CHECK(kvq_c_abi_version() == KVQ_C_ABI_VERSION);
  CHECK(kvq_c_append_args_size() == (int32_t)sizeof(kvq_c_append_args));
  CHECK(kvq_c_attention_args_size() == (int32_t)sizeof(kvq_c_attention_args));
  CHECK(strcmp(kvq_c_status_string(KVQ_C_ERROR_NOT_SUPPORTED), "variant not supported") == 0);
  CHECK(strcmp(kvq_c_status_string(99), "unknown status") == 0);

  /* The listing has INT2 PerToken G128 D128 with None, Taylor2 and Taylor4, paged None and Taylor2. */
  int found = 0;
  for (int32_t i = 0; i < kvq_c_variant_count(); ++i) {
    kvq_c_variant v;
    uint32_t corr = 0;
    CHECK(kvq_c_variant_get(i, &v, &corr) == KVQ_C_SUCCESS);
    if (v.k_bits == 2 && v.k_group == 128 && v.k_granularity == KVQ_C_PER_TOKEN && v.head_dim == 128 &&
        v.rotation == KVQ_C_ROTATION_NONE)
      found = corr == (7u | 3u << 8);
  }
  CHECK(found);
  {
    kvq_c_variant v;
    uint32_t corr;
    CHECK(kvq_c_variant_get(kvq_c_variant_count(), &v, &corr) == KVQ_C_ERROR_INVALID_ARGUMENT);
  }

  kvq_c_variant v = {2, 128, KVQ_C_PER_TOKEN, 2, 128, D, KVQ_C_ROTATION_NONE};
  kvq_c_cache* c = NULL;
  kvq_c_variant bad = v;
  bad.k_bits = 3;
  CHECK(kvq_c_cache_create(&bad, B, H, CAP, KVQ_C_BF16, -1, &c) == KVQ_C_ERROR_NOT_SUPPORTED && c == NULL);
  CHECK(kvq_c_cache_create(&v, 0, H, CAP, KVQ_C_BF16, -1, &c) == KVQ_C_ERROR_INVALID_ARGUMENT);
  CHECK(kvq_c_cache_create(&v, B, H, CAP, KVQ_C_BF16, -1, &c) == KVQ_C_SUCCESS && c != NULL);
  if (c == NULL) return 1;
  CHECK(kvq_c_cache_key_tokens_per_group(c) == 1);
  const int64_t bytes = kvq_c_cache_bytes(c);
  CHECK(bytes >= (int64_t)B * H * CAP * (D / 4 * 2 + 8));
  CHECK(kvq_c_prepare_attention(c, KVQ_C_CORRECTION_TAYLOR2, KVQ_C_MASK_NONE, H) == KVQ_C_ERROR_INVALID_ARGUMENT);

  unsigned char* cache = calloc((size_t)bytes, 1);
  int32_t lengths[B] = {0};
  uint16_t* k = malloc(sizeof(uint16_t) * B * N * H * D);
  uint16_t* vv = malloc(sizeof(uint16_t) * B * N * H * D);
  float* kf = malloc(sizeof(float) * B * N * H * D);
  unsigned seed = 1;
  for (int i = 0; i < B * N * H * D; ++i) {
    k[i] = bf16(uniform(&seed));
    vv[i] = bf16(uniform(&seed));
    uint32_t u = (uint32_t)k[i] << 16;
    memcpy(&kf[i], &u, 4);
  }
  kvq_c_append_args a;
  memset(&a, 0, sizeof a);
  a.k = k;
  a.v = vv;
  a.k_stride[0] = a.v_stride[0] = (int64_t)N * H * D;
  a.k_stride[1] = a.v_stride[1] = (int64_t)H * D;
  a.k_stride[2] = a.v_stride[2] = D;
  a.num_tokens = N;
  a.max_cache_length = -1;
  a.dtype = KVQ_C_BF16;
  a.batch = B;
  a.heads = H;
  a.head_dim = D;
  CHECK(kvq_c_append(c, &a) == KVQ_C_ERROR_INVALID_ARGUMENT); /* host-only handle */
  CHECK(kvq_c_quantize_append_host(c, cache, lengths, NULL, &a) == KVQ_C_SUCCESS);
  CHECK(lengths[0] == N);
  a.heads = H + 1;
  CHECK(kvq_c_quantize_append_host(c, cache, lengths, NULL, &a) == KVQ_C_ERROR_INVALID_ARGUMENT);

  /* Dequantized keys are within half a step of the input, per element. */
  const size_t elems = (size_t)B * H * CAP * D;
  float* keys = calloc(elems, sizeof(float));
  float* values = calloc(elems, sizeof(float));
  float* steps = calloc(elems, sizeof(float));
  CHECK(kvq_c_dequantize_host(c, cache, lengths, NULL, keys, values, steps) == KVQ_C_SUCCESS);
  int within = 1;
  for (int h = 0; h < H; ++h)
    for (int t = 0; t < N; ++t)
      for (int d = 0; d < D; ++d) {
        const size_t cidx = ((size_t)h * CAP + t) * D + d;
        const float in = kf[((size_t)t * H + h) * D + d];
        if (!(steps[cidx] > 0.0f) || fabsf(keys[cidx] - in) > 0.5f * steps[cidx] * 1.01f + 1e-3f) within = 0;
      }
  CHECK(within);

  /* Attention over [cache ; chunk] through the reference: every output row is a convex
   * combination of values (|o| <= max |v|), the masses sum to 1. */
  kvq_c_attention_args q;
  memset(&q, 0, sizeof q);
  q.cache = cache;
  q.cache_lengths = lengths;
  q.q = k; /* the first NQ tokens of k as queries, the first NQ of k/v as the chunk */
  q.k_chunk = k;
  q.v_chunk = vv;
  for (int i = 0; i < 3; ++i) q.q_stride[i] = q.k_stride[i] = q.v_stride[i] = a.k_stride[i];
  q.num_q = NQ;
  q.num_chunk = NQ;
  q.max_cache_length = -1;
  q.scale = 0.08838834764831845f;
  q.correction = KVQ_C_CORRECTION_TAYLOR2;
  q.mask = KVQ_C_MASK_CAUSAL_LAST_SEGMENT;
  q.dtype = KVQ_C_BF16;
  q.batch = B;
  q.q_heads = H;
  q.kv_heads = H;
  q.head_dim = D;
  double* out = calloc((size_t)B * NQ * H * D, sizeof(double));
  double* lse = calloc((size_t)B * H * NQ, sizeof(double));
  double* mass = calloc((size_t)B * H * NQ * 3, sizeof(double));
  CHECK(kvq_c_attention(c, &q) == KVQ_C_ERROR_INVALID_ARGUMENT); /* host-only handle */
  CHECK(kvq_c_attention_host(c, NULL, &q, out, lse, mass) == KVQ_C_SUCCESS);
  int sane = 1;
  for (int i = 0; i < B * NQ * H * D; ++i) sane &= fabs(out[i]) <= 1.0 + 1e-9;
  for (int i = 0; i < B * H * NQ; ++i) {
    sane &= fabs(mass[3 * i] + mass[3 * i + 1] + mass[3 * i + 2] - 1.0) < 1e-9 && mass[3 * i + 1] == 0.0;
    sane &= isfinite(lse[i]);
  }
  CHECK(sane);
  q.correction = 7;
  CHECK(kvq_c_attention_host(c, NULL, &q, out, lse, mass) == KVQ_C_ERROR_INVALID_ARGUMENT);

  double rows[2 * D];
  for (int i = 0; i < 2 * D; ++i) rows[i] = i == 0 || i == D + 5 ? 1.0 : 0.0;
  CHECK(kvq_c_rotate_rows_host(D, rows, 2) == KVQ_C_SUCCESS);
  double n0 = 0.0;
  for (int i = 0; i < D; ++i) n0 += rows[i] * rows[i];
  CHECK(fabs(n0 - 1.0) < 1e-12 && fabs(fabs(rows[3]) - 1.0 / sqrt((double)D)) < 1e-12); /* orthogonal, spread */
  CHECK(kvq_c_rotate_rows_host(96, rows, 1) == KVQ_C_ERROR_NOT_SUPPORTED);

  /* The paged form on a host-only handle: two entries appended through permuted tables equal
   * the contiguous cache above token for token; a table column outside the pool is refused. */
  {
    enum { PT = 16, NP = 8, MP = 4 };
    int32_t tables[2][MP] = {{5, 2, 7, -1}, {1, 6, 3, -1}};
    kvq_c_cache* pc = NULL;
    CHECK(kvq_c_paged_cache_create(&v, 2, H, 48, NP, MP, &tables[0][0], MP, KVQ_C_BF16, -1, &pc) ==
          KVQ_C_SUCCESS); /* 48: not a power of two, a multiple of the key group (1 token) */
    kvq_c_cache_destroy(pc);
    pc = NULL;
    CHECK(kvq_c_paged_cache_create(&v, 2, H, PT, NP, MP, &tables[0][0], MP - 1, KVQ_C_BF16, -1, &pc) ==
          KVQ_C_ERROR_INVALID_ARGUMENT && pc == NULL); /* stride below the columns */
    CHECK(kvq_c_paged_cache_create(&v, 2, H, PT, NP, MP, NULL, MP, KVQ_C_BF16, -1, &pc) == KVQ_C_ERROR_INVALID_ARGUMENT);
    CHECK(kvq_c_paged_cache_create(&v, 2, H, PT, NP, MP, &tables[0][0], MP, KVQ_C_BF16, -1, &pc) == KVQ_C_SUCCESS);
    CHECK(kvq_c_cache_capacity(pc) == PT * MP);
    const int64_t pbytes = kvq_c_cache_bytes(pc);
    unsigned char* pool = (unsigned char*)calloc((size_t)pbytes, 1);
    int32_t plen[2] = {0, 0};
    kvq_c_append_args pa = a;
    pa.batch = 2;
    pa.heads = H;
    pa.k_stride[0] = 0, pa.v_stride[0] = 0; /* both entries get the same tokens */
    pa.num_tokens = N;                       /* 40 tokens: pages 0, 1 full, 8 in the third */
    CHECK(kvq_c_quantize_append_host(pc, pool, plen, NULL, &pa) == KVQ_C_SUCCESS);
    CHECK(plen[0] == N && plen[1] == N);
    float* pk = (float*)calloc((size_t)2 * H * PT * MP * D, sizeof(float));
    float* pv = (float*)calloc((size_t)2 * H * PT * MP * D, sizeof(float));
    float* ps = (float*)calloc((size_t)2 * H * PT * MP * D, sizeof(float));
    CHECK(kvq_c_dequantize_host(pc, pool, plen, NULL, pk, pv, ps) == KVQ_C_SUCCESS);
    int same = 1;
    for (int e = 0; e < 2; ++e)
      for (int h = 0; h < H; ++h)
        for (int t = 0; t < N; ++t)
          for (int c = 0; c < D; ++c) {
            const size_t i = (((size_t)e * H + h) * PT * MP + t) * D + c, j = (((size_t)h) * CAP + t) * D + c;
            same = same && pk[i] == keys[j] && pv[i] == values[j];
          }
    CHECK(same);
    int32_t bad[2][MP] = {{5, 2, NP, -1}, {1, 6, 3, -1}}; /* entry 0's third page outside the pool */
    CHECK(kvq_c_dequantize_host(pc, pool, plen, &bad[0][0], pk, pv, ps) == KVQ_C_ERROR_INVALID_ARGUMENT);
    plen[0] = plen[1] = PT * 2;
    pa.num_tokens = PT; /* the fourth column holds -1 */
    CHECK(kvq_c_quantize_append_host(pc, pool, plen, NULL, &pa) == KVQ_C_SUCCESS);
    CHECK(kvq_c_quantize_append_host(pc, pool, plen, NULL, &pa) == KVQ_C_ERROR_INVALID_ARGUMENT);
    CHECK(plen[0] == 3 * PT && plen[1] == 3 * PT);
    CHECK(kvq_c_append(pc, &pa) == KVQ_C_ERROR_INVALID_ARGUMENT); /* host-only handle */
    kvq_c_cache_destroy(pc);
    free(pool), free(pk), free(pv), free(ps);
  }

  /* Merge of two parts, float32, [batch 1, num_q 2, heads 1, 32]: row 0 weights e^0 and e^1;
   * row 1's part 1 is empty (LSE -inf, its O never read: NaN there must not leak). */
  {
    enum { MD = 32 };
    float op[2][2][MD], lp[2][2] = {{0.0f, 0.5f}, {1.0f, -INFINITY}};
    for (int p = 0; p < 2; ++p)
      for (int i = 0; i < 2; ++i)
        for (int e = 0; e < MD; ++e) op[p][i][e] = p == 1 && i == 1 ? NAN : (float)(p + 1) * (float)(e + i);
    double mo[2][MD], ml[2];
    kvq_c_merge_args m;
    memset(&m, 0, sizeof m);
    CHECK(kvq_c_merge_args_size() == (int32_t)sizeof(kvq_c_merge_args));
    m.o_parts = op;
    m.lse_parts = &lp[0][0];
    m.o_parts_stride[0] = 2 * MD, m.o_parts_stride[1] = MD, m.o_parts_stride[2] = MD;
    m.o_part_stride = 2 * MD;
    m.lse_part_stride = 2;
    m.num_q = 2, m.num_parts = 2, m.batch = 1, m.heads = 1, m.head_dim = MD;
    m.parts_dtype = m.dtype = KVQ_C_FP32;
    CHECK(kvq_c_merge_states_host(&m, &mo[0][0], ml) == KVQ_C_SUCCESS);
    const double w0 = 1.0 / (1.0 + exp(1.0)), w1 = 1.0 - w0;
    int merged = fabs(ml[0] - (1.0 + log(1.0 + exp(-1.0)))) < 1e-6 && fabs(ml[1] - 0.5) < 1e-6;
    for (int e = 0; e < MD; ++e)
      merged = merged && fabs(mo[0][e] - (w0 * e + w1 * 2.0 * e)) < 1e-4 && fabs(mo[1][e] - (e + 1.0)) < 1e-5;
    CHECK(merged);
    m.head_dim = 48; /* not a multiple of 32 */
    CHECK(kvq_c_merge_states_host(&m, &mo[0][0], ml) == KVQ_C_ERROR_NOT_SUPPORTED);
    m.head_dim = MD;
    m.num_parts = 0;
    CHECK(kvq_c_merge_states_host(&m, &mo[0][0], ml) == KVQ_C_ERROR_INVALID_ARGUMENT);
    CHECK(kvq_c_merge_states(&m) == KVQ_C_ERROR_INVALID_ARGUMENT); /* refused before any device call */
    m.num_parts = 2;
    m.dtype = 9;
    CHECK(kvq_c_merge_states(&m) == KVQ_C_ERROR_INVALID_ARGUMENT);
    m.dtype = KVQ_C_FP32;
    m.reserved = 1;
    CHECK(kvq_c_merge_states_host(&m, &mo[0][0], ml) == KVQ_C_ERROR_INVALID_ARGUMENT);
    CHECK(kvq_c_merge_states(NULL) == KVQ_C_ERROR_INVALID_ARGUMENT);
  }

  kvq_c_cache_destroy(c);
  kvq_c_cache_destroy(NULL);
  free(cache), free(k), free(vv), free(kf), free(keys), free(values), free(steps), free(out), free(lse), free(mass);
  if (failures == 0) printf("c_abi_host: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
