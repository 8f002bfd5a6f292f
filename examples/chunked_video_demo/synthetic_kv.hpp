// The synthetic keys, queries and values of the demo and of tools/fidelity_study.cpp:
// keys with a few fixed outlier channels. In measured video DiT (and LLM) keys an
// outlier channel is large for every token, mostly through a per-channel offset shared
// by all tokens (KIVI's and SageAttention's observations); the `spread` profile is the
// contrast case of outliers that are a per-channel scale only.
//
// Key channel c of head h, token t (D channels; the demo rounds everything to bf16):
//   k = mu[h][c] + sigma[h][c] · N(0, 1)
//   ordinary channel:  mu ~ U(−0.5, 0.5), sigma = 1;
//   outlier channel:   a ~ U(lo, hi) drawn once per channel, mu = ±offset·a (random
//                      sign), sigma = spread·a.
// Outlier channels are fixed per head: the n channels with (7c + 3h) mod (D/n) = 5.
//   profile   n   a in        offset  spread
//   mild      4   [2.5, 3.5]  1       1/4     (about 3x an ordinary channel)
//   strong    4   [10, 20]    1       1/4     (10-20x; the demo's default)
//   extreme   8   [30, 60]    1       1/4
//   spread    4   [10, 20]    0       1       (strong's magnitudes as a pure scale)
// Queries: every element N(0, query_std²) (query_std = 1.5 in the demo). Values: N(0, 1).
// The per-channel statistics are drawn first (per head, per channel: a, then the sign,
// for outliers; the mean for ordinary channels), then tokens in order [token][head]
// [channel] with k, v, q drawn for each element in turn, from one std::mt19937 seeded
// with the seed.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace kvq_demo {

enum class Outliers { kMild, kStrong, kExtreme, kSpread };

struct OutlierProfile {
  const char* name;
  int channels;  ///< outlier channels per head (of 128; scaled with D)
  float lo, hi;  ///< range of the outlier magnitude a
  float offset;  ///< mean = ±offset·a
  float spread;  ///< std = spread·a
};

inline OutlierProfile outlier_profile(Outliers o) {
  switch (o) {
    case Outliers::kMild: return {"mild", 4, 2.5f, 3.5f, 1.0f, 0.25f};
    case Outliers::kStrong: return {"strong", 4, 10.0f, 20.0f, 1.0f, 0.25f};
    case Outliers::kExtreme: return {"extreme", 8, 30.0f, 60.0f, 1.0f, 0.25f};
    case Outliers::kSpread: return {"spread", 4, 10.0f, 20.0f, 0.0f, 1.0f};
  }
  return {"strong", 4, 10.0f, 20.0f, 1.0f, 0.25f};
}

inline bool parse_outliers(const std::string& s, Outliers* o) {
  if (s == "mild") *o = Outliers::kMild;
  else if (s == "strong") *o = Outliers::kStrong;
  else if (s == "extreme") *o = Outliers::kExtreme;
  else if (s == "spread") *o = Outliers::kSpread;
  else return false;
  return true;
}

/// Whether channel c of head h is an outlier channel of a profile with n of them.
inline bool is_outlier_channel(int h, int c, int n, int dim) { return (7 * c + 3 * h) % (dim / n) == 5; }

/// Keys, values and queries of `tokens` tokens and `heads` heads as floats, [tokens][heads][dim].
struct SyntheticKV {
  int tokens, heads, dim;
  std::vector<float> k, v, q;
  std::vector<float> mu, sigma;  ///< [heads][dim] key channel statistics

  SyntheticKV(int tokens_, int heads_, int dim_, Outliers profile, float query_std, unsigned seed)
      : tokens(tokens_), heads(heads_), dim(dim_) {
    const OutlierProfile p = outlier_profile(profile);
    std::mt19937 rng(seed);
    std::normal_distribution<float> n01;
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    mu.resize(static_cast<std::size_t>(heads) * dim);
    sigma.resize(mu.size());
    for (int h = 0; h < heads; ++h)
      for (int c = 0; c < dim; ++c) {
        const std::size_t i = static_cast<std::size_t>(h) * dim + c;
        if (is_outlier_channel(h, c, p.channels, dim)) {
          const float a = p.lo + (p.hi - p.lo) * u(rng);
          mu[i] = (u(rng) < 0.5f ? -p.offset : p.offset) * a;
          sigma[i] = p.spread * a;
        } else {
          mu[i] = u(rng) - 0.5f;
          sigma[i] = 1.0f;
        }
      }
    const std::size_t count = static_cast<std::size_t>(tokens) * heads * dim;
    k.resize(count), v.resize(count), q.resize(count);
    for (int t = 0; t < tokens; ++t)
      for (int h = 0; h < heads; ++h)
        for (int c = 0; c < dim; ++c) {
          const std::size_t i = (static_cast<std::size_t>(t) * heads + h) * dim + c;
          const std::size_t s = static_cast<std::size_t>(h) * dim + c;
          k[i] = mu[s] + sigma[s] * n01(rng);
          v[i] = n01(rng);
          q[i] = query_std * n01(rng);
        }
  }
};

}  // namespace kvq_demo
