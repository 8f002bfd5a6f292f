// fidelity_study: how much of the Jensen bias each cache configuration leaves, and how
// large its output error is, on the CPU reference. Writes CSV for tools/plot_fidelity.py
// and docs/fidelity.md.
//
// Data: the demo's synthetic model (examples/chunked_video_demo/synthetic_kv.hpp), one
// head of D = 128, values rounded to bf16: a cache of kCache tokens, then a chunk of
// kChunk tokens whose first kRows queries attend to [cache ; chunk] (bidirectional, scale
// 1/sqrt(D)). Swept: outlier profile x query std x seed (averaged) x key configuration
// (bits {2, 4} x PerToken G {32, 64, 128} x rotation {none, hadamard} and PerChannel
// G {32, 64, 128}; plus, study-only, PerToken G128 keys centred by the per-channel mean of
// the cache's first kChunk tokens) x correction {none, taylor2, taylor4, exact} x value
// configuration (full precision, INT2 G128, INT4 G128, INT2 G32 and, study-only, INT2 G128
// of rotated values).
//
// Everything goes through the library: keys and values are quantized by
// kvq::reference::quantize_append into real layouts (rotated-key layouts rotate the keys
// themselves), read back with dequantized_key/dequantized_value, queries are rotated
// with math::hadamard_rotate<D, double> and corrections come from
// reference::key_correction, as in reference::attention (Exact from the float
// math::log_sinhc, for speed). Attention itself is computed here so that the scores of
// one key configuration serve every correction and every value configuration (the output
// products in float); --self-check compares this path with reference::attention.
//
// Metrics, per (profile, query std, key configuration, correction), means over rows and
// seeds:
//   mass_fp        softmax mass of the chunk with the full-precision cache;
//   mass_bias      mass − mass_fp (the Jensen bias shows as a negative number);
//   mass_mae       mean |mass − mass_fp| over rows;
//   mass_bias_seed_sd  the standard deviation of the per-seed mean biases;
//   bias_removed   1 − |mass_bias| / |mass_bias without correction| (same key configuration);
//   noise_mean, noise_var_ratio, noise_score_corr   the cached keys' score noise
//                  n = ŝ − s (scale·q·ε, before correction): its mean (nats), its second
//                  moment over the noise model's variance scale²·Σ_j q_j²Δ_j²/12 (1 when
//                  the uniform model holds), and its correlation with the full-precision
//                  score s over the tokens of a row (0 when the noise is independent of k);
//   out_err_<v>    sqrt(Σ‖o − o_fp‖² / Σ‖o_fp‖²) over rows, o_fp the output with the
//                  full-precision cache (keys and values), for value configuration <v>.
//
//   fidelity_study [--out DIR] [--seeds N] [--threads N] [--self-check]
#include <kvq/kvq.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "synthetic_kv.hpp"

namespace {

constexpr int D = 128;
using kvq::Correction;
using kvq::Granularity;
using kvq::Rotation;
using kvq::Status;

const Correction kModes[] = {Correction::kNone, Correction::kTaylor2, Correction::kTaylor4, Correction::kExact};

struct Sizes {
  int cache = 2048;
  int chunk = 768;
  int rows = 128;
};

/// One data setting: [cache ; chunk] tokens of one head, bf16-exact floats, [token][D].
struct Data {
  Sizes n;
  std::vector<float> k, v, q;  // q: the first n.rows queries of the chunk
  Data(const Sizes& sz, kvq_demo::Outliers profile, float query_std, unsigned seed) : n(sz) {
    const kvq_demo::SyntheticKV x(n.cache + n.chunk, 1, D, profile, query_std, seed);
    auto bf16 = [](float f) { return kvq::math::bf16_bits_to_float(kvq::math::float_to_bf16_bits_rn(f)); };
    k.resize(x.k.size()), v.resize(x.v.size());
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = bf16(x.k[i]), v[i] = bf16(x.v[i]);
    q.resize(static_cast<std::size_t>(n.rows) * D);
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = bf16(x.q[static_cast<std::size_t>(n.cache) * D + i]);
  }
  const float* key(int t) const { return &k[static_cast<std::size_t>(t) * D]; }
  const float* value(int t) const { return &v[static_cast<std::size_t>(t) * D]; }
  const float* query(int i) const { return &q[static_cast<std::size_t>(i) * D]; }
};

kvq::Tensor4 tensor(const float* p, int tokens) {
  return kvq::Tensor4::contiguous(const_cast<float*>(p), kvq::DType::kFloat32, tokens, 1, D);
}

/// Dequantized cache keys (in the cache's basis) and their steps, [cache][D].
struct KeyCache {
  std::vector<double> khat;
  std::vector<float> steps;
  bool rotated = false;
  std::vector<double> center;  // per-channel mean subtracted before quantization (empty: none)
};

using V8 = kvq::QuantSpec<8, 128, Granularity::kPerToken>;  // values of the key-only layouts (unused)
using K8 = kvq::QuantSpec<8, 128, Granularity::kPerToken>;  // keys of the value-only layouts (unused)

template <class KS, Rotation R>
KeyCache quantize_keys(const Data& d, bool centered) {
  using L = kvq::layout::CacheLayout<KS, V8, D, R>;
  L l;
  if (L::make({1, 1, d.n.cache, kvq::DType::kFloat32}, &l) != Status::kSuccess) std::abort();
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<float> keys(d.k.begin(), d.k.begin() + static_cast<std::ptrdiff_t>(d.n.cache) * D);
  KeyCache kc;
  kc.rotated = L::kRotatedKeys;
  if (centered) {  // the mean of the first chunk's worth of cached tokens, per channel
    kc.center.assign(D, 0.0);
    for (int t = 0; t < d.n.chunk; ++t)
      for (int c = 0; c < D; ++c) kc.center[c] += keys[static_cast<std::size_t>(t) * D + c];
    for (double& m : kc.center) m = static_cast<float>(m / d.n.chunk);
    for (int t = 0; t < d.n.cache; ++t)
      for (int c = 0; c < D; ++c) keys[static_cast<std::size_t>(t) * D + c] -= static_cast<float>(kc.center[c]);
  }
  std::int32_t len = 0;
  if (kvq::reference::quantize_append(l, cache.data(), &len, tensor(keys.data(), d.n.cache), tensor(d.v.data(), d.n.cache),
                                      d.n.cache) != Status::kSuccess)
    std::abort();
  kc.khat.resize(keys.size());
  kc.steps.resize(keys.size());
  for (int t = 0; t < d.n.cache; ++t)
    for (int c = 0; c < D; ++c) {
      const std::size_t i = static_cast<std::size_t>(t) * D + c;
      kc.khat[i] = kvq::reference::dequantized_key(l, cache.data(), 0, 0, t, c, &kc.steps[i]);
    }
  return kc;
}

/// Dequantized cache values, [cache][D]; `rotated`: the values are rotated before they are
/// quantized and the dequantized rows rotated back (o = Σ p·Rᵀv̂' = Rᵀ·Σ p·v̂').
template <class VS>
std::vector<double> quantize_values(const Data& d, bool rotated) {
  using L = kvq::layout::CacheLayout<K8, VS, D>;
  L l;
  if (L::make({1, 1, d.n.cache, kvq::DType::kFloat32}, &l) != Status::kSuccess) std::abort();
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<float> values(d.v.begin(), d.v.begin() + static_cast<std::ptrdiff_t>(d.n.cache) * D);
  if (rotated)
    for (int t = 0; t < d.n.cache; ++t) kvq::math::hadamard_rotate<D>(&values[static_cast<std::size_t>(t) * D]);
  std::int32_t len = 0;
  if (kvq::reference::quantize_append(l, cache.data(), &len, tensor(d.k.data(), d.n.cache), tensor(values.data(), d.n.cache),
                                      d.n.cache) != Status::kSuccess)
    std::abort();
  std::vector<double> vhat(values.size());
  for (int t = 0; t < d.n.cache; ++t) {
    double* row = &vhat[static_cast<std::size_t>(t) * D];
    for (int c = 0; c < D; ++c) row[c] = kvq::reference::dequantized_value(l, cache.data(), 0, 0, t, c);
    if (rotated) kvq::math::hadamard_rotate_inverse<D>(row);
  }
  return vhat;
}

struct KeyConfig {
  int bits;  // 16: full precision
  Granularity gran;
  int group;
  Rotation rot;
  bool centered;
  double bytes;  // key bytes per token
  std::function<KeyCache(const Data&)> make;
};

struct ValueConfig {
  const char* name;
  int bits, group;
  bool rotated;
  double bytes;
  std::function<std::vector<double>(const Data&)> make;
};

template <class KS>
constexpr double key_bytes() {
  using L = kvq::layout::CacheLayout<KS, V8, D>;
  return 4.0 * L::kKeyWordsPerToken + static_cast<double>(sizeof(typename L::KMeta)) * L::kKeyGroupsPerTokenGroup / L::kKeyTokensPerGroup;
}
template <class VS>
constexpr double value_bytes() {
  using L = kvq::layout::CacheLayout<K8, VS, D>;
  return 4.0 * L::kValueWordsPerToken + static_cast<double>(sizeof(typename L::VMeta)) * L::kValueGroupsPerToken;
}

template <int B, int G, Granularity Gr, Rotation R>
void add_key(std::vector<KeyConfig>* out, bool centered = false) {
  using KS = kvq::QuantSpec<B, G, Gr>;
  out->push_back({B, Gr, G, R, centered, key_bytes<KS>(), [centered](const Data& d) { return quantize_keys<KS, R>(d, centered); }});
}

template <int B>
void add_keys_of_bits(std::vector<KeyConfig>* k) {
  add_key<B, 32, Granularity::kPerToken, Rotation::kNone>(k);
  add_key<B, 64, Granularity::kPerToken, Rotation::kNone>(k);
  add_key<B, 128, Granularity::kPerToken, Rotation::kNone>(k);
  add_key<B, 32, Granularity::kPerToken, Rotation::kHadamard>(k);
  add_key<B, 64, Granularity::kPerToken, Rotation::kHadamard>(k);
  add_key<B, 128, Granularity::kPerToken, Rotation::kHadamard>(k);
  add_key<B, 32, Granularity::kPerChannel, Rotation::kNone>(k);
  add_key<B, 64, Granularity::kPerChannel, Rotation::kNone>(k);
  add_key<B, 128, Granularity::kPerChannel, Rotation::kNone>(k);
  add_key<B, 128, Granularity::kPerToken, Rotation::kNone>(k, /*centered=*/true);
  add_key<B, 128, Granularity::kPerToken, Rotation::kHadamard>(k, /*centered=*/true);
}

std::vector<KeyConfig> key_configs() {
  std::vector<KeyConfig> k;
  k.push_back({16, Granularity::kPerToken, 0, Rotation::kNone, false, 2.0 * D, [](const Data& d) {
                 KeyCache kc;
                 kc.khat.assign(d.k.begin(), d.k.begin() + static_cast<std::ptrdiff_t>(d.n.cache) * D);
                 kc.steps.assign(kc.khat.size(), 0.0f);
                 return kc;
               }});
  add_keys_of_bits<2>(&k);
  add_keys_of_bits<4>(&k);
  return k;
}

template <int B, int G>
ValueConfig value_config(const char* name, bool rotated) {
  using VS = kvq::QuantSpec<B, G, Granularity::kPerToken>;
  return {name, B, G, rotated, value_bytes<VS>(), [rotated](const Data& d) { return quantize_values<VS>(d, rotated); }};
}

std::vector<ValueConfig> value_configs() {
  std::vector<ValueConfig> v;
  v.push_back({"fp", 16, 0, false, 2.0 * D, [](const Data& d) {
                 return std::vector<double>(d.v.begin(), d.v.begin() + static_cast<std::ptrdiff_t>(d.n.cache) * D);
               }});
  v.push_back(value_config<2, 128>("v2_g128", false));
  v.push_back(value_config<4, 128>("v4_g128", false));
  v.push_back(value_config<2, 32>("v2_g32", false));
  v.push_back(value_config<2, 128>("v2_g128_rot", true));
  return v;
}

/// Sums over rows of one (key configuration, correction) on one data setting.
struct Sums {
  double rows = 0, mass = 0, mass_fp = 0, mass_abs = 0;
  std::vector<double> err_num, err_den;  // per value configuration
  // Score noise n_t = ŝ_t − s_t of the cache's keys (before any correction), over rows and
  // tokens: its mean, its second moment, the noise model's variance (2 · the Taylor2 term,
  // scale²·Σ q_j² Δ_j² / 12) and, per row, its correlation with the full-precision score.
  double noise_n = 0, noise_sum = 0, noise_sq = 0, model_var = 0, noise_corr = 0;
  void add(const Sums& o) {
    rows += o.rows, mass += o.mass, mass_fp += o.mass_fp, mass_abs += o.mass_abs;
    if (err_num.empty()) err_num.assign(o.err_num.size(), 0.0), err_den.assign(o.err_den.size(), 0.0);
    for (std::size_t i = 0; i < err_num.size(); ++i) err_num[i] += o.err_num[i], err_den[i] += o.err_den[i];
    noise_n += o.noise_n, noise_sum += o.noise_sum, noise_sq += o.noise_sq, model_var += o.model_var;
    noise_corr += o.noise_corr;
  }
};

/// Everything of one data setting that does not depend on the key configuration.
struct Prepared {
  const Data& d;
  double scale;
  std::vector<double> s_chunk;                // [rows][chunk]
  std::vector<double> s_cache;                // [rows][cache] full-precision scores of the cache
  std::vector<double> mass_fp;                // [rows]
  std::vector<double> o_fp;                   // [rows][D]
  std::vector<std::vector<float>> vhat;       // per value configuration, [cache][D] (rounded to float)
  std::vector<double> qrot;                   // [rows][D] rotated queries (double)
  explicit Prepared(const Data& data, const std::vector<ValueConfig>& vcs) : d(data), scale(1.0 / std::sqrt(double{D})) {
    const Sizes& n = d.n;
    s_chunk.resize(static_cast<std::size_t>(n.rows) * n.chunk);
    s_cache.resize(static_cast<std::size_t>(n.rows) * n.cache);
    mass_fp.resize(n.rows);
    o_fp.assign(static_cast<std::size_t>(n.rows) * D, 0.0);
    qrot.resize(static_cast<std::size_t>(n.rows) * D);
    for (int i = 0; i < n.rows; ++i) {
      for (int c = 0; c < D; ++c) qrot[static_cast<std::size_t>(i) * D + c] = d.query(i)[c];
      kvq::math::hadamard_rotate<D>(&qrot[static_cast<std::size_t>(i) * D]);
      std::vector<double> s(static_cast<std::size_t>(n.cache) + n.chunk);
      for (int t = 0; t < n.cache + n.chunk; ++t) s[t] = scale * dot(d.query(i), d.key(t));
      for (int j = 0; j < n.chunk; ++j) s_chunk[static_cast<std::size_t>(i) * n.chunk + j] = s[static_cast<std::size_t>(n.cache) + j];
      for (int t = 0; t < n.cache; ++t) s_cache[static_cast<std::size_t>(i) * n.cache + t] = s[t];
      const double m = *std::max_element(s.begin(), s.end());
      double z = 0, zc = 0;
      double* o = &o_fp[static_cast<std::size_t>(i) * D];
      for (int t = 0; t < n.cache + n.chunk; ++t) {
        const double w = std::exp(s[t] - m);
        z += w;
        if (t >= n.cache) zc += w;
        for (int c = 0; c < D; ++c) o[c] += w * d.value(t)[c];
      }
      for (int c = 0; c < D; ++c) o[c] /= z;
      mass_fp[i] = zc / z;
    }
    for (const ValueConfig& vc : vcs) {
      const std::vector<double> x = vc.make(d);
      vhat.emplace_back(x.begin(), x.end());
    }
  }
  static double dot(const float* a, const float* b) {
    double s = 0;
    for (int c = 0; c < D; ++c) s += double{a[c]} * b[c];
    return s;
  }
};

/// The correction of one cached key's score: reference::key_correction, except Exact, whose
/// terms come from the float log_sinhc the kernels use (summed in double; relative error of
/// each term about 1e-7), several times faster than the double form.
double correction(const double* qc, const float* steps, double scale, Correction mode) {
  if (mode != Correction::kExact) return kvq::reference::key_correction<D>(qc, steps, scale, mode);
  double sum = 0;
  for (int c = 0; c < D; ++c) sum += kvq::math::log_sinhc(static_cast<float>(scale * qc[c] * static_cast<double>(steps[c]) / 2.0));
  return sum;
}

/// The sums of every correction mode for one key configuration on one data setting.
std::vector<Sums> evaluate(const Prepared& p, const KeyCache& kc, bool quantized) {
  const Data& d = p.d;
  const Sizes& n = d.n;
  const std::size_t nv = p.vhat.size(), rows = static_cast<std::size_t>(n.rows);
  const std::size_t modes = quantized ? 4 : 1;
  std::vector<Sums> out(modes);
  for (Sums& s : out) s.err_num.assign(nv, 0.0), s.err_den.assign(nv, 0.0);
  // Softmax weights, token-major ([token][row]) so that the output products below read each
  // value row once for all query rows: cache tokens then chunk tokens.
  const std::size_t tokens = static_cast<std::size_t>(n.cache) + n.chunk;
  std::vector<std::vector<float>> w(modes, std::vector<float>(tokens * rows));
  std::vector<double> raw(n.cache), corr(n.cache), s(tokens);
  for (int i = 0; i < n.rows; ++i) {
    const double* qc = kc.rotated ? &p.qrot[static_cast<std::size_t>(i) * D] : nullptr;
    double qd[D];
    for (int c = 0; c < D; ++c) qd[c] = d.query(i)[c];
    if (!qc) qc = qd;
    double shift = 0;  // q·mu for centred keys (the cache holds k − mu)
    if (!kc.center.empty())
      for (int c = 0; c < D; ++c) shift += qd[c] * kc.center[c];
    for (int t = 0; t < n.cache; ++t) {
      const double* k = &kc.khat[static_cast<std::size_t>(t) * D];
      double acc = 0;
      for (int c = 0; c < D; ++c) acc += qc[c] * k[c];
      raw[t] = p.scale * (acc + shift);
    }
    for (std::size_t m = 0; m < modes; ++m) {
      const Correction mode = kModes[m];
      // Corrections: tokens with the same steps as the previous token (PerChannel groups) reuse it.
      for (int t = 0; t < n.cache; ++t) {
        const float* st = &kc.steps[static_cast<std::size_t>(t) * D];
        if (t > 0 && std::memcmp(st, st - D, sizeof(float) * D) == 0) {
          corr[t] = corr[t - 1];
          continue;
        }
        corr[t] = correction(qc, st, p.scale, mode);
      }
      if (mode == Correction::kTaylor2) {  // the score noise against the noise model
        const double* sf = &p.s_cache[static_cast<std::size_t>(i) * n.cache];
        double sn = 0, snn = 0, ss = 0, sss = 0, sns = 0, mv = 0;
        for (int t = 0; t < n.cache; ++t) {
          const double e = raw[t] - sf[t];
          sn += e, snn += e * e, ss += sf[t], sss += sf[t] * sf[t], sns += e * sf[t], mv += 2.0 * corr[t];
        }
        const double nc = n.cache, cov = sns / nc - sn / nc * ss / nc;
        const double var_n = snn / nc - (sn / nc) * (sn / nc), var_s = sss / nc - (ss / nc) * (ss / nc);
        Sums& r0 = out[0];
        r0.noise_n += nc, r0.noise_sum += sn, r0.noise_sq += snn, r0.model_var += mv;
        r0.noise_corr += var_n > 0 && var_s > 0 ? cov / std::sqrt(var_n * var_s) : 0.0;
      }
      for (int t = 0; t < n.cache; ++t) s[t] = raw[t] - corr[t];
      for (int j = 0; j < n.chunk; ++j) s[static_cast<std::size_t>(n.cache) + j] = p.s_chunk[i * static_cast<std::size_t>(n.chunk) + j];
      const double mx = *std::max_element(s.begin(), s.end());
      double z = 0, zc = 0;
      for (std::size_t t = 0; t < tokens; ++t) {
        s[t] = std::exp(s[t] - mx);
        z += s[t];
        if (t >= static_cast<std::size_t>(n.cache)) zc += s[t];
      }
      for (std::size_t t = 0; t < tokens; ++t) w[m][t * rows + i] = static_cast<float>(s[t] / z);
      const double mass = zc / z;
      Sums& r = out[m];
      r.rows += 1;
      r.mass += mass;
      r.mass_fp += p.mass_fp[i];
      r.mass_abs += std::fabs(mass - p.mass_fp[i]);
    }
  }
  // Outputs: O = W_chunk·V_chunk + W_cache·V̂ for each value configuration (float products:
  // the output errors compared here are above 1e-3).
  std::vector<float> oc(rows * D), o(rows * D);
  for (std::size_t m = 0; m < modes; ++m) {
    std::fill(oc.begin(), oc.end(), 0.0f);
    for (int j = 0; j < n.chunk; ++j) {
      const float* v = d.value(n.cache + j);
      const float* wj = &w[m][(static_cast<std::size_t>(n.cache) + j) * rows];
      for (std::size_t i = 0; i < rows; ++i) {
        float* oi = &oc[i * D];
        const float wi = wj[i];
        for (int c = 0; c < D; ++c) oi[c] += wi * v[c];
      }
    }
    for (std::size_t vi = 0; vi < nv; ++vi) {
      o = oc;
      for (int t = 0; t < n.cache; ++t) {
        const float* v = &p.vhat[vi][static_cast<std::size_t>(t) * D];
        const float* wt = &w[m][static_cast<std::size_t>(t) * rows];
        for (std::size_t i = 0; i < rows; ++i) {
          float* oi = &o[i * D];
          const float wi = wt[i];
          for (int c = 0; c < D; ++c) oi[c] += wi * v[c];
        }
      }
      for (std::size_t i = 0; i < rows * D; ++i) {
        out[m].err_num[vi] += (o[i] - p.o_fp[i]) * (o[i] - p.o_fp[i]);
        out[m].err_den[vi] += p.o_fp[i] * p.o_fp[i];
      }
    }
  }
  return out;
}

// ---- self-check against reference::attention --------------------------------------------

template <class L>
bool check_against_reference(const Data& d, const KeyConfig& kcfg, int value_index, const std::vector<ValueConfig>& vcs) {
  L l;
  if (L::make({1, 1, d.n.cache, kvq::DType::kFloat32}, &l) != Status::kSuccess) return false;
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::int32_t len = 0;
  if (kvq::reference::quantize_append(l, cache.data(), &len, tensor(d.k.data(), d.n.cache), tensor(d.v.data(), d.n.cache),
                                      d.n.cache) != Status::kSuccess)
    return false;
  const Prepared p(d, vcs);
  const KeyCache kc = kcfg.make(d);
  const std::vector<Sums> sums = evaluate(p, kc, true);
  bool ok = true;
  for (int m = 0; m < 4; ++m) {
    kvq::reference::AttentionArgs a;
    a.batch = 1;
    a.q_heads = 1;
    a.num_q = d.n.rows;
    a.num_chunk = d.n.chunk;
    a.q = tensor(d.q.data(), d.n.rows);
    a.k_chunk = tensor(d.key(d.n.cache), d.n.chunk);
    a.v_chunk = tensor(d.value(d.n.cache), d.n.chunk);
    a.cache_lengths = &len;
    a.scale = static_cast<float>(1.0 / std::sqrt(double{D}));
    a.correction = kModes[m];
    std::vector<double> out(static_cast<std::size_t>(d.n.rows) * D), mass(static_cast<std::size_t>(d.n.rows) * 3);
    a.out = out.data();
    a.mass = mass.data();
    if (kvq::reference::attention(l, cache.data(), a) != Status::kSuccess) return false;
    double msum = 0, num = 0, den = 0;
    for (int i = 0; i < d.n.rows; ++i) {
      msum += mass[static_cast<std::size_t>(i) * 3 + 2];
      for (int c = 0; c < D; ++c) {
        const double e = out[static_cast<std::size_t>(i) * D + c] - p.o_fp[static_cast<std::size_t>(i) * D + c];
        num += e * e;
        den += p.o_fp[static_cast<std::size_t>(i) * D + c] * p.o_fp[static_cast<std::size_t>(i) * D + c];
      }
    }
    // The scale is a float in the reference: relative differences of order 1e-7 are expected.
    const double dm = std::fabs(msum / d.n.rows - sums[m].mass / sums[m].rows);
    const double de = std::fabs(std::sqrt(num / den) - std::sqrt(sums[m].err_num[value_index] / sums[m].err_den[value_index]));
    std::printf("self-check %d-bit %s G%d rotation %s, %s: |mass diff| %.2e, |output error diff| %.2e\n", kcfg.bits,
                kvq::to_string(kcfg.gran), kcfg.group, kvq::to_string(kcfg.rot), kvq::to_string(kModes[m]), dm, de);
    ok = ok && dm < 1e-6 && de < 1e-5;
  }
  return ok;
}

int self_check() {
  const Sizes small{256, 64, 16};
  const Data d(small, kvq_demo::Outliers::kStrong, 1.5f, 7);
  const auto vcs = value_configs();
  const auto kcs = key_configs();
  auto find = [&](int bits, Granularity g, int group, Rotation r) {
    for (const KeyConfig& k : kcs)
      if (k.bits == bits && k.gran == g && k.group == group && k.rot == r && !k.centered) return k;
    std::abort();
  };
  using V2 = kvq::QuantSpec<2, 128, Granularity::kPerToken>;
  using V4 = kvq::QuantSpec<4, 128, Granularity::kPerToken>;
  bool ok = true;
  ok = check_against_reference<kvq::layout::CacheLayout<kvq::QuantSpec<2, 128, Granularity::kPerToken>, V2, D, Rotation::kHadamard>>(
           d, find(2, Granularity::kPerToken, 128, Rotation::kHadamard), 1, vcs) && ok;
  ok = check_against_reference<kvq::layout::CacheLayout<kvq::QuantSpec<2, 32, Granularity::kPerToken>, V4, D>>(
           d, find(2, Granularity::kPerToken, 32, Rotation::kNone), 2, vcs) && ok;
  ok = check_against_reference<kvq::layout::CacheLayout<kvq::QuantSpec<4, 64, Granularity::kPerChannel>, V2, D>>(
           d, find(4, Granularity::kPerChannel, 64, Rotation::kNone), 1, vcs) && ok;
  std::printf("self-check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

// ---- the sweep ------------------------------------------------------------------------------

struct Setting {
  kvq_demo::Outliers profile;
  float query_std;
  unsigned seed;
};

}  // namespace

int main(int argc, char** argv) {
  std::string out_dir = "docs/fidelity";
  int seeds = 3, threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--self-check") return self_check();
    if (a == "--out" && i + 1 < argc) out_dir = argv[++i];
    else if (a == "--seeds" && i + 1 < argc) seeds = std::max(1, std::atoi(argv[++i]));
    else if (a == "--threads" && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--out DIR] [--seeds N] [--threads N] [--self-check]\n", argv[0]);
      return 2;
    }
  }
  if (self_check() != 0) return 1;
  const Sizes sizes;
  const auto kcs = key_configs();
  const auto vcs = value_configs();
  const kvq_demo::Outliers profiles[] = {kvq_demo::Outliers::kMild, kvq_demo::Outliers::kStrong, kvq_demo::Outliers::kExtreme,
                                         kvq_demo::Outliers::kSpread};
  const float query_stds[] = {1.0f, 1.5f, 2.0f};
  std::vector<Setting> settings;
  for (auto pr : profiles)
    for (float qs : query_stds)
      for (int s = 1; s <= seeds; ++s) settings.push_back({pr, qs, static_cast<unsigned>(s)});

  // results[(profile, query std index, key config, mode, seed)]
  std::map<std::tuple<int, int, std::size_t, int, unsigned>, Sums> results;
  std::mutex mu;
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (std::size_t job; (job = next++) < settings.size();) {
      const Setting& st = settings[job];
      const Data d(sizes, st.profile, st.query_std, st.seed);
      const Prepared p(d, vcs);
      const int qi = st.query_std == 1.0f ? 0 : st.query_std == 1.5f ? 1 : 2;
      for (std::size_t ki = 0; ki < kcs.size(); ++ki) {
        const KeyCache kc = kcs[ki].make(d);
        const std::vector<Sums> sums = evaluate(p, kc, kcs[ki].bits != 16);
        std::lock_guard<std::mutex> lock(mu);
        for (std::size_t m = 0; m < sums.size(); ++m)
          results[{static_cast<int>(st.profile), qi, ki, static_cast<int>(m), st.seed}].add(sums[m]);
      }
      std::lock_guard<std::mutex> lock(mu);
      std::fprintf(stderr, "done %s query std %.1f seed %u (%zu of %zu)\n", kvq_demo::outlier_profile(st.profile).name,
                   st.query_std, st.seed, job + 1, settings.size());
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();

  const std::string csv = out_dir + "/fidelity.csv";
  std::FILE* f = std::fopen(csv.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", csv.c_str());
    return 1;
  }
  std::fprintf(f, "profile,query_std,k_bits,k_granularity,k_group,k_rotation,k_centered,correction,k_bytes_per_token,mass_fp,"
                  "mass_bias,mass_bias_seed_sd,mass_mae,bias_removed,noise_mean,noise_var_ratio,noise_score_corr");
  for (const ValueConfig& v : vcs) std::fprintf(f, ",out_err_%s", v.name);
  std::fprintf(f, "\n");
  for (auto pr : profiles)
    for (int qi = 0; qi < 3; ++qi)
      for (std::size_t ki = 0; ki < kcs.size(); ++ki) {
        const KeyConfig& k = kcs[ki];
        const int modes = k.bits == 16 ? 1 : 4;
        // Sums over seeds, and the per-seed mean biases.
        auto total = [&](int m, std::vector<double>* seed_bias) {
          Sums t;
          for (int sd = 1; sd <= seeds; ++sd) {
            const Sums& r = results.at({static_cast<int>(pr), qi, ki, m, static_cast<unsigned>(sd)});
            t.add(r);
            if (seed_bias) seed_bias->push_back((r.mass - r.mass_fp) / r.rows);
          }
          return t;
        };
        const Sums none = total(0, nullptr);
        const double bias_none = (none.mass - none.mass_fp) / none.rows;
        for (int m = 0; m < modes; ++m) {
          std::vector<double> sb;
          const Sums r = total(m, &sb);
          const double bias = (r.mass - r.mass_fp) / r.rows;
          double var = 0;
          for (double b : sb) var += (b - bias) * (b - bias);
          const double sd = sb.size() > 1 ? std::sqrt(var / static_cast<double>(sb.size() - 1)) : 0.0;
          std::fprintf(f, "%s,%.1f,%d,%s,%d,%s,%d,%s,%.2f,%.5f,%.6f,%.6f,%.6f,", kvq_demo::outlier_profile(pr).name,
                       query_stds[qi], k.bits, k.bits == 16 ? "none" : kvq::to_string(k.gran), k.group, kvq::to_string(k.rot),
                       k.centered ? 1 : 0, kvq::to_string(kModes[m]), k.bytes, r.mass_fp / r.rows, bias, sd, r.mass_abs / r.rows);
          if (k.bits != 16 && bias_none != 0.0) std::fprintf(f, "%.4f", 1.0 - std::fabs(bias) / std::fabs(bias_none));
          if (k.bits != 16)
            std::fprintf(f, ",%.4f,%.4f,%.4f", none.noise_sum / none.noise_n, none.noise_sq / none.model_var,
                         none.noise_corr / none.rows);
          else
            std::fprintf(f, ",,,");
          for (std::size_t vi = 0; vi < vcs.size(); ++vi) std::fprintf(f, ",%.5f", std::sqrt(r.err_num[vi] / r.err_den[vi]));
          std::fprintf(f, "\n");
        }
      }
  std::fclose(f);
  const std::string vcsv = out_dir + "/value_configs.csv";
  f = std::fopen(vcsv.c_str(), "w");
  if (!f) return 1;
  std::fprintf(f, "name,v_bits,v_granularity,v_group,v_rotation,v_bytes_per_token\n");
  for (const ValueConfig& v : vcs)
    std::fprintf(f, "%s,%d,per_token,%d,%s,%.2f\n", v.name, v.bits, v.group, v.rotated ? "hadamard" : "none", v.bytes);
  std::fclose(f);
  std::printf("wrote %s and %s (%zu settings: cache %d, chunk %d, %d query rows, %d seeds)\n", csv.c_str(), vcsv.c_str(),
              settings.size(), sizes.cache, sizes.chunk, sizes.rows, seeds);
  return 0;
}
