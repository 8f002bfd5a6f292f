// attention_dump OUTDIR: runs the fused attention on a few cases (chunk and short-query
// shapes) and writes, per case and batch entry, the inputs as the kernel saw them and its
// outputs as .npy (float32), plus
// OUTDIR/manifest.json. tests/kernels/torch_check.py recomputes the attention with
// PyTorch's scaled_dot_product_attention from these files (the correction as an additive
// float bias computed in the script from the stored steps) and compares.
//
// Files of case NAME, batch entry B:
//   NAME_bB_q.npy     [nq, Hq, D]     queries
//   NAME_bB_k.npy     [Hkv, nk, D]    keys: dequantized cache (host reference helpers), tail, chunk
//   NAME_bB_v.npy     [Hkv, nk, D]    values, the same segments
//   NAME_bB_step.npy  [Hkv, nquant, D] the stored step of every quantized key element
//   NAME_bB_o.npy     [nq, Hq, D]     kvq's output
//   NAME_bB_lse.npy   [Hq, nq]        kvq's LSE (natural log)
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvq/api/attention.cuh"
#include "kvq/api/default_variants.cuh"
#include "kvq/math/float_bits.hpp"
#include "kvq/reference/quantize_append.hpp"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor4)

namespace {

#define DUMP_CHECK(expr)                                                                         \
  do {                                                                                           \
    const cudaError_t e_ = (expr);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #expr, cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                              \
    }                                                                                            \
  } while (0)

void write_npy(const std::string& path, const std::vector<float>& data, const std::vector<std::size_t>& shape) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) header += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? ", " : "");
  header += "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(magic, 8);
  const std::uint16_t len = static_cast<std::uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&len), 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
}

std::uint16_t bf16_bits(float x) { return kvq::math::float_to_bf16_bits_rn(x); }

struct Case {
  const char* name;
  int batch, q_heads, kv_heads, num_q, num_chunk;
  std::vector<int> cache_lengths;
  kvq::Mask mask;
  kvq::Correction mode;
};

template <class Layout, kvq::Correction Mode>
std::string run_case(const Case& cs, const std::string& dir, std::uint64_t seed) {
  constexpr int D = Layout::kHeadDim;
  constexpr int Tk = Layout::kKeyTokensPerGroup;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  int max_len = 0;
  for (int x : cs.cache_lengths) max_len = std::max(max_len, x);
  const std::int64_t capacity = (max_len + Tk - 1) / Tk * Tk + Tk;
  Layout l;
  if (Layout::make({cs.batch, cs.kv_heads, capacity, kvq::DType::kBFloat16}, &l) != kvq::Status::kSuccess) std::exit(3);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lens(cs.batch, 0);
  // Each batch entry is built in a batch-1 cache (its own length) and copied into the
  // regions of the full layout.
  kvq::layout::CacheShape one = l.shape;
  one.batch = 1;
  Layout lb;
  if (Layout::make(one, &lb) != kvq::Status::kSuccess) std::exit(3);
  for (int b = 0; b < cs.batch; ++b) {
    const int n = cs.cache_lengths[b];
    std::vector<unsigned char> cb(static_cast<std::size_t>(lb.bytes()), 0);
    std::vector<std::uint16_t> k(static_cast<std::size_t>(n) * cs.kv_heads * D), v(k.size());
    for (int h = 0; h < cs.kv_heads; ++h) {
      std::vector<float> bias(D);
      for (int c = 0; c < D; ++c) bias[c] = (c % 7 == 0 ? 3.0f : 0.5f) * nd(rng);
      for (int t = 0; t < n; ++t)
        for (int c = 0; c < D; ++c) {
          k[(static_cast<std::size_t>(t) * cs.kv_heads + h) * D + c] = bf16_bits(nd(rng) + bias[c]);
          v[(static_cast<std::size_t>(t) * cs.kv_heads + h) * D + c] = bf16_bits(nd(rng));
        }
    }
    std::int32_t len = 0;
    const kvq::Tensor4 kt = kvq::Tensor4::contiguous(k.data(), kvq::DType::kBFloat16, n, cs.kv_heads, D);
    const kvq::Tensor4 vt = kvq::Tensor4::contiguous(v.data(), kvq::DType::kBFloat16, n, cs.kv_heads, D);
    if (kvq::reference::quantize_append(lb, cb.data(), &len, kt, vt, n) != kvq::Status::kSuccess) std::exit(4);
    auto copy = [&](std::int64_t full_off, std::int64_t one_off, std::int64_t bytes) {
      if (bytes > 0) std::memcpy(cache.data() + full_off + b * bytes, cb.data() + one_off, static_cast<std::size_t>(bytes));
    };
    copy(l.k_codes_offset(), lb.k_codes_offset(), lb.k_codes_bytes());
    copy(l.k_meta_offset(), lb.k_meta_offset(), lb.k_meta_bytes());
    copy(l.v_codes_offset(), lb.v_codes_offset(), lb.v_codes_bytes());
    copy(l.v_meta_offset(), lb.v_meta_offset(), lb.v_meta_bytes());
    copy(l.k_tail_offset(), lb.k_tail_offset(), lb.tail_bytes());
    copy(l.v_tail_offset(), lb.v_tail_offset(), lb.tail_bytes());
    lens[b] = n;
  }
  // Activations, contiguous.
  const std::size_t nq_el = static_cast<std::size_t>(cs.batch) * cs.num_q * cs.q_heads * D;
  const std::size_t nc_el = static_cast<std::size_t>(cs.batch) * cs.num_chunk * cs.kv_heads * D;
  std::vector<std::uint16_t> q(nq_el), kc(nc_el), vc(nc_el);
  for (auto& x : q) x = bf16_bits(nd(rng));
  for (std::size_t i = 0; i < nc_el; ++i) {
    kc[i] = bf16_bits(nd(rng) + ((i % D) % 7 == 0 ? 2.0f : 0.0f));
    vc[i] = bf16_bits(nd(rng));
  }
  // Device run.
  unsigned char* d_cache;
  std::uint16_t *d_q, *d_k, *d_v, *d_o;
  std::int32_t* d_lens;
  float* d_lse;
  DUMP_CHECK(cudaMalloc(&d_cache, cache.size()));
  DUMP_CHECK(cudaMalloc(&d_q, nq_el * 2));
  DUMP_CHECK(cudaMalloc(&d_o, nq_el * 2));
  DUMP_CHECK(cudaMalloc(&d_k, nc_el * 2));
  DUMP_CHECK(cudaMalloc(&d_v, nc_el * 2));
  DUMP_CHECK(cudaMalloc(&d_lens, cs.batch * 4));
  DUMP_CHECK(cudaMalloc(&d_lse, static_cast<std::size_t>(cs.batch) * cs.q_heads * cs.num_q * 4));
  DUMP_CHECK(cudaMemcpy(d_cache, cache.data(), cache.size(), cudaMemcpyHostToDevice));
  DUMP_CHECK(cudaMemcpy(d_q, q.data(), nq_el * 2, cudaMemcpyHostToDevice));
  DUMP_CHECK(cudaMemcpy(d_k, kc.data(), nc_el * 2, cudaMemcpyHostToDevice));
  DUMP_CHECK(cudaMemcpy(d_v, vc.data(), nc_el * 2, cudaMemcpyHostToDevice));
  DUMP_CHECK(cudaMemcpy(d_lens, lens.data(), cs.batch * 4, cudaMemcpyHostToDevice));
  DUMP_CHECK(cudaDeviceSynchronize());  // the copies are on the legacy stream; kvq runs on its own
  kvq::AttentionArguments a;
  a.batch = cs.batch;
  a.q_heads = cs.q_heads;
  a.num_q = cs.num_q;
  a.num_chunk = cs.num_chunk;
  a.q = kvq::Tensor4::contiguous(d_q, kvq::DType::kBFloat16, cs.num_q, cs.q_heads, D);
  a.o = kvq::Tensor4::contiguous(d_o, kvq::DType::kBFloat16, cs.num_q, cs.q_heads, D);
  a.k_chunk = kvq::Tensor4::contiguous(d_k, kvq::DType::kBFloat16, cs.num_chunk, cs.kv_heads, D);
  a.v_chunk = kvq::Tensor4::contiguous(d_v, kvq::DType::kBFloat16, cs.num_chunk, cs.kv_heads, D);
  a.cache = d_cache;
  a.cache_lengths = d_lens;
  a.scale = scale;
  a.mask = cs.mask;
  a.lse = d_lse;
  cudaStream_t stream = nullptr;
  DUMP_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const kvq::Status st = kvq::attention<Mode>(l, a, stream);
  if (st != kvq::Status::kSuccess) {
    std::fprintf(stderr, "kvq::attention failed: %s\n", kvq::to_string(st));
    std::exit(5);
  }
  DUMP_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> o(nq_el);
  std::vector<float> lse(static_cast<std::size_t>(cs.batch) * cs.q_heads * cs.num_q);
  DUMP_CHECK(cudaMemcpy(o.data(), d_o, nq_el * 2, cudaMemcpyDeviceToHost));
  DUMP_CHECK(cudaMemcpy(lse.data(), d_lse, lse.size() * 4, cudaMemcpyDeviceToHost));
  cudaFree(d_cache), cudaFree(d_q), cudaFree(d_o), cudaFree(d_k), cudaFree(d_v), cudaFree(d_lens), cudaFree(d_lse);

  // Dump.
  const auto p = kvq::layout::CachePointers<Layout>::from_base(l, cache.data());
  std::ostringstream entries;
  for (int b = 0; b < cs.batch; ++b) {
    const std::int64_t qn = Layout::quantized_length(lens[b]), tn = Layout::tail_length(lens[b]);
    const std::int64_t nk = qn + tn + cs.num_chunk;
    std::vector<float> fq(static_cast<std::size_t>(cs.num_q) * cs.q_heads * D), fo(fq.size());
    for (std::size_t i = 0; i < fq.size(); ++i) {
      const std::size_t src = static_cast<std::size_t>(b) * cs.num_q * cs.q_heads * D + i;
      fq[i] = kvq::math::bf16_bits_to_float(q[src]);
      fo[i] = kvq::math::bf16_bits_to_float(o[src]);
    }
    std::vector<float> fk(static_cast<std::size_t>(cs.kv_heads) * nk * D), fv(fk.size()),
        fs(static_cast<std::size_t>(cs.kv_heads) * qn * D);
    for (int h = 0; h < cs.kv_heads; ++h)
      for (std::int64_t t = 0; t < nk; ++t)
        for (int c = 0; c < D; ++c) {
          const std::size_t dst = (static_cast<std::size_t>(h) * nk + t) * D + c;
          if (t < qn) {
            float step = 0;
            fk[dst] = kvq::reference::dequantized_key(l, cache.data(), b, h, t, c, &step);
            fv[dst] = kvq::reference::dequantized_value(l, cache.data(), b, h, t, c);
            fs[(static_cast<std::size_t>(h) * qn + t) * D + c] = step;
          } else if (t < qn + tn) {
            const int i = static_cast<int>(t - qn);
            fk[dst] = kvq::load_as_float(p.k_tail, kvq::DType::kBFloat16, l.tail_index(b, h, i, c));
            fv[dst] = kvq::load_as_float(p.v_tail, kvq::DType::kBFloat16, l.tail_index(b, h, i, c));
          } else {
            const std::size_t src = ((static_cast<std::size_t>(b) * cs.num_chunk + (t - qn - tn)) * cs.kv_heads + h) * D + c;
            fk[dst] = kvq::math::bf16_bits_to_float(kc[src]);
            fv[dst] = kvq::math::bf16_bits_to_float(vc[src]);
          }
        }
    std::vector<float> fl(static_cast<std::size_t>(cs.q_heads) * cs.num_q);
    for (int h = 0; h < cs.q_heads; ++h)
      for (int i = 0; i < cs.num_q; ++i) fl[h * cs.num_q + i] = lse[(static_cast<std::size_t>(b) * cs.q_heads + h) * cs.num_q + i];
    const std::string base = dir + "/" + cs.name + "_b" + std::to_string(b) + "_";
    const std::size_t nqs = cs.num_q, hq = cs.q_heads, hk = cs.kv_heads;
    write_npy(base + "q.npy", fq, {nqs, hq, D});
    write_npy(base + "o.npy", fo, {nqs, hq, D});
    write_npy(base + "k.npy", fk, {hk, static_cast<std::size_t>(nk), D});
    write_npy(base + "v.npy", fv, {hk, static_cast<std::size_t>(nk), D});
    write_npy(base + "step.npy", fs, {hk, static_cast<std::size_t>(qn), D});
    write_npy(base + "lse.npy", fl, {hq, nqs});
    entries << (b ? ", " : "") << "{\"b\": " << b << ", \"quantized\": " << qn << ", \"tail\": " << tn
            << ", \"chunk\": " << cs.num_chunk << ", \"nq\": " << cs.num_q << "}";
  }
  std::ostringstream js;
  js << "{\"name\": \"" << cs.name << "\", \"scale\": " << scale << ", \"causal\": " << (cs.mask == kvq::Mask::kCausalLastSegment ? 1 : 0)
     << ", \"mode\": \"" << kvq::to_string(Mode) << "\", \"entries\": [" << entries.str() << "]}";
  std::printf("dumped %s\n", cs.name);
  return js.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 1;
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  const std::string dir = argv[1];
  using kvq::Correction;
  std::vector<std::string> cases;
  cases.push_back(run_case<kvq::variants::Int2Pt128D128, Correction::kTaylor2>(
      {"int2_pt128_taylor2", 2, 8, 2, 200, 150, {333, 200}, kvq::Mask::kNone, Correction::kTaylor2}, dir, 11));
  cases.push_back(run_case<kvq::variants::Int2Pc32D128, Correction::kTaylor2>(
      {"int2_pc32_taylor2_causal", 2, 4, 4, 130, 130, {300, 77}, kvq::Mask::kCausalLastSegment, Correction::kTaylor2}, dir, 12));
  cases.push_back(run_case<kvq::variants::Int4Pc32D128, Correction::kTaylor4>(
      {"int4_pc32_taylor4", 1, 4, 2, 96, 64, {515}, kvq::Mask::kNone, Correction::kTaylor4}, dir, 13));
  // Short queries (kvq::attention runs the short-query kernel: num_q <= 16): decode with GQA 4
  // and a split cache, 16 causal queries with GQA 4, INT4 decode.
  cases.push_back(run_case<kvq::variants::Int2Pt128D128, Correction::kTaylor2>(
      {"int2_pt128_taylor2_decode", 2, 32, 8, 1, 1, {4000, 33}, kvq::Mask::kNone, Correction::kTaylor2}, dir, 14));
  cases.push_back(run_case<kvq::variants::Int2Pc32D128, Correction::kTaylor2>(
      {"int2_pc32_taylor2_q16_causal", 2, 16, 4, 16, 16, {3000, 129}, kvq::Mask::kCausalLastSegment, Correction::kTaylor2},
      dir, 15));
  cases.push_back(run_case<kvq::variants::Int4Pc32D128, Correction::kTaylor4>(
      {"int4_pc32_taylor4_decode", 1, 4, 2, 1, 1, {2000}, kvq::Mask::kNone, Correction::kTaylor4}, dir, 16));
  std::ofstream m(dir + "/manifest.json");
  m << "{\"cases\": [";
  for (std::size_t i = 0; i < cases.size(); ++i) m << (i ? ", " : "") << cases[i];
  m << "]}\n";
  return 0;
}
