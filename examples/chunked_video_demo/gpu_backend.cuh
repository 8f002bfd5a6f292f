// The demo's GPU path: the cache lives on the device, chunks are appended with
// kvq::quantize_append and attended with kvq::attention (default variants, compiled
// in attention_variants.cu).
#pragma once

#include <kvq/api/default_variants.cuh>
#include <kvq/api/quantize_append.cuh>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

// The demo's pairs are instantiated in attention_variants.cu.
KVQ_FOR_EACH_DEFAULT_ATTENTION_VARIANT(KVQ_DECLARE_ATTENTION)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_DECLARE_ATTENTION(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kNone)
KVQ_DECLARE_ATTENTION(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kNone)
KVQ_DECLARE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2)
KVQ_DECLARE_ATTENTION(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kNone)
KVQ_DECLARE_ATTENTION(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2)

namespace kvq_demo {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
inline void check(kvq::Status s, const char* what) {
  if (s != kvq::Status::kSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, kvq::to_string(s));
    std::exit(1);
  }
}

inline bool gpu_available() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  return ok;
}

template <class T>
struct Device {
  T* p = nullptr;
  explicit Device(std::size_t n) { check(cudaMalloc(&p, (n ? n : 1) * sizeof(T)), "cudaMalloc"); }
  ~Device() { cudaFree(p); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
};

/// The whole bf16 sequence on the device, [tokens, heads, D] each.
struct DeviceSequence {
  int tokens, heads, dim;
  Device<std::uint16_t> k, v, q;
  cudaStream_t stream = nullptr;  ///< kvq's calls run here (explicit, non-blocking)
  DeviceSequence(const std::vector<std::uint16_t>& hk, const std::vector<std::uint16_t>& hv, const std::vector<std::uint16_t>& hq,
                 int tokens_, int heads_, int dim_)
      : tokens(tokens_), heads(heads_), dim(dim_), k(hk.size()), v(hv.size()), q(hq.size()) {
    check(cudaMemcpy(k.p, hk.data(), hk.size() * 2, cudaMemcpyHostToDevice), "upload k");
    check(cudaMemcpy(v.p, hv.data(), hv.size() * 2, cudaMemcpyHostToDevice), "upload v");
    check(cudaMemcpy(q.p, hq.data(), hq.size() * 2, cudaMemcpyHostToDevice), "upload q");
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    check(cudaDeviceSynchronize(), "uploads");  // legacy-stream copies before the non-blocking stream reads
  }
  ~DeviceSequence() { cudaStreamDestroy(stream); }
  DeviceSequence(const DeviceSequence&) = delete;
  DeviceSequence& operator=(const DeviceSequence&) = delete;
  kvq::Tensor4 view(Device<std::uint16_t>& x, int first) const {
    return {x.p + static_cast<std::size_t>(first) * heads * dim, kvq::DType::kBFloat16,
            static_cast<std::int64_t>(tokens) * heads * dim, static_cast<std::int64_t>(heads) * dim, dim};
  }
};

/// One attention call of `n` query rows starting at token `q_first`; returns the output
/// as doubles [n, heads, D], the LSE [heads, n] and the mean mass on the current chunk.
template <class Layout, kvq::Correction Mode>
void attend(DeviceSequence& s, const Layout& l, const void* cache, const std::int32_t* d_lengths, int q_first, int n,
            int chunk_first, int chunk_tokens, std::vector<double>* out, std::vector<double>* lse, double* mass_current) {
  Device<std::uint16_t> o(static_cast<std::size_t>(n) * s.heads * s.dim);
  Device<float> d_lse(static_cast<std::size_t>(s.heads) * n), d_mass(static_cast<std::size_t>(s.heads) * n * 3);
  kvq::AttentionArguments a;
  a.batch = 1;
  a.q_heads = s.heads;
  a.num_q = n;
  a.num_chunk = chunk_tokens;
  a.q = s.view(s.q, q_first);
  a.k_chunk = s.view(s.k, chunk_first);
  a.v_chunk = s.view(s.v, chunk_first);
  a.o = kvq::Tensor4::contiguous(o.p, kvq::DType::kBFloat16, n, s.heads, s.dim);
  a.cache = cache;
  a.cache_lengths = d_lengths;
  a.scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
  a.lse = d_lse.p;
  a.mass = d_mass.p;
  check(kvq::attention<Mode>(l, a, s.stream), "kvq::attention");
  check(cudaStreamSynchronize(s.stream), "attention");
  std::vector<std::uint16_t> ho(static_cast<std::size_t>(n) * s.heads * s.dim);
  std::vector<float> hl(static_cast<std::size_t>(s.heads) * n), hm(static_cast<std::size_t>(s.heads) * n * 3);
  check(cudaMemcpy(ho.data(), o.p, ho.size() * 2, cudaMemcpyDeviceToHost), "download o");
  check(cudaMemcpy(hl.data(), d_lse.p, hl.size() * 4, cudaMemcpyDeviceToHost), "download lse");
  check(cudaMemcpy(hm.data(), d_mass.p, hm.size() * 4, cudaMemcpyDeviceToHost), "download mass");
  out->resize(ho.size());
  for (std::size_t i = 0; i < ho.size(); ++i) (*out)[i] = kvq::math::bf16_bits_to_float(ho[i]);
  lse->assign(hl.begin(), hl.end());
  double m = 0.0;
  for (std::size_t i = 0; i < hm.size(); i += 3) m += hm[i + 2];
  *mass_current = m / (static_cast<double>(s.heads) * n);
}

/// A quantized cache on the device with the sequence it is built from.
template <class Layout>
class GpuCache {
 public:
  GpuCache(const Layout& l, DeviceSequence& s) : l_(l), s_(s), cache_(static_cast<std::size_t>(l.bytes())), lengths_(1) {
    check(cudaMemsetAsync(lengths_.p, 0, sizeof(std::int32_t), s.stream), "cudaMemsetAsync");
  }
  /// Appends tokens [first, first + n) of the sequence (the cache holds exactly `first` tokens).
  void append(int first, int n) {
    kvq::AppendArguments a;
    a.cache = cache_.p;
    a.k = s_.view(s_.k, first);
    a.v = s_.view(s_.v, first);
    a.num_tokens = n;
    a.lengths = lengths_.p;
    a.max_cache_length = first;
    check(kvq::quantize_append(l_, a, s_.stream), "kvq::quantize_append");
  }
  /// Queries of tokens [first, first + n) attend to the cache and to themselves.
  void attend(int first, int n, kvq::Correction mode, double* mass_current, std::vector<double>* out) {
    std::vector<double> lse;
    if (mode == kvq::Correction::kTaylor2)
      kvq_demo::attend<Layout, kvq::Correction::kTaylor2>(s_, l_, cache_.p, lengths_.p, first, n, first, n, out, &lse, mass_current);
    else
      kvq_demo::attend<Layout, kvq::Correction::kNone>(s_, l_, cache_.p, lengths_.p, first, n, first, n, out, &lse, mass_current);
  }

 private:
  Layout l_;
  DeviceSequence& s_;
  Device<unsigned char> cache_;
  Device<std::int32_t> lengths_;
};

/// A paged cache on the device (rolling and selection modes): the pool, a one-column table
/// through which each chunk is appended into its own page, and the table attention reads.
template <class Paged>
class GpuPagedCache {
 public:
  using View = kvq::layout::PagedView<Paged>;
  GpuPagedCache(const Paged& pl, DeviceSequence& s)
      : pl_(pl), s_(s), pool_(static_cast<std::size_t>(pl.bytes())), append_table_(static_cast<std::size_t>(pl.shape.max_pages_per_entry)),
        table_(static_cast<std::size_t>(pl.shape.max_pages_per_entry)), length_(1) {}
  /// Quantizes tokens [first, first + n) (n <= page_tokens) into page `page` (an entry of length 0
  /// whose table lists that page).
  void append(int first, int n, std::int32_t page) {
    upload(append_table_.p, &page, 1);
    const std::int32_t zero = 0;
    upload(length_.p, &zero, 1);
    kvq::AppendArguments a;
    a.cache = pool_.p;
    a.k = s_.view(s_.k, first);
    a.v = s_.view(s_.v, first);
    a.num_tokens = n;
    a.lengths = length_.p;
    a.max_cache_length = 0;
    check(kvq::quantize_append(View::bind(pl_, append_table_.p, pl_.shape.max_pages_per_entry), a, s_.stream),
          "kvq::quantize_append (paged)");
  }
  /// Queries of tokens [first, first + n) attend to the listed pages (full pages) and to themselves.
  void attend(const std::vector<std::int32_t>& pages, int first, int n, kvq::Correction mode, double* mass_current,
              std::vector<double>* out) {
    upload(table_.p, pages.data(), pages.size());
    const std::int32_t len = static_cast<std::int32_t>(pages.size()) * pl_.shape.page_tokens;
    upload(length_.p, &len, 1);
    const View v = View::bind(pl_, table_.p, pl_.shape.max_pages_per_entry);
    std::vector<double> lse;
    if (mode == kvq::Correction::kTaylor2)
      kvq_demo::attend<View, kvq::Correction::kTaylor2>(s_, v, pool_.p, length_.p, first, n, first, n, out, &lse, mass_current);
    else
      kvq_demo::attend<View, kvq::Correction::kNone>(s_, v, pool_.p, length_.p, first, n, first, n, out, &lse, mass_current);
  }

 private:
  void upload(std::int32_t* dst, const std::int32_t* src, std::size_t n) {
    if (n == 0) return;
    check(cudaMemcpyAsync(dst, src, n * sizeof(std::int32_t), cudaMemcpyHostToDevice, s_.stream), "table upload");
    check(cudaStreamSynchronize(s_.stream), "table upload");
  }
  Paged pl_;
  DeviceSequence& s_;
  Device<unsigned char> pool_;
  Device<std::int32_t> append_table_, table_, length_;
};

/// The bf16 baseline: queries of [first, first + n) attend to all tokens [0, first + n)
/// unquantized. The mass on the current chunk is exp(LSE over the chunk − LSE over all).
inline void dense_attend(DeviceSequence& s, int first, int n, std::vector<double>* out, double* mass_current) {
  using L = kvq::variants::Int2Pt128D128;  // any layout: the cache is empty
  L l;
  check(L::make({1, s.heads, 0, kvq::DType::kBFloat16}, &l), "layout");
  std::vector<double> lse_all, lse_own, own_out;
  double unused = 0.0;
  attend<L, kvq::Correction::kNone>(s, l, nullptr, nullptr, first, n, 0, first + n, out, &lse_all, &unused);
  attend<L, kvq::Correction::kNone>(s, l, nullptr, nullptr, first, n, first, n, &own_out, &lse_own, &unused);
  double m = 0.0;
  for (std::size_t i = 0; i < lse_all.size(); ++i) m += std::exp(lse_own[i] - lse_all[i]);
  *mass_current = m / static_cast<double>(lse_all.size());
}

}  // namespace kvq_demo
