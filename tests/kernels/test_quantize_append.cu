// GPU tests of kvq::quantize_append (include/kvq/api/quantize_append.cuh): the whole
// device cache must be byte-identical to the host cache that kvq::reference::quantize_append
// produces from the same poisoned starting bytes, after every one of several appends.
#include <catch2/catch.hpp>

#include <kvq/api/quantize_append.cuh>
#include <kvq/reference/quantize_append.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support/cuda_check.cuh"

namespace {

using kvq::DType;
using kvq::Granularity;
using kvq::ScaleType;
using kvq::Status;
using kvq::Tensor4;
using kvq::layout::CacheLayout;
using kvq::layout::CacheShape;
using kvq::test::DeviceBuffer;
using kvq::test::test_stream;

template <int B, int G, Granularity Gr, ScaleType S>
using QS = kvq::QuantSpec<B, G, Gr, S>;
constexpr Granularity kPT = Granularity::kPerToken;
constexpr Granularity kPC = Granularity::kPerChannel;
constexpr ScaleType kF16 = ScaleType::kFloat16;
constexpr ScaleType kBF16 = ScaleType::kBFloat16;
constexpr ScaleType kF32 = ScaleType::kFloat32;

// The benchmark layout: INT2 PerToken G=128 keys and values, D=128.
using LayoutPt2 = CacheLayout<QS<2, 128, kPT, kF16>, QS<2, 128, kPT, kF16>, 128>;
// KIVI-style INT2 PerChannel G=32 keys (tail), INT2 PerToken G=128 values, D=128.
using LayoutPc2 = CacheLayout<QS<2, 32, kPC, kF16>, QS<2, 128, kPT, kF16>, 128>;
using LayoutPt4 = CacheLayout<QS<4, 32, kPT, kBF16>, QS<4, 32, kPT, kBF16>, 64>;
using LayoutPc8 = CacheLayout<QS<8, 128, kPC, kF32>, QS<8, 64, kPT, kF32>, 128>;
using LayoutPc4 = CacheLayout<QS<4, 32, kPC, kBF16>, QS<2, 64, kPT, kF32>, 64>;
using LayoutPt8 = CacheLayout<QS<8, 128, kPT, kF16>, QS<4, 128, kPT, kBF16>, 128>;
using LayoutPc2g128 = CacheLayout<QS<2, 128, kPC, kF32>, QS<8, 32, kPT, kF16>, 64>;
// Head dim 96 (not a power of two) and INT2 groups of 8 (two groups per code word).
using LayoutD96 = CacheLayout<QS<4, 32, kPT, kF16>, QS<2, 16, kPT, kBF16>, 96>;
using LayoutG8 = CacheLayout<QS<2, 8, kPT, kBF16>, QS<2, 8, kPT, kF16>, 64>;
// Groups over 2 and 8 lanes (metadata by task threads), D 256.
using LayoutSplit = CacheLayout<QS<2, 64, kPT, kF16>, QS<2, 256, kPT, kF16>, 256>;
// Groups of 16 with 2-lane pairs (INT4 keys, INT8 values), D 128.
using LayoutG16 = CacheLayout<QS<4, 16, kPT, kF16>, QS<8, 16, kPT, kBF16>, 128>;
// Key groups of 8 (metadata per lane) with value groups of 64 (metadata by task threads).
using LayoutMixed = CacheLayout<QS<2, 8, kPT, kF32>, QS<4, 64, kPT, kBF16>, 128>;
// D 512, groups of 512 (16 lanes per group), fp32 scales.
using LayoutPt512 = CacheLayout<QS<4, 512, kPT, kF32>, QS<4, 512, kPT, kF32>, 512>;
// PerChannel keys with head dim 96 (12 chunks per row), and with groups of 8 (4 key groups per tile).
using LayoutPcD96 = CacheLayout<QS<2, 32, kPC, kBF16>, QS<4, 32, kPT, kF16>, 96>;
using LayoutPcG8 = CacheLayout<QS<2, 8, kPC, kF32>, QS<2, 8, kPT, kBF16>, 64>;
// PerChannel keys whose tile needs several rounds per thread (512 and 1024 tokens per group).
using LayoutPc512 = CacheLayout<QS<4, 512, kPC, kBF16>, QS<2, 128, kPT, kF16>, 128>;
using LayoutPc1024 = CacheLayout<QS<2, 1024, kPC, kF32>, QS<8, 64, kPT, kF32>, 64>;

// Rotated keys (R·k cached, math/rotation.hpp): INT2 and INT4 per-token groups of 128 at D 128,
// groups of 32 at D 64 (2-lane groups), D 32 (one lane per row), D 512 (16 lanes per row); INT2
// per-channel groups of 32 (tail) at D 128, INT4 per-channel groups of 32 at D 64.
constexpr kvq::Rotation kRot = kvq::Rotation::kHadamard;
using LayoutPt2Rot = CacheLayout<QS<2, 128, kPT, kF16>, QS<2, 128, kPT, kF16>, 128, kRot>;
using LayoutPt4Rot = CacheLayout<QS<4, 128, kPT, kF16>, QS<4, 128, kPT, kF16>, 128, kRot>;
using LayoutPtD64Rot = CacheLayout<QS<2, 32, kPT, kBF16>, QS<4, 64, kPT, kF16>, 64, kRot>;
using LayoutPtD32Rot = CacheLayout<QS<4, 8, kPT, kF32>, QS<2, 32, kPT, kF16>, 32, kRot>;
using LayoutPtD512Rot = CacheLayout<QS<2, 512, kPT, kF16>, QS<2, 128, kPT, kF16>, 512, kRot>;
using LayoutPc2Rot = CacheLayout<QS<2, 32, kPC, kF16>, QS<2, 128, kPT, kF16>, 128, kRot>;
using LayoutPc4D64Rot = CacheLayout<QS<4, 32, kPC, kBF16>, QS<2, 64, kPT, kF32>, 64, kRot>;

// Centered rotated keys (R·(k − μ) cached, μ in the k_mean region): the default variants
// Int2Pt128D128RotCen, Int2Pc32D128RotCen, Int4Pt128D128RotCen, Int2Pt64D64RotCen
// (api/default_variants.cuh), INT4 per-channel at D 64 and one-lane rows at D 32.
constexpr kvq::Rotation kCen = kvq::Rotation::kHadamardCentered;
using LayoutPt2Cen = CacheLayout<QS<2, 128, kPT, kF16>, QS<2, 128, kPT, kF16>, 128, kCen>;
using LayoutPc2Cen = CacheLayout<QS<2, 32, kPC, kF16>, QS<2, 128, kPT, kF16>, 128, kCen>;
using LayoutPt4Cen = CacheLayout<QS<4, 128, kPT, kF16>, QS<4, 128, kPT, kF16>, 128, kCen>;
using LayoutPtD64Cen = CacheLayout<QS<2, 64, kPT, kF16>, QS<2, 64, kPT, kF16>, 64, kCen>;
using LayoutPc4D64Cen = CacheLayout<QS<4, 32, kPC, kBF16>, QS<2, 64, kPT, kF32>, 64, kCen>;
using LayoutPtD32Cen = CacheLayout<QS<4, 8, kPT, kF32>, QS<2, 32, kPT, kF16>, 32, kCen>;

/// The layout one transform short: centered -> rotated, rotated -> unrotated. The same bytes up
/// to the k_mean region.
template <class L>
using OneTransformLess = CacheLayout<typename L::KSpec, typename L::VSpec, L::kHeadDim,
                                     L::kCenteredKeys ? kvq::Rotation::kHadamard : kvq::Rotation::kNone>;

std::uint16_t to_bits(DType t, float x) {
  return t == DType::kBFloat16 ? kvq::math::float_to_bf16_bits_rn(x) : kvq::math::float_to_half_bits_rn(x);
}

// ---- activations ----------------------------------------------------------------------------

/// How K and V sit in memory.
enum class Storage {
  kContiguous,  ///< two dense [batch, tokens, heads, D] tensors
  kPackedQkv,   ///< slices of one [batch, tokens, 2H + H + H, D] QKV tensor (GQA ratio 2)
  kScalar,      ///< head stride D + 2 and odd element offsets: no 16-byte loads possible
};

const char* to_string(Storage s) {
  return s == Storage::kContiguous ? "contiguous" : s == Storage::kPackedQkv ? "packed-qkv" : "scalar";
}

/// Host and device copies of K and V (one buffer each side; padding elements are NaN so a
/// read of them would show up as a NaN group).
struct Activations {
  std::vector<std::uint16_t> host;
  std::unique_ptr<DeviceBuffer<std::uint16_t>> dev;
  Tensor4 hk, hv, dk, dv;
};

/// Rows with a random scale and offset, outlier channels, and (specials) a constant group,
/// NaN and Inf elements, signed-zero groups, huge and tiny values, in rows and in columns.
Activations make_activations(int batch, std::int64_t n, int heads, int d, DType dtype, Storage storage, bool specials,
                             std::mt19937_64& rng) {
  Activations a;
  std::int64_t token_stride, head_stride, batch_stride, k_off, v_off, total;
  if (storage == Storage::kPackedQkv) {
    head_stride = d;
    token_stride = std::int64_t{4} * heads * d;
    batch_stride = n * token_stride;
    k_off = std::int64_t{2} * heads * d;
    v_off = std::int64_t{3} * heads * d;
    total = batch * batch_stride;
  } else {
    head_stride = storage == Storage::kScalar ? d + 2 : d;
    token_stride = heads * head_stride;
    batch_stride = n * token_stride;
    k_off = storage == Storage::kScalar ? 1 : 0;
    v_off = k_off + batch * batch_stride + (storage == Storage::kScalar ? 2 : 0);
    total = v_off + batch * batch_stride + 1;
  }
  a.host.assign(static_cast<std::size_t>(total), 0xffffu);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(-6.0f, 6.0f);
  const float huge = dtype == DType::kBFloat16 ? 1e30f : 60000.0f;
  const float tiny = dtype == DType::kBFloat16 ? 3e-39f : 3e-7f;  // subnormal in the input dtype
  const std::uint16_t nan_a = dtype == DType::kBFloat16 ? 0x7f81u : 0x7c01u;  // signalling NaN
  const std::uint16_t nan_b = dtype == DType::kBFloat16 ? 0xffc1u : 0xfe01u;  // negative NaN with payload
  const std::uint16_t pinf = dtype == DType::kBFloat16 ? 0x7f80u : 0x7c00u;
  const std::uint16_t ninf = pinf | 0x8000u;
  for (int which = 0; which < 2; ++which) {
    const std::int64_t off = which == 0 ? k_off : v_off;
    auto at = [&](int b, std::int64_t t, int h, int c) -> std::uint16_t& {
      return a.host[static_cast<std::size_t>(off + b * batch_stride + t * token_stride + h * head_stride + c)];
    };
    for (int b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < n; ++t)
        for (int h = 0; h < heads; ++h) {
          const float s = std::exp2(uni(rng)), o = normal(rng) * s;
          for (int c = 0; c < d; ++c) {
            float x = normal(rng) * s + o;
            if (c % 16 == 3) x *= 8.0f;
            at(b, t, h, c) = to_bits(dtype, std::max(-60000.0f, std::min(60000.0f, x)));
          }
        }
    if (!specials || n < 3) continue;
    // Column specials (PerChannel key groups): constant, signed zeros, tiny values.
    for (int b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < n; ++t)
        for (int h = 0; h < heads; ++h) {
          at(b, t, h, which == 0 ? 5 : 2) = to_bits(dtype, 0.75f);
          at(b, t, h, 6) = (rng() & 1) ? 0x8000u : 0x0000u;
          at(b, t, h, 9) = to_bits(dtype, tiny * static_cast<float>(1 + rng() % 4));
          at(b, t, h, 11) = to_bits(dtype, std::abs(normal(rng)) + ((rng() % 3 == 0) ? 0.0f : 1.0f));
          if (rng() % 5 == 0) at(b, t, h, 11) = (rng() & 1) ? 0x8000u : 0x0000u;  // min is a signed zero
        }
    // Row specials.
    const int hb = batch - 1, hh = heads - 1;
    for (int c = 0; c < d; ++c) {
      at(0, 0, 0, c) = to_bits(dtype, which == 0 ? 1.25f : -3.5f);                     // constant row
      at(0, n - 1, 0, c) = (rng() & 1) ? 0x8000u : 0x0000u;                            // all signed zeros
      at(hb, n / 3, hh, c) = to_bits(dtype, (c & 1) ? huge : -huge);                   // huge range
      at(hb, (2 * n) / 3, hh, c) = to_bits(dtype, tiny * static_cast<float>(c % 7));   // tiny, with zeros
      // Exact ties: min 0, max 3 (step 1 at 2 bits): halves round to even.
      if (n >= 6) at(0, n - 2, hh, c) = to_bits(dtype, 0.5f * static_cast<float>(c % 7));
      // bf16 only: steps below 2^-128 (1/step overflows: the dividing encoder).
      if (dtype == DType::kBFloat16 && n >= 6) at(hb, n - 3, 0, c) = static_cast<std::uint16_t>(c % 5);
    }
    at(0, n / 2, 0, 3) = nan_a;
    at(0, n / 2, 0, 10) = pinf;
    at(hb, n / 2, hh, 0) = which == 0 ? ninf : nan_b;
    at(0, 1, hh, 7) = nan_b;  // one NaN in a PerChannel column group
  }
  a.dev = std::make_unique<DeviceBuffer<std::uint16_t>>(a.host);
  auto view = [&](std::uint16_t* base, std::int64_t off) {
    return Tensor4{n > 0 ? base + off : nullptr, dtype, batch_stride, token_stride, head_stride};
  };
  a.hk = view(a.host.data(), k_off);
  a.hv = view(a.host.data(), v_off);
  a.dk = view(a.dev->get(), k_off);
  a.dv = view(a.dev->get(), v_off);
  return a;
}

// ---- caches -----------------------------------------------------------------------------------

struct Region {
  const char* name;
  std::int64_t offset, bytes;
};

template <class Layout>
std::vector<Region> regions(const Layout& l) {
  return {{"k_codes", l.k_codes_offset(), l.k_codes_bytes()}, {"k_meta", l.k_meta_offset(), l.k_meta_bytes()},
          {"v_codes", l.v_codes_offset(), l.v_codes_bytes()}, {"v_meta", l.v_meta_offset(), l.v_meta_bytes()},
          {"k_tail", l.k_tail_offset(), l.tail_bytes()},      {"v_tail", l.v_tail_offset(), l.tail_bytes()},
          {"k_mean", l.k_mean_offset(), l.k_mean_bytes()}};
}

/// Random poison bytes, with valid random values in the tail regions (read when a batch
/// entry starts with a partial key group) and in the k_mean region (read when it starts
/// with a length > 0).
template <class Layout>
std::vector<unsigned char> poisoned_cache(const Layout& l, std::mt19937_64& rng) {
  std::vector<unsigned char> c(static_cast<std::size_t>(l.bytes()));
  for (auto& x : c) x = static_cast<unsigned char>(rng());
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (const std::int64_t off : {l.k_tail_offset(), l.v_tail_offset()}) {
    auto* p = reinterpret_cast<std::uint16_t*>(c.data() + off);
    for (std::int64_t i = 0; i < l.tail_bytes() / 2; ++i) p[i] = to_bits(l.shape.tail_dtype, normal(rng));
  }
  for (std::int64_t i = 0; i < l.k_mean_bytes() / 4; ++i) {
    const float m = normal(rng);
    std::memcpy(c.data() + l.k_mean_offset() + 4 * i, &m, 4);
  }
  return c;
}

/// `got` with every k_mean float that is a NaN where `want` has a NaN replaced by want's bytes:
/// a NaN mean's payload is the host's (C++ leaves it open; the device's is canonical). A NaN
/// mean makes its rows NaN, so the codes and metadata still say whether it was one.
template <class Layout>
std::vector<unsigned char> with_host_nan_means(const Layout& l, std::vector<unsigned char> got,
                                               const std::vector<unsigned char>& want) {
  for (std::int64_t off = l.k_mean_offset(); off < l.k_mean_offset() + l.k_mean_bytes(); off += 4) {
    float g, w;
    std::memcpy(&g, got.data() + off, 4);
    std::memcpy(&w, want.data() + off, 4);
    if (std::isnan(g) && std::isnan(w)) std::memcpy(got.data() + off, want.data() + off, 4);
  }
  return got;
}

/// Number of differing bytes in [begin, end), and a description of the first.
template <class Layout>
std::int64_t count_mismatches(const Layout& l, const std::vector<unsigned char>& got, const std::vector<unsigned char>& want,
                              std::int64_t begin, std::int64_t end, std::string* first) {
  std::int64_t bad = 0;
  for (std::int64_t i = begin; i < end; ++i) {
    if (got[static_cast<std::size_t>(i)] == want[static_cast<std::size_t>(i)]) continue;
    if (bad++ == 0 && first) {
      std::ostringstream os;
      os << "byte " << i << " got " << int(got[static_cast<std::size_t>(i)]) << " want " << int(want[static_cast<std::size_t>(i)]);
      for (const Region& r : regions(l))
        if (i >= r.offset && i < r.offset + r.bytes)
          os << " (" << r.name << " + " << (i - r.offset) << ", batch entry " << (i - r.offset) / (r.bytes / l.shape.batch) << ")";
      *first = os.str();
    }
  }
  return bad;
}

template <class Layout>
void require_same_cache(const Layout& l, const std::vector<unsigned char>& got_bytes, const std::vector<unsigned char>& want) {
  REQUIRE(got_bytes.size() == want.size());
  const std::vector<unsigned char> got = with_host_nan_means(l, got_bytes, want);
  if (std::memcmp(got.data(), want.data(), got.size()) == 0) return;
  std::string first;
  const std::int64_t bad = count_mismatches(l, got, want, 0, static_cast<std::int64_t>(got.size()), &first);
  INFO(bad << " bytes differ; first: " << first);
  REQUIRE(bad == 0);
}

// ---- the standard cases --------------------------------------------------------------------

struct Case {
  int batch, heads;
  std::vector<std::int32_t> start;  ///< lengths before the first append
  std::vector<std::int64_t> appends;
  DType dtype;
  Storage storage;
  bool specials;
  /// (append index, batch entry): the entry's length is reset to 0 before that append.
  std::vector<std::pair<int, int>> resets = {};
};

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

/// Rotated layouts: `rotated` (a cache after some appends) against `plain`, the cache of the
/// same appends to OneTransformLess<Layout> (unrotated, or rotated but not centered): the values
/// and both tails are the same bytes, the quantized keys (codes and metadata together) differ once
/// an append has quantized a token (a kernel that forgot to rotate, or to center, would fail here).
/// Codes alone are not enough: centering shifts each channel by a constant, which per-channel
/// groups absorb in their zero points, so centered per-channel codes may equal the rotated ones.
template <class Layout>
void require_rotated_keys_differ(const Layout& l, const std::vector<unsigned char>& rotated,
                                 const std::vector<unsigned char>& plain, bool quantized) {
  REQUIRE(static_cast<std::int64_t>(plain.size()) == l.k_mean_offset());
  std::int64_t bad_keys = 0;
  for (const Region& r : regions(l)) {
    if (std::string(r.name) == "k_mean") continue;  // only the centered cache has one
    std::string first;
    const std::int64_t bad = count_mismatches(l, rotated, plain, r.offset, r.offset + r.bytes, &first);
    INFO(r.name << ": " << bad << " bytes differ from the cache one transform short; first: " << first);
    if (std::string(r.name) == "k_codes" || std::string(r.name) == "k_meta") bad_keys += bad;
    else CHECK(bad == 0);
  }
  INFO(bad_keys << " bytes of quantized keys (codes and metadata) differ from the cache one transform short");
  CHECK((bad_keys > 0) == quantized);
}

/// Runs the appends of one case on the GPU and on the CPU reference and compares the whole
/// cache and the lengths after each one.
template <class Layout>
void run_case(const Case& c, std::uint64_t seed, const kvq::detail::append::LaunchOptions& opt = {}) {
  std::mt19937_64 rng(seed);
  std::int64_t sum = 0;
  for (auto n : c.appends) sum += n;
  const std::int32_t max_start = *std::max_element(c.start.begin(), c.start.end());
  CacheShape shape;
  shape.batch = c.batch;
  shape.heads = c.heads;
  shape.capacity = round_up(max_start + sum + 17, std::max<std::int64_t>(128, Layout::kKeyTokensPerGroup));
  shape.tail_dtype = c.dtype;
  Layout l;
  REQUIRE(Layout::make(shape, &l) == Status::kSuccess);
  std::vector<unsigned char> host = poisoned_cache(l, rng);
  DeviceBuffer<unsigned char> dev(host);
  std::vector<std::int32_t> lengths = c.start;
  DeviceBuffer<std::int32_t> dev_lengths(lengths);
  // Rotated layouts: the reference of the same appends one transform short (no rotation, or no
  // centering), from the same bytes.
  using Less = OneTransformLess<Layout>;
  Less pl;
  REQUIRE(Less::make(shape, &pl) == Status::kSuccess);
  REQUIRE(pl.bytes() == l.k_mean_offset());
  std::vector<unsigned char> plain(host.begin(), host.begin() + pl.bytes());
  std::vector<std::int32_t> plain_lengths = lengths;
  bool quantized = false;  // an append has quantized a key token
  int step = 0;
  for (const std::int64_t n : c.appends) {
    for (const auto& [at, entry] : c.resets) {
      if (at != step) continue;
      lengths[static_cast<std::size_t>(entry)] = plain_lengths[static_cast<std::size_t>(entry)] = 0;
      dev_lengths.upload(lengths);
    }
    INFO("seed " << seed << ", append " << step++ << " of " << n << " tokens, " << kvq::to_string(c.dtype) << ", "
                 << to_string(c.storage) << ", batch " << c.batch << ", heads " << c.heads);
    Activations a = make_activations(c.batch, n, c.heads, Layout::kHeadDim, c.dtype, c.storage, c.specials, rng);
    kvq::AppendArguments args;
    args.k = a.dk;
    args.v = a.dv;
    args.num_tokens = n;
    args.lengths = dev_lengths.get();
    args.cache = dev.get();
    args.max_cache_length = *std::max_element(lengths.begin(), lengths.end());
    kvq::AppendPlan<Layout> plan;
    REQUIRE(plan.initialize(l, args) == Status::kSuccess);
    const Status gs = plan.run(args, test_stream(), opt);
    REQUIRE(kvq::to_string(gs) == std::string(kvq::to_string(Status::kSuccess)));
    KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
    const std::vector<std::int32_t> before = lengths;
    REQUIRE(kvq::reference::quantize_append(l, host.data(), lengths.data(), a.hk, a.hv, n) == Status::kSuccess);
    for (std::size_t b = 0; b < lengths.size(); ++b)
      quantized = quantized || Layout::quantized_length(lengths[b]) > Layout::quantized_length(before[b]);
    const std::vector<unsigned char> got = dev.download();
    require_same_cache(l, got, host);
    REQUIRE(dev_lengths.download() == lengths);
    if constexpr (Layout::kRotatedKeys) {
      REQUIRE(kvq::reference::quantize_append(pl, plain.data(), plain_lengths.data(), a.hk, a.hv, n) == Status::kSuccess);
      require_rotated_keys_differ(l, got, plain, quantized);
    }
  }
}

/// Single-head single-entry odd chunks; B = 3 with different starting lengths (partial key
/// groups), packed QKV slices; unaligned scalar-path inputs; an empty append.
std::vector<Case> standard_cases() {
  return {
      {1, 1, {0}, {1, 7, 31, 33, 100, 257}, DType::kBFloat16, Storage::kContiguous, false},
      {3, 8, {0, 5, 45}, {33, 100, 1, 257}, DType::kFloat16, Storage::kPackedQkv, true},
      {2, 8, {3, 161}, {257, 7, 31}, DType::kBFloat16, Storage::kScalar, true},
      {1, 8, {0}, {8, 0, 31, 129}, DType::kFloat16, Storage::kContiguous, true},
      {2, 1, {1, 0}, {200, 63}, DType::kBFloat16, Storage::kPackedQkv, true},
  };
}

template <class Layout>
void run_standard_cases(std::uint64_t salt, const kvq::detail::append::LaunchOptions& opt = {}) {
  const auto cases = standard_cases();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    DYNAMIC_SECTION("case " << i) {
      run_case<Layout>(cases[i], Catch::rngSeed() * 1000003ull + salt * 101 + i, opt);
    }
  }
}

/// Cases for key groups of 512 and 1024 tokens: appends that complete several groups, from
/// partial starting groups, and ones that only grow the tail.
std::vector<Case> big_group_cases() {
  return {
      {1, 2, {0}, {700, 400, 1500}, DType::kBFloat16, Storage::kContiguous, true},
      {2, 3, {5, 1000}, {1100, 20, 2100}, DType::kFloat16, Storage::kPackedQkv, true},
      {2, 1, {3, 0}, {1030, 7}, DType::kBFloat16, Storage::kScalar, true},
  };
}

}  // namespace

TEST_CASE("quantize_append matches the reference bit for bit: INT2 per-token keys and values, group 128, D 128",
          "[quant][gpu][sanitize]") {
  run_standard_cases<LayoutPt2>(1);
}

TEST_CASE("quantize_append matches the reference bit for bit: INT2 per-channel keys, group 32 (tail), D 128",
          "[quant][gpu][sanitize]") {
  run_standard_cases<LayoutPc2>(2);
}

TEST_CASE("quantize_append matches the reference bit for bit: INT4 per-token group 32, bf16 scales, D 64", "[quant][gpu]") {
  run_standard_cases<LayoutPt4>(3);
}

TEST_CASE("quantize_append matches the reference bit for bit: INT8 per-channel keys group 128, fp32 scales", "[quant][gpu]") {
  run_standard_cases<LayoutPc8>(4);
}

TEST_CASE("quantize_append matches the reference bit for bit: INT4 per-channel keys, INT2 fp32-scale values, D 64",
          "[quant][gpu]") {
  run_standard_cases<LayoutPc4>(5);
}

TEST_CASE("quantize_append matches the reference bit for bit: INT8 keys and INT4 values per token, mixed scales",
          "[quant][gpu]") {
  run_standard_cases<LayoutPt8>(6);
}

TEST_CASE("quantize_append matches the reference bit for bit: INT2 per-channel keys group 128, INT8 values, D 64",
          "[quant][gpu]") {
  run_standard_cases<LayoutPc2g128>(7);
}

TEST_CASE("quantize_append matches the reference bit for bit: head dim 96, INT2 value groups of 16", "[quant][gpu]") {
  run_standard_cases<LayoutD96>(8);
}

TEST_CASE("quantize_append matches the reference bit for bit: INT2 groups of 8 (two groups per code word)", "[quant][gpu]") {
  run_standard_cases<LayoutG8>(9);
}

TEST_CASE("quantize_append matches the reference bit for bit: groups over 2 and 8 lanes, D 256",
          "[quant][gpu]") {
  run_standard_cases<LayoutSplit>(21);
}

TEST_CASE("quantize_append matches the reference bit for bit: groups of 16 over lane pairs, INT4 keys, INT8 values",
          "[quant][gpu]") {
  run_standard_cases<LayoutG16>(25);
}

TEST_CASE("quantize_append matches the reference bit for bit: key metadata per lane, value metadata by task threads",
          "[quant][gpu]") {
  run_standard_cases<LayoutMixed>(26);
}

TEST_CASE("quantize_append matches the reference bit for bit: D 512, 16-lane groups, fp32 scales", "[quant][gpu]") {
  run_standard_cases<LayoutPt512>(22);
}

TEST_CASE("quantize_append matches the reference bit for bit: per-channel keys with head dim 96 and with groups of 8",
          "[quant][gpu][sanitize]") {
  SECTION("head dim 96") { run_standard_cases<LayoutPcD96>(23); }
  SECTION("groups of 8") { run_standard_cases<LayoutPcG8>(24); }
}

TEST_CASE("quantize_append matches the reference bit for bit: per-channel key groups of 512 and 1024 tokens (rounds)",
          "[quant][gpu]") {
  const auto cases = big_group_cases();
  for (std::size_t i = 0; i < cases.size(); ++i) {
    DYNAMIC_SECTION("group 512, case " << i) { run_case<LayoutPc512>(cases[i], Catch::rngSeed() * 7 + 31 + i); }
    DYNAMIC_SECTION("group 1024, case " << i) { run_case<LayoutPc1024>(cases[i], Catch::rngSeed() * 7 + 41 + i); }
  }
}

TEST_CASE("quantize_append with rotated keys matches the reference bit for bit: INT2 per-token group 128, D 128",
          "[quant][gpu][rotation][sanitize]") {
  run_standard_cases<LayoutPt2Rot>(41);
}

TEST_CASE("quantize_append with rotated keys matches the reference bit for bit: INT4 per-token group 128, D 128",
          "[quant][gpu][rotation]") {
  run_standard_cases<LayoutPt4Rot>(42);
}

TEST_CASE("quantize_append with rotated keys matches the reference bit for bit: per-token groups of 32 at D 64, of 8 at D 32",
          "[quant][gpu][rotation]") {
  SECTION("D 64") { run_standard_cases<LayoutPtD64Rot>(43); }
  SECTION("D 32") { run_standard_cases<LayoutPtD32Rot>(44); }
}

TEST_CASE("quantize_append with rotated keys matches the reference bit for bit: D 512 (16 lanes per row)",
          "[quant][gpu][rotation]") {
  run_standard_cases<LayoutPtD512Rot>(45);
}

TEST_CASE("quantize_append with rotated keys matches the reference bit for bit: INT2 per-channel group 32 (tail), D 128",
          "[quant][gpu][rotation][sanitize]") {
  run_standard_cases<LayoutPc2Rot>(46);
}

TEST_CASE("quantize_append with rotated keys matches the reference bit for bit: INT4 per-channel group 32, D 64",
          "[quant][gpu][rotation]") {
  run_standard_cases<LayoutPc4D64Rot>(47);
}

TEST_CASE("rotated keys: tails filled and completed in pieces, 3000-token chunks", "[quant][gpu][rotation]") {
  // Appends of 1 .. 31 tokens leave partial key groups that later appends complete.
  const Case pieces{3, 2, {0, 17, 31}, {5, 1, 26, 31, 2, 64, 30}, DType::kFloat16, Storage::kContiguous, true};
  const Case pieces_bf16{2, 3, {9, 0}, {23, 9, 1, 40}, DType::kBFloat16, Storage::kPackedQkv, true};
  const Case big{2, 8, {0, 77}, {3000, 45}, DType::kBFloat16, Storage::kContiguous, true};
  SECTION("per-channel, fp16 tail") { run_case<LayoutPc2Rot>(pieces, Catch::rngSeed() + 51); }
  SECTION("per-channel, bf16 tail") { run_case<LayoutPc2Rot>(pieces_bf16, Catch::rngSeed() + 52); }
  SECTION("per-channel, 3000 tokens") { run_case<LayoutPc2Rot>(big, Catch::rngSeed() + 53); }
  SECTION("per-token, 3000 tokens") { run_case<LayoutPt2Rot>(big, Catch::rngSeed() + 54); }
}

TEST_CASE("quantize_append with centered keys matches the reference bit for bit: INT2 per-token group 128, D 128",
          "[quant][gpu][rotation][centered][sanitize]") {
  run_standard_cases<LayoutPt2Cen>(61);
}

TEST_CASE("quantize_append with centered keys matches the reference bit for bit: INT2 per-channel group 32 (tail), D 128",
          "[quant][gpu][rotation][centered][sanitize]") {
  run_standard_cases<LayoutPc2Cen>(62);
}

TEST_CASE("quantize_append with centered keys matches the reference bit for bit: INT4 per-token group 128, D 128",
          "[quant][gpu][rotation][centered]") {
  run_standard_cases<LayoutPt4Cen>(63);
}

TEST_CASE("quantize_append with centered keys matches the reference bit for bit: D 64 (INT2 per-token, INT4 per-channel), D 32",
          "[quant][gpu][rotation][centered]") {
  SECTION("INT2 per-token group 64, D 64") { run_standard_cases<LayoutPtD64Cen>(64); }
  SECTION("INT4 per-channel group 32, D 64") { run_standard_cases<LayoutPc4D64Cen>(65); }
  SECTION("INT4 per-token group 8, D 32") { run_standard_cases<LayoutPtD32Cen>(66); }
}

TEST_CASE("centered keys: entries reset to length 0 and refilled, tails in pieces, a first append of 1 and of 3000 tokens",
          "[quant][gpu][rotation][centered]") {
  // μ is set by the first append into an empty entry (a reset one included) and kept after.
  const Case pieces{3, 2, {0, 17, 0}, {5, 1, 26, 31, 2, 64, 30}, DType::kFloat16, Storage::kContiguous, true,
                    {{2, 0}, {4, 1}, {4, 2}}};
  const Case one{2, 3, {0, 63}, {1, 40, 33, 7}, DType::kBFloat16, Storage::kPackedQkv, true, {{1, 0}, {2, 1}, {3, 0}}};
  const Case big{2, 8, {0, 77}, {3000, 45, 300}, DType::kBFloat16, Storage::kContiguous, true, {{2, 0}}};
  const Case scalar{2, 2, {0, 3}, {70, 5, 31}, DType::kFloat16, Storage::kScalar, true, {{1, 1}}};
  SECTION("per-channel, fp16 tail") { run_case<LayoutPc2Cen>(pieces, Catch::rngSeed() + 71); }
  SECTION("per-channel, first append of 1 token") { run_case<LayoutPc2Cen>(one, Catch::rngSeed() + 72); }
  SECTION("per-channel, 3000 tokens") { run_case<LayoutPc2Cen>(big, Catch::rngSeed() + 73); }
  SECTION("per-channel, scalar loads") { run_case<LayoutPc2Cen>(scalar, Catch::rngSeed() + 74); }
  SECTION("per-token, pieces") { run_case<LayoutPt2Cen>(pieces, Catch::rngSeed() + 75); }
  SECTION("per-token, first append of 1 token") { run_case<LayoutPt2Cen>(one, Catch::rngSeed() + 76); }
  SECTION("per-token, 3000 tokens") { run_case<LayoutPt2Cen>(big, Catch::rngSeed() + 77); }
  SECTION("per-token, scalar loads") { run_case<LayoutPt2Cen>(scalar, Catch::rngSeed() + 78); }
}

TEST_CASE("a chunk of 3000 tokens over 2 x 8 heads", "[quant][gpu]") {
  const Case big{2, 8, {0, 77}, {3000, 45}, DType::kBFloat16, Storage::kContiguous, true};
  SECTION("per-token keys") { run_case<LayoutPt2>(big, Catch::rngSeed() + 21); }
  SECTION("per-channel keys") { run_case<LayoutPc2>(big, Catch::rngSeed() + 22); }
}

TEST_CASE("the quantize kernel alone (no lengths update) writes the same bytes", "[quant][gpu][sanitize]") {
  std::mt19937_64 rng(Catch::rngSeed() + 91);
  using L = LayoutPc2;
  CacheShape shape{2, 3, 512, DType::kBFloat16};
  L l;
  REQUIRE(L::make(shape, &l) == Status::kSuccess);
  std::vector<unsigned char> host = poisoned_cache(l, rng);
  DeviceBuffer<unsigned char> cache(host);
  std::vector<std::int32_t> len = {7, 40};
  DeviceBuffer<std::int32_t> lengths(len);
  Activations a = make_activations(2, 100, 3, L::kHeadDim, DType::kBFloat16, Storage::kContiguous, true, rng);
  kvq::AppendArguments args;
  args.k = a.dk;
  args.v = a.dv;
  args.num_tokens = 100;
  args.lengths = lengths.get();
  args.cache = cache.get();
  args.max_cache_length = 40;
  kvq::detail::append::LaunchOptions kernel_only;
  kernel_only.update_lengths = false;
  kvq::AppendPlan<L> plan;
  REQUIRE(plan.initialize(l, args) == Status::kSuccess);
  REQUIRE(plan.run(args, test_stream(), kernel_only) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  CHECK(lengths.download() == len);  // not updated
  REQUIRE(kvq::reference::quantize_append(l, host.data(), len.data(), a.hk, a.hv, 100) == Status::kSuccess);
  require_same_cache(l, cache.download(), host);
}

// ---- statistics and encoders on their own -----------------------------------------------------
//
// The kernel's statistics (NaN-propagating packed min/max per run, the sign and place of a zero
// minimum repaired from the run's first zero, runs combined keeping, of equal minima, the one
// whose first zero comes first, stats_of) and its encoder (fast_code_bits without clamps when 1/step is finite and
// positive, math::encode otherwise) must give the reference's metadata and codes for every
// group. Checked on the host (the helpers are host-device; the host's packed min/max return the
// second operand on ties, the opposite of the reference's order) and on the device.

namespace {

namespace ap = kvq::kernels::quantize;

template <DType kIn>
float value_of(std::uint16_t b) {
  return kIn == DType::kBFloat16 ? kvq::math::bf16_bits_to_float(b) : kvq::math::half_bits_to_float(b);
}

/// The reference's metadata of a group: GroupStats::add over the elements in order.
template <ScaleType S, int L, DType kIn>
kvq::math::GroupMeta<S> reference_meta(const std::uint16_t* x, int n) {
  kvq::math::GroupStats st = kvq::math::GroupStats::empty();
  for (int i = 0; i < n; ++i) st.add(value_of<kIn>(x[i]));
  return kvq::math::make_group_meta<S, L>(st);
}

template <ScaleType S>
bool same_meta(const kvq::math::GroupMeta<S>& a, const kvq::math::GroupMeta<S>& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

/// A random element: mostly specials (signed zeros, small integers, NaN, infinities, subnormals).
template <DType kIn>
std::uint16_t special_element(std::mt19937_64& rng, int flavour) {
  const bool bf = kIn == DType::kBFloat16;
  const std::uint16_t pinf = bf ? 0x7f80u : 0x7c00u, nan = bf ? 0x7fc1u : 0x7e01u;
  const std::uint32_t r = static_cast<std::uint32_t>(rng() % 100);
  switch (flavour) {
    case 0:  // zeros of both signs, sometimes with positives
      return r < 40 ? 0x0000u : r < 80 ? 0x8000u : to_bits(kIn, static_cast<float>(1 + rng() % 3));
    case 1:  // zeros with negatives
      return r < 35 ? 0x0000u : r < 70 ? 0x8000u : to_bits(kIn, -static_cast<float>(1 + rng() % 3));
    case 2:  // anything, rarely non-finite
      if (r < 2) return nan;
      if (r < 3) return pinf;
      if (r < 4) return pinf | 0x8000u;
      if (r < 20) return (rng() & 1) ? 0x8000u : 0x0000u;
      if (r < 30) return static_cast<std::uint16_t>(rng() % 4);  // subnormals
      return to_bits(kIn, static_cast<float>(static_cast<int>(rng() % 9) - 4) * 0.5f);
    default:  // all zeros
      return (rng() & 1) ? 0x8000u : 0x0000u;
  }
}

/// Lane `lane`'s local element i -> its index in the group's order, for run_partial (a
/// host-device functor: a host lambda's call operator is host-only).
template <int kRun>
struct RunOrder {
  int lane;
  KVQ_HOST_DEVICE int operator()(int i) const { return lane * kRun + i; }
};

/// Host: groups of G = lanes · run elements, runs of `run` elements each reduced by
/// run_partial, combined by the lanes' xor butterfly (PerToken segments) or folded in order
/// (PerChannel partials); the metadata must be the reference's for every group and lane.
template <DType kIn, int kRun, ScaleType S, int L>
void check_host_statistics(std::uint64_t seed, int lanes, bool butterfly) {
  std::mt19937_64 rng(seed);
  const int n = lanes * kRun;
  std::int64_t bad = 0, groups = 0, zero_min = 0;
  std::vector<std::uint16_t> x(static_cast<std::size_t>(n));
  for (int trial = 0; trial < 4000; ++trial) {
    const int flavour = trial % 4;
    for (auto& e : x) e = special_element<kIn>(rng, flavour);
    const auto want = reference_meta<S, L, kIn>(x.data(), n);
    std::vector<ap::Partial> part(static_cast<std::size_t>(lanes));
    for (int l = 0; l < lanes; ++l) {
      std::uint32_t w[kRun / 2];
      for (int i = 0; i < kRun / 2; ++i)
        w[i] = static_cast<std::uint32_t>(x[static_cast<std::size_t>(l * kRun + 2 * i)]) |
               (static_cast<std::uint32_t>(x[static_cast<std::size_t>(l * kRun + 2 * i + 1)]) << 16);
      part[static_cast<std::size_t>(l)] = ap::run_partial<kIn, 0, kRun>(w, RunOrder<kRun>{l});
    }
    if (butterfly) {
      for (int m = 1; m < lanes; m *= 2) {
        std::vector<ap::Partial> next(part.size());
        for (int l = 0; l < lanes; ++l) {
          const ap::Partial& mine = part[static_cast<std::size_t>(l)];
          const ap::Partial& other = part[static_cast<std::size_t>(l ^ m)];
          next[static_cast<std::size_t>(l)] = (l & m) ? ap::combine(other, mine) : ap::combine(mine, other);
        }
        part = next;
      }
    } else {
      for (int l = 1; l < lanes; ++l) part[0] = ap::combine(part[0], part[static_cast<std::size_t>(l)]);
      part.resize(1);
    }
    for (const ap::Partial& pl : part) {
      const auto st = ap::stats_of(pl);
      zero_min += st.finite && st.min == 0.0f;
      bad += !same_meta(kvq::math::make_group_meta<S, L>(st), want);
    }
    ++groups;
  }
  INFO(groups << " groups of " << n << " elements (" << lanes << " runs of " << kRun << "), " << zero_min
              << " finite with a zero minimum");
  CHECK(zero_min > 100);
  CHECK(bad == 0);
}

/// The float statistics of rotated keys: run_partial of floats per run, combined as above. The
/// elements are specials (signed zeros, NaN, infinities, subnormals) times 1/sqrt(128), i.e.
/// floats that are not all of a 16-bit dtype; the metadata must be the reference's.
template <int kRun, ScaleType S, int L>
void check_host_float_statistics(std::uint64_t seed, int lanes, bool butterfly) {
  std::mt19937_64 rng(seed);
  const int n = lanes * kRun;
  std::int64_t bad = 0, zero_min = 0;
  std::vector<float> x(static_cast<std::size_t>(n));
  for (int trial = 0; trial < 4000; ++trial) {
    const int flavour = trial % 4;
    for (auto& e : x) e = value_of<DType::kBFloat16>(special_element<DType::kBFloat16>(rng, flavour)) * 0x1.6a09e6p-4f;
    kvq::math::GroupStats ref = kvq::math::GroupStats::empty();
    for (const float e : x) ref.add(e);
    const auto want = kvq::math::make_group_meta<S, L>(ref);
    std::vector<ap::Partial> part(static_cast<std::size_t>(lanes));
    for (int l = 0; l < lanes; ++l)
      part[static_cast<std::size_t>(l)] = ap::run_partial<DType::kBFloat16, 0, kRun>(&x[static_cast<std::size_t>(l * kRun)], RunOrder<kRun>{l});
    if (butterfly) {
      for (int m = 1; m < lanes; m *= 2) {
        std::vector<ap::Partial> next(part.size());
        for (int l = 0; l < lanes; ++l) {
          const ap::Partial& mine = part[static_cast<std::size_t>(l)];
          const ap::Partial& other = part[static_cast<std::size_t>(l ^ m)];
          next[static_cast<std::size_t>(l)] = (l & m) ? ap::combine(other, mine) : ap::combine(mine, other);
        }
        part = next;
      }
    } else {
      for (int l = 1; l < lanes; ++l) part[0] = ap::combine(part[0], part[static_cast<std::size_t>(l)]);
      part.resize(1);
    }
    for (const ap::Partial& pl : part) {
      const auto st = ap::stats_of(pl);
      zero_min += st.finite && st.min == 0.0f;
      bad += !same_meta(kvq::math::make_group_meta<S, L>(st), want);
    }
  }
  INFO(n << " elements per group (" << lanes << " runs of " << kRun << "), " << zero_min << " finite with a zero minimum");
  CHECK(zero_min > 100);
  CHECK(bad == 0);
}

/// Groups of 32 elements (one segment): bounds first, then elements within a few ulps of the
/// decision points zero + (k + 1/2)·step, exact ties, tiny steps (the dividing encoder for
/// bf16 inputs), specials; the expected metadata and words are the reference's.
template <int Bits, ScaleType S, DType kIn>
struct SegmentCases {
  static constexpr int L = (1 << Bits) - 1;
  std::vector<std::uint32_t> x;  // 16 packed pairs per group
  std::vector<kvq::math::GroupMeta<S>> meta;
  std::vector<std::uint32_t> words;  // Bits per group
  std::int64_t near_ties = 0, dividing = 0, fast = 0;

  static std::uint16_t nudge(std::uint16_t b, int ulps) {
    // Moves a finite 16-bit float by `ulps` representable values (sign-magnitude order).
    int v = (b & 0x8000u) ? -static_cast<int>(b & 0x7fffu) : static_cast<int>(b & 0x7fffu);
    v += ulps;
    return v < 0 ? static_cast<std::uint16_t>(0x8000u | static_cast<unsigned>(-v)) : static_cast<std::uint16_t>(v);
  }

  explicit SegmentCases(std::uint64_t seed, int groups) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    const bool bf = kIn == DType::kBFloat16;
    for (int gi = 0; gi < groups; ++gi) {
      std::uint16_t e[32];
      const int kind = gi % 8;
      if (kind == 7) {
        for (auto& v : e) v = special_element<kIn>(rng, static_cast<int>(rng() % 4));
      } else if (kind == 6) {
        // Exact ties: small multiples of 1/2 (step a power of two when the range allows).
        for (auto& v : e) v = to_bits(kIn, 0.5f * static_cast<float>(rng() % (2 * L + 1)));
        e[0] = to_bits(kIn, 0.0f);
        e[1] = to_bits(kIn, static_cast<float>(L));
      } else if (kind == 5 && bf) {
        // bf16 subnormals: steps from 2^-133 up (1/step overflows below 2^-128).
        for (auto& v : e) v = static_cast<std::uint16_t>(rng() % (4u << (rng() % 6)));
      } else {
        const int lo_exp = bf ? -40 : -12, span = bf ? 60 : 24;
        const float scale = std::ldexp(1.0f, lo_exp + static_cast<int>(rng() % span));
        float mn = (uni(rng) - 0.5f) * scale * 4.0f, mx = mn + uni(rng) * scale;
        if (gi % 29 == 0) mx = mn;  // constant group
        std::uint16_t bmn = to_bits(kIn, mn), bmx = to_bits(kIn, mx);
        if (value_of<kIn>(bmn) > value_of<kIn>(bmx)) std::swap(bmn, bmx);
        const float fmn = value_of<kIn>(bmn), fmx = value_of<kIn>(bmx);
        e[0] = bmn;
        e[1] = bmx;
        const auto m = reference_meta<S, L, kIn>(e, 2);
        using T = kvq::math::ScaleTraits<S>;
        const double step = T::to_float(m.step), zero = T::to_float(m.zero);
        for (int i = 2; i < 32; ++i) {
          std::uint16_t v;
          if (i % 3 == 0 || !(step > 0.0) || !std::isfinite(step)) {
            v = to_bits(kIn, fmn + uni(rng) * (fmx - fmn));
          } else {
            const double tie = zero + (static_cast<double>(rng() % L) + 0.5) * step;
            v = nudge(to_bits(kIn, static_cast<float>(tie)), static_cast<int>(rng() % 5) - 2);
            ++near_ties;
          }
          const float fv = value_of<kIn>(v);
          if (!(fv >= fmn)) v = bmn;
          if (!(fv <= fmx)) v = bmx;
          e[i] = v;
        }
      }
      for (int i = 0; i < 16; ++i) x.push_back(static_cast<std::uint32_t>(e[2 * i]) | (static_cast<std::uint32_t>(e[2 * i + 1]) << 16));
      const auto m = reference_meta<S, L, kIn>(e, 32);
      meta.push_back(m);
      const auto enc = ap::encoder_of(m);
      dividing += enc.inv > 0.0f && !std::isfinite(enc.inv);
      fast += ap::fast_encoder(enc);
      using T = kvq::math::ScaleTraits<S>;
      for (int w = 0; w < Bits; ++w) {
        std::uint32_t codes[32 / Bits];
        for (int i = 0; i < 32 / Bits; ++i)
          codes[i] = kvq::math::quantize_value<L>(value_of<kIn>(e[w * (32 / Bits) + i]), T::to_float(m.step), T::to_float(m.zero));
        words.push_back(kvq::math::pack_word<Bits>(codes));
      }
    }
  }
};

template <int Bits, ScaleType S, DType kIn>
struct SegmentOut {
  kvq::math::GroupMeta<S> meta;
  std::uint32_t words[Bits];
};

/// Statistics, metadata and codes of one segment, as the kernel computes them.
template <int Bits, ScaleType S, DType kIn>
KVQ_HOST_DEVICE SegmentOut<Bits, S, kIn> kernel_segment(const std::uint32_t* x) {
  using Spec = kvq::QuantSpec<Bits, 32, kPT, S>;
  SegmentOut<Bits, S, kIn> out;
  out.meta = kvq::math::make_group_meta<S, (1 << Bits) - 1>(ap::stats_of(ap::run_partial<kIn, 0, 32>(x, [](int l) { return l; })));
  ap::encode_segment<Spec, kIn>(x, ap::encoder_of(out.meta), out.words);
  return out;
}

template <int Bits, ScaleType S, DType kIn>
__global__ void segment_kernel(const std::uint32_t* x, int groups, SegmentOut<Bits, S, kIn>* out) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= groups) return;
  std::uint32_t w[16];
  for (int k = 0; k < 16; ++k) w[k] = x[static_cast<std::int64_t>(i) * 16 + k];
  out[i] = kernel_segment<Bits, S, kIn>(w);
}

template <int Bits, ScaleType S, DType kIn>
void check_segments(std::uint64_t seed, bool device) {
  constexpr int kGroups = 1 << 15;
  const SegmentCases<Bits, S, kIn> c(seed, kGroups);
  std::vector<SegmentOut<Bits, S, kIn>> got(kGroups);
  if (device) {
    DeviceBuffer<std::uint32_t> dx(c.x);
    DeviceBuffer<SegmentOut<Bits, S, kIn>> dout(kGroups);
    segment_kernel<Bits, S, kIn><<<kGroups / 128, 128>>>(dx.get(), kGroups, dout.get());
    KVQ_TEST_CUDA(cudaGetLastError());
    KVQ_TEST_CUDA(cudaDeviceSynchronize());
    got = dout.download();
  } else {
    for (int i = 0; i < kGroups; ++i) got[static_cast<std::size_t>(i)] = kernel_segment<Bits, S, kIn>(&c.x[static_cast<std::size_t>(i) * 16]);
  }
  std::int64_t bad_meta = 0, bad_words = 0;
  for (int i = 0; i < kGroups; ++i) {
    bad_meta += !same_meta(got[static_cast<std::size_t>(i)].meta, c.meta[static_cast<std::size_t>(i)]);
    for (int w = 0; w < Bits; ++w)
      bad_words += got[static_cast<std::size_t>(i)].words[w] != c.words[static_cast<std::size_t>(i) * Bits + w];
  }
  INFO((device ? "device" : "host") << ": " << c.near_ties << " elements near a tie, " << c.fast << " fast groups, "
                                    << c.dividing << " dividing groups of " << kGroups);
  CHECK(c.fast > kGroups / 2);
  if (kIn == DType::kBFloat16 && S != ScaleType::kFloat16) CHECK(c.dividing > 0);
  CHECK(bad_meta == 0);
  CHECK(bad_words == 0);
}

template <DType kIn>
void check_all_segments(std::uint64_t s, bool device) {
  check_segments<2, kF16, kIn>(s + 1, device);
  check_segments<2, kBF16, kIn>(s + 2, device);
  check_segments<2, kF32, kIn>(s + 3, device);
  check_segments<4, kF16, kIn>(s + 4, device);
  check_segments<4, kF32, kIn>(s + 5, device);
  check_segments<8, kBF16, kIn>(s + 6, device);
  check_segments<8, kF32, kIn>(s + 7, device);
}

}  // namespace

TEST_CASE("segment statistics combined in order give the reference metadata (signed zeros, NaN, Inf)", "[quant][cpu]") {
  const std::uint64_t s = Catch::rngSeed();
  SECTION("PerToken lanes: runs of 32, xor butterfly") {
    for (int lanes : {1, 2, 4, 16}) {
      check_host_statistics<DType::kBFloat16, 32, kF16, 3>(s + lanes, lanes, true);
      check_host_statistics<DType::kFloat16, 32, kBF16, 15>(s + 100 + lanes, lanes, true);
      check_host_statistics<DType::kBFloat16, 32, kF32, 255>(s + 200 + lanes, lanes, true);
    }
  }
  SECTION("groups inside a segment: runs of 8 and 16") {
    check_host_statistics<DType::kBFloat16, 8, kF32, 3>(s + 7, 1, true);
    check_host_statistics<DType::kFloat16, 16, kF16, 15>(s + 8, 1, true);
  }
  SECTION("PerChannel partials: runs of 4 and 8 tokens folded in order") {
    check_host_statistics<DType::kBFloat16, 4, kF16, 3>(s + 9, 8, false);
    check_host_statistics<DType::kFloat16, 4, kF32, 3>(s + 10, 32, false);
    check_host_statistics<DType::kBFloat16, 8, kBF16, 15>(s + 11, 64, false);
  }
}

TEST_CASE("float statistics (rotated keys) combined in order give the reference metadata", "[quant][cpu][rotation]") {
  const std::uint64_t s = Catch::rngSeed() * 13;
  for (int lanes : {1, 2, 4, 16}) {
    check_host_float_statistics<32, kF16, 3>(s + lanes, lanes, true);
    check_host_float_statistics<16, kBF16, 15>(s + 50 + lanes, lanes, true);
  }
  check_host_float_statistics<8, kF32, 3>(s + 100, 1, true);
  check_host_float_statistics<2, kF16, 15>(s + 101, 1, true);
  // PerChannel: 4 tokens per thread, partials folded over the token sets in order.
  check_host_float_statistics<4, kF16, 3>(s + 102, 8, false);
  check_host_float_statistics<4, kF32, 255>(s + 103, 32, false);
}

TEST_CASE("the segment encoder agrees with math::encode near ties and at odd scales (host)", "[quant][cpu]") {
  check_all_segments<DType::kBFloat16>(Catch::rngSeed() * 3, false);
  check_all_segments<DType::kFloat16>(Catch::rngSeed() * 5, false);
}

TEST_CASE("the segment encoder and statistics agree with the reference on the device", "[quant][gpu]") {
  check_all_segments<DType::kBFloat16>(Catch::rngSeed() * 7, true);
  check_all_segments<DType::kFloat16>(Catch::rngSeed() * 11, true);
}

// ---- refusals and the capacity guard ---------------------------------------------------------

TEST_CASE("bad arguments are refused with their status and nothing is written", "[quant][gpu][sanitize]") {
  using L = LayoutPc2;
  std::mt19937_64 rng(Catch::rngSeed() + 77);
  CacheShape shape{2, 2, 256, DType::kBFloat16};
  L l;
  REQUIRE(L::make(shape, &l) == Status::kSuccess);
  const std::vector<unsigned char> poison = poisoned_cache(l, rng);
  DeviceBuffer<unsigned char> cache(poison);
  const std::vector<std::int32_t> start = {3, 7};
  DeviceBuffer<std::int32_t> lengths(start);
  Activations a = make_activations(2, 10, 2, L::kHeadDim, DType::kBFloat16, Storage::kContiguous, false, rng);
  kvq::AppendArguments good;
  good.k = a.dk;
  good.v = a.dv;
  good.num_tokens = 10;
  good.lengths = lengths.get();
  good.cache = cache.get();
  good.max_cache_length = 7;
  REQUIRE(kvq::AppendPlan<L>::can_implement(l, good) == Status::kSuccess);

  struct Bad {
    const char* what;
    Status want;
    kvq::AppendArguments args;
    L layout;
  };
  std::vector<Bad> bad;
  auto add = [&](const char* what, Status want, auto mutate) {
    Bad b{what, want, good, l};
    mutate(b);
    bad.push_back(b);
  };
  auto* bytes = static_cast<unsigned char*>(cache.get());
  add("null cache", Status::kErrorInvalidArgument, [](Bad& b) { b.args.cache = nullptr; });
  add("null lengths", Status::kErrorInvalidArgument, [](Bad& b) { b.args.lengths = nullptr; });
  add("null k", Status::kErrorInvalidArgument, [](Bad& b) { b.args.k.data = nullptr; });
  add("null v", Status::kErrorInvalidArgument, [](Bad& b) { b.args.v.data = nullptr; });
  add("negative num_tokens", Status::kErrorInvalidArgument, [](Bad& b) { b.args.num_tokens = -1; });
  add("max_cache_length below -1", Status::kErrorInvalidArgument, [](Bad& b) { b.args.max_cache_length = -2; });
  add("fp32 inputs", Status::kErrorNotSupported, [](Bad& b) { b.args.k.dtype = b.args.v.dtype = DType::kFloat32; });
  add("k and v of different dtypes", Status::kErrorInvalidArgument, [](Bad& b) { b.args.v.dtype = DType::kFloat16; });
  add("inputs not of the tail dtype", Status::kErrorInvalidArgument,
      [](Bad& b) { b.args.k.dtype = b.args.v.dtype = DType::kFloat16; });
  add("negative token stride", Status::kErrorInvalidArgument, [](Bad& b) { b.args.k.token_stride = -b.args.k.token_stride; });
  add("negative head stride", Status::kErrorInvalidArgument, [](Bad& b) { b.args.v.head_stride = -1; });
  add("cache not 16-byte aligned", Status::kErrorMisaligned, [&](Bad& b) { b.args.cache = bytes + 8; });
  add("lengths not 4-byte aligned", Status::kErrorMisaligned,
      [](Bad& b) { b.args.lengths = reinterpret_cast<std::int32_t*>(reinterpret_cast<char*>(b.args.lengths) + 2); });
  add("k not 2-byte aligned", Status::kErrorMisaligned,
      [](Bad& b) { b.args.k.data = static_cast<char*>(b.args.k.data) + 1; });
  add("error word not 4-byte aligned", Status::kErrorMisaligned,
      [](Bad& b) { b.args.error = reinterpret_cast<std::uint32_t*>(reinterpret_cast<char*>(b.args.lengths) + 2); });
  add("max_cache_length + num_tokens over the capacity", Status::kErrorCapacityExceeded,
      [](Bad& b) { b.args.max_cache_length = 250; });
  add("num_tokens over the capacity with an unknown bound", Status::kErrorCapacityExceeded, [](Bad& b) {
    b.args.max_cache_length = -1;
    b.args.num_tokens = 257;
  });
  add("max_cache_length + num_tokens over INT32_MAX", Status::kErrorCapacityExceeded, [](Bad& b) {
    b.layout.shape.capacity = std::int64_t{1} << 40;
    b.args.max_cache_length = std::numeric_limits<std::int32_t>::max() - 5;
  });
  add("a shape the layout refuses", Status::kErrorInvalidArgument, [](Bad& b) { b.layout.shape.capacity = 100; });
  add("no heads", Status::kErrorInvalidArgument, [](Bad& b) { b.layout.shape.heads = 0; });

  for (const Bad& b : bad) {
    INFO(b.what);
    CHECK(kvq::AppendPlan<L>::can_implement(b.layout, b.args) == b.want);
    CHECK(kvq::quantize_append(b.layout, b.args, test_stream()) == b.want);
    kvq::AppendPlan<L> plan;
    CHECK(plan.initialize(b.layout, b.args) == b.want);
  }
  // A variant that the dispatching overload does not list.
  const kvq::TypeList<LayoutPt2, LayoutPc2> listed;
  CHECK(kvq::quantize_append(listed, kvq::variant_of<LayoutPt4>(), shape, good, test_stream()) == Status::kErrorNotSupported);
  // A plan refuses per-call arguments that break what it was initialized with.
  kvq::AppendPlan<L> plan;
  REQUIRE(plan.initialize(l, good) == Status::kSuccess);
  kvq::AppendArguments other = good;
  other.k.dtype = other.v.dtype = DType::kFloat16;
  CHECK(plan.run(other, test_stream()) == Status::kErrorInvalidArgument);
  other = good;
  other.num_tokens = -1;
  CHECK(plan.run(other, test_stream()) == Status::kErrorInvalidArgument);
  CHECK(kvq::AppendPlan<L>{}.run(good, test_stream()) == Status::kErrorInvalidArgument);  // not initialized
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  CHECK(cache.download() == poison);
  CHECK(lengths.download() == start);
}

namespace {

/// Entry 1 starts 28 tokens short of the capacity and entry 2 with a negative length; the
/// caller lies about max_cache_length, so only the kernels' own guard protects them, and
/// the error word reports both.
template <class L>
void check_capacity_guard(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  CacheShape shape{3, 2, 128, DType::kFloat16};
  L l;
  REQUIRE(L::make(shape, &l) == Status::kSuccess);
  const std::vector<unsigned char> poison = poisoned_cache(l, rng);
  DeviceBuffer<unsigned char> cache(poison);
  const std::vector<std::int32_t> start = {0, 100, -4};
  DeviceBuffer<std::int32_t> lengths(start);
  Activations a = make_activations(3, 40, 2, L::kHeadDim, DType::kFloat16, Storage::kContiguous, true, rng);
  kvq::AppendArguments args;
  args.k = a.dk;
  args.v = a.dv;
  args.num_tokens = 40;
  args.lengths = lengths.get();
  args.cache = cache.get();
  args.max_cache_length = 0;  // wrong on purpose
  DeviceBuffer<std::uint32_t> error(std::vector<std::uint32_t>{0});
  args.error = error.get();
  REQUIRE(kvq::quantize_append(l, args, test_stream()) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  CHECK(lengths.download() == std::vector<std::int32_t>{40, 100, -4});
  CHECK(error.download() == std::vector<std::uint32_t>{kvq::kAppendErrorCapacity | kvq::kAppendErrorNegativeLength});
  // Expected: entry 0 appended as the reference does it; entries 1 and 2 untouched.
  std::vector<unsigned char> want = poison;
  std::vector<std::int32_t> ref_len = {0, 0, 0};
  REQUIRE(kvq::reference::quantize_append(l, want.data(), ref_len.data(), a.hk, a.hv, 40) == Status::kSuccess);
  const auto got = with_host_nan_means(l, cache.download(), want);
  for (const Region& r : regions(l)) {
    const std::int64_t per_entry = r.bytes / shape.batch;
    std::string first_appended, first_untouched;
    const std::int64_t appended = count_mismatches(l, got, want, r.offset, r.offset + per_entry, &first_appended);
    const std::int64_t untouched = count_mismatches(l, got, poison, r.offset + per_entry, r.offset + r.bytes, &first_untouched);
    INFO(r.name << ": " << first_appended << " / " << first_untouched);
    CHECK(appended == 0);
    CHECK(untouched == 0);
  }
}

}  // namespace

TEST_CASE("an entry whose append would pass the capacity is left untouched by the kernel", "[quant][gpu][sanitize]") {
  check_capacity_guard<LayoutPt2>(Catch::rngSeed() + 5);
  check_capacity_guard<LayoutPc2>(Catch::rngSeed() + 6);
}

TEST_CASE("centered keys: an entry the append does not fit keeps its key mean", "[quant][gpu][centered][sanitize]") {
  check_capacity_guard<LayoutPt2Cen>(Catch::rngSeed() + 7);
  check_capacity_guard<LayoutPc2Cen>(Catch::rngSeed() + 8);
}

TEST_CASE("the runtime-dispatched overload runs the listed layout of the variant", "[quant][gpu]") {
  std::mt19937_64 rng(Catch::rngSeed() + 99);
  using L = LayoutPc2;
  CacheShape shape{2, 3, 256, DType::kBFloat16};
  L l;
  REQUIRE(L::make(shape, &l) == Status::kSuccess);
  std::vector<unsigned char> host = poisoned_cache(l, rng);
  DeviceBuffer<unsigned char> cache(host);
  std::vector<std::int32_t> len = {0, 40};
  DeviceBuffer<std::int32_t> lengths(len);
  Activations a = make_activations(2, 77, 3, L::kHeadDim, DType::kBFloat16, Storage::kPackedQkv, true, rng);
  kvq::AppendArguments args;
  args.k = a.dk;
  args.v = a.dv;
  args.num_tokens = 77;
  args.lengths = lengths.get();
  args.cache = cache.get();
  args.max_cache_length = 40;
  DeviceBuffer<std::uint32_t> error(std::vector<std::uint32_t>{0});
  args.error = error.get();
  const kvq::TypeList<LayoutPt2, LayoutPc2, LayoutPt4> listed;
  REQUIRE(kvq::quantize_append(listed, kvq::variant_of<L>(), shape, args, test_stream()) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  CHECK(error.download() == std::vector<std::uint32_t>{0});
  REQUIRE(kvq::reference::quantize_append(l, host.data(), len.data(), a.hk, a.hv, 77) == Status::kSuccess);
  require_same_cache(l, cache.download(), host);
  CHECK(lengths.download() == len);
}
