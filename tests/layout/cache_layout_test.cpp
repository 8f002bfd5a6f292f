// Tests of kvq/layout/cache_layout.hpp: region sizes and offsets, element index
// maps, bytes per token, shape validation and 64-bit offsets. Expected sizes are
// counted by hand from the layout's documented region shapes.
#include <catch2/catch.hpp>

#include <cstdint>
#include <map>
#include <tuple>
#include <type_traits>
#include <vector>

#include <kvq/layout/cache_layout.hpp>

namespace {

using kvq::Granularity;
using kvq::QuantSpec;
using kvq::ScaleType;
using kvq::Status;
using kvq::layout::CacheLayout;
using kvq::layout::CacheShape;

using Id = std::tuple<int, int, std::int64_t, std::int64_t>;  // what an index names: (b, h, token-ish, channel-ish)

/// A layout with its hand counts (per token: code words, metadata groups; sizes in bytes).
template <class Layout_, int KWords, int VWords, int Tk, int KGroupsPerTokenGroup, int KChannelsPerGroup, int VGroups,
          int VGroupSize, int KMetaBytes, int VMetaBytes, std::int64_t Capacity>
struct Case {
  using Layout = Layout_;
  static constexpr int kKWords = KWords, kVWords = VWords, kTk = Tk, kKGroups = KGroupsPerTokenGroup,
                       kKChannelsPerGroup = KChannelsPerGroup, kVGroups = VGroups, kVGroupSize = VGroupSize,
                       kKMetaBytes = KMetaBytes, kVMetaBytes = VMetaBytes;
  static constexpr std::int64_t kCapacity = Capacity;
};

// INT2 PerChannel G=32 keys, INT2 PerToken G=32 values, D = 64, fp16 metadata:
// 64·2/32 = 4 words each; a key group covers 32 tokens of 1 channel (64 per token group).
using Case1 = Case<CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64>,
                   4, 4, 32, 64, 1, 2, 32, 4, 4, 96>;
// INT4 PerToken G=64 bf16 keys, INT8 PerToken G=128 fp32 values, D = 128: 16 and 32 words.
using Case2 = Case<CacheLayout<QuantSpec<4, 64, Granularity::kPerToken, ScaleType::kBFloat16>,
                               QuantSpec<8, 128, Granularity::kPerToken, ScaleType::kFloat32>, 128>,
                   16, 32, 1, 2, 64, 1, 128, 4, 8, 77>;
// INT8 PerChannel G=16 fp32 keys, INT4 PerToken G=32 fp16 values, D = 96: 24 and 12 words.
using Case3 = Case<CacheLayout<QuantSpec<8, 16, Granularity::kPerChannel, ScaleType::kFloat32>,
                               QuantSpec<4, 32, Granularity::kPerToken, ScaleType::kFloat16>, 96>,
                   24, 12, 16, 96, 1, 3, 32, 8, 4, 48>;

/// Checks that `index(id)` over all ids is a bijection from the distinct groups onto
/// [0, count): equal ids give equal indices, different groups different indices.
struct IndexMap {
  std::map<std::int64_t, Id> seen;
  bool ok = true;
  void add(std::int64_t index, const Id& group) {
    auto it = seen.find(index);
    if (it == seen.end())
      seen.emplace(index, group);
    else if (it->second != group)
      ok = false;
  }
  bool dense(std::int64_t count) const {
    return ok && static_cast<std::int64_t>(seen.size()) == count && seen.begin()->first == 0 && seen.rbegin()->first == count - 1;
  }
};

/// Marks bytes of one allocation as owned by a region; fails on overlap or out-of-range.
struct ByteMap {
  std::vector<std::uint8_t> owner;
  explicit ByteMap(std::int64_t bytes) : owner(static_cast<std::size_t>(bytes), 0) {}
  bool mark(int region, std::int64_t first, std::int64_t count) {
    if (first < 0 || first + count > static_cast<std::int64_t>(owner.size())) return false;
    for (std::int64_t i = first; i < first + count; ++i) {
      if (owner[static_cast<std::size_t>(i)] != 0) return false;
      owner[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(region);
    }
    return true;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("regions of odd shapes are 256-aligned, dense, in range and disjoint", "[layout][cpu]", Case1, Case2,
                   Case3) {
  using C = TestType;
  using L = typename C::Layout;
  for (kvq::DType tail : {kvq::DType::kBFloat16, kvq::DType::kFloat32}) {
    const int B = 3, H = 5;
    const std::int64_t cap = C::kCapacity, D = L::kHeadDim;
    L l;
    REQUIRE(L::make(CacheShape{B, H, cap, tail}, &l) == Status::kSuccess);
    const std::int64_t tail_elem = tail == kvq::DType::kFloat32 ? 4 : 2;

    // Region sizes, counted by hand.
    const std::int64_t heads = B * H;
    REQUIRE(l.k_codes_bytes() == heads * cap * C::kKWords * 4);
    REQUIRE(l.k_meta_bytes() == heads * (cap / C::kTk) * C::kKGroups * C::kKMetaBytes);
    REQUIRE(l.v_codes_bytes() == heads * cap * C::kVWords * 4);
    REQUIRE(l.v_meta_bytes() == heads * cap * C::kVGroups * C::kVMetaBytes);
    REQUIRE(l.tail_bytes() == (C::kTk > 1 ? heads * C::kTk * D * tail_elem : 0));

    // Offsets: in order, 256-aligned, each region starting at or after the end of the previous one.
    const std::int64_t off[6] = {l.k_codes_offset(), l.k_meta_offset(), l.v_codes_offset(),
                                 l.v_meta_offset(),  l.k_tail_offset(), l.v_tail_offset()};
    const std::int64_t size[6] = {l.k_codes_bytes(), l.k_meta_bytes(), l.v_codes_bytes(),
                                  l.v_meta_bytes(),  l.tail_bytes(),   l.tail_bytes()};
    for (int r = 0; r < 6; ++r) {
      REQUIRE(off[r] % 256 == 0);
      if (r > 0) REQUIRE(off[r] >= off[r - 1] + size[r - 1]);
      if (r > 0) REQUIRE(off[r] < off[r - 1] + size[r - 1] + 256);  // no more padding than alignment needs
    }
    REQUIRE(l.bytes() % 256 == 0);
    REQUIRE(l.bytes() >= off[5] + size[5]);

    // Every element index of every region: a bijection onto [0, count), bytes in range, no overlap.
    ByteMap bytes(l.bytes());
    IndexMap kc, km, vc, vm, tl;
    bool in_range = true;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        for (std::int64_t t = 0; t < cap; ++t) {
          for (int w = 0; w < C::kKWords; ++w) {
            kc.add(l.k_code_word(b, h, t) + w, Id{b, h, t, w});
            in_range &= bytes.mark(1, off[0] + (l.k_code_word(b, h, t) + w) * 4, 4);
          }
          for (int w = 0; w < C::kVWords; ++w) {
            vc.add(l.v_code_word(b, h, t) + w, Id{b, h, t, w});
            in_range &= bytes.mark(3, off[2] + (l.v_code_word(b, h, t) + w) * 4, 4);
          }
          // Tokens of one (batch, head) are contiguous.
          if (t > 0) REQUIRE(l.k_code_word(b, h, t) == l.k_code_word(b, h, t - 1) + C::kKWords);
          if (t > 0) REQUIRE(l.v_code_word(b, h, t) == l.v_code_word(b, h, t - 1) + C::kVWords);
          for (int c = 0; c < D; ++c) {
            km.add(l.k_meta_index(b, h, t, c), Id{b, h, t / C::kTk, c / C::kKChannelsPerGroup});
            vm.add(l.v_meta_index(b, h, t, c), Id{b, h, t, c / C::kVGroupSize});
          }
        }
        for (int i = 0; i < C::kTk && L::kHasTail; ++i)
          for (int c = 0; c < D; ++c) tl.add(l.tail_index(b, h, i, c), Id{b, h, i, c});
      }
    REQUIRE(in_range);
    REQUIRE(kc.dense(heads * cap * C::kKWords));
    REQUIRE(vc.dense(heads * cap * C::kVWords));
    REQUIRE(km.dense(heads * (cap / C::kTk) * C::kKGroups));
    REQUIRE(vm.dense(heads * cap * C::kVGroups));
    for (const auto& e : km.seen) REQUIRE(bytes.mark(2, off[1] + e.first * C::kKMetaBytes, C::kKMetaBytes));
    for (const auto& e : vm.seen) REQUIRE(bytes.mark(4, off[3] + e.first * C::kVMetaBytes, C::kVMetaBytes));
    if (L::kHasTail) {
      REQUIRE(tl.dense(heads * C::kTk * D));
      for (const auto& e : tl.seen) {
        REQUIRE(bytes.mark(5, off[4] + e.first * tail_elem, tail_elem));
        REQUIRE(bytes.mark(6, off[5] + e.first * tail_elem, tail_elem));
      }
    }
  }
}

TEST_CASE("bytes per token match a hand count of codes and metadata", "[layout][cpu]") {
  // INT2 PerToken G=128, D=128, fp16 metadata, K and V: 32 + 32 code bytes + 4 + 4 metadata bytes.
  using A = CacheLayout<QuantSpec<2, 128, Granularity::kPerToken>, QuantSpec<2, 128, Granularity::kPerToken>, 128>;
  STATIC_REQUIRE(A::kBytesPerToken == 72.0);
  STATIC_REQUIRE(A::kBf16BytesPerToken == 512.0);
  // INT2 PerChannel G=32 keys: 128 channel groups · 4 bytes over 32 tokens = 16 bytes per token.
  using B = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 128, Granularity::kPerToken>, 128>;
  STATIC_REQUIRE(B::kBytesPerToken == 32 + 32 + 16 + 4);
  // INT4 PerToken G=64 bf16 keys (64 B codes, 2·4 B meta), INT8 G=128 fp32 values (128 B, 8 B).
  using C = CacheLayout<QuantSpec<4, 64, Granularity::kPerToken, ScaleType::kBFloat16>,
                        QuantSpec<8, 128, Granularity::kPerToken, ScaleType::kFloat32>, 128>;
  STATIC_REQUIRE(C::kBytesPerToken == 64 + 8 + 128 + 8);
  // INT2 PerToken G=32, D=64: 16 + 16 code bytes, 2 groups · 4 bytes each side.
  using E = CacheLayout<QuantSpec<2, 32, Granularity::kPerToken>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
  STATIC_REQUIRE(E::kBytesPerToken == 16 + 16 + 8 + 8);
  // The amortised count agrees with a large cache's bytes per token (alignment aside).
  B l;
  REQUIRE(B::make(CacheShape{2, 4, 4096, kvq::DType::kBFloat16}, &l) == Status::kSuccess);
  const double quantized = static_cast<double>(l.k_codes_bytes() + l.k_meta_bytes() + l.v_codes_bytes() + l.v_meta_bytes());
  CHECK(quantized / (2.0 * 4 * 4096) == 84.0);
}

TEST_CASE("make() accepts valid shapes and refuses bad ones", "[layout][cpu]") {
  using PC = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
  using PT = CacheLayout<QuantSpec<4, 32, Granularity::kPerToken>, QuantSpec<4, 32, Granularity::kPerToken>, 64>;
  PC l;
  CHECK(PC::make(CacheShape{3, 5, 96, kvq::DType::kFloat16}, &l) == Status::kSuccess);
  CHECK(l.shape.batch == 3);
  CHECK(l.shape.heads == 5);
  CHECK(l.shape.capacity == 96);
  CHECK(l.shape.tail_dtype == kvq::DType::kFloat16);
  const PC before = l;
  CHECK(PC::make(CacheShape{3, 5, 50, kvq::DType::kBFloat16}, &l) == Status::kErrorInvalidArgument);  // not a multiple of 32
  CHECK(PC::make(CacheShape{3, 5, 33, kvq::DType::kBFloat16}, &l) == Status::kErrorInvalidArgument);
  CHECK(PC::make(CacheShape{0, 5, 96, kvq::DType::kBFloat16}, &l) == Status::kErrorInvalidArgument);
  CHECK(PC::make(CacheShape{-1, 5, 96, kvq::DType::kBFloat16}, &l) == Status::kErrorInvalidArgument);
  CHECK(PC::make(CacheShape{3, 0, 96, kvq::DType::kBFloat16}, &l) == Status::kErrorInvalidArgument);
  CHECK(PC::make(CacheShape{3, 5, -32, kvq::DType::kBFloat16}, &l) == Status::kErrorInvalidArgument);
  CHECK(PC::make(CacheShape{3, 5, 96, kvq::DType::kBFloat16}, nullptr) == Status::kErrorInvalidArgument);
  // A refused shape leaves the output alone.
  CHECK(l.shape.capacity == before.shape.capacity);
  CHECK(l.shape.tail_dtype == before.shape.tail_dtype);
  // PerToken keys: any capacity.
  PT p;
  CHECK(PT::make(CacheShape{1, 1, 77, kvq::DType::kBFloat16}, &p) == Status::kSuccess);
  CHECK(PT::make(CacheShape{1, 1, 1, kvq::DType::kBFloat16}, &p) == Status::kSuccess);
}

TEST_CASE("quantized and tail lengths split a cache at the last full key group", "[layout][cpu]") {
  using PC = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
  using PT = CacheLayout<QuantSpec<2, 32, Granularity::kPerToken>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
  STATIC_REQUIRE(PC::kHasTail);
  STATIC_REQUIRE_FALSE(PT::kHasTail);
  const std::int64_t lens[] = {0, 1, 31, 32, 33, 73, 96};
  const std::int64_t q[] = {0, 0, 0, 32, 32, 64, 96};
  const std::int64_t t[] = {0, 1, 31, 0, 1, 9, 0};
  for (int i = 0; i < 7; ++i) {
    CHECK(PC::quantized_length(lens[i]) == q[i]);
    CHECK(PC::tail_length(lens[i]) == t[i]);
    CHECK(PT::quantized_length(lens[i]) == lens[i]);
    CHECK(PT::tail_length(lens[i]) == 0);
  }
  PT p;
  REQUIRE(PT::make(CacheShape{2, 3, 40, kvq::DType::kBFloat16}, &p) == Status::kSuccess);
  CHECK(p.tail_bytes() == 0);
  CHECK(p.k_tail_offset() == p.v_tail_offset());
}

TEST_CASE("offsets beyond 2^31 are exact 64-bit values", "[layout][cpu]") {
  {
    // 64 · 64 heads · 2^20 tokens = 2^32 tokens; INT4 keys: 16 words/token, bf16 metadata in
    // 2 groups; INT8 values: 32 words/token, one fp32 (step, zero) pair. Not allocated.
    using L = CacheLayout<QuantSpec<4, 64, Granularity::kPerToken, ScaleType::kBFloat16>,
                          QuantSpec<8, 128, Granularity::kPerToken, ScaleType::kFloat32>, 128>;
    L l;
    const std::int64_t cap = std::int64_t{1} << 20, T = std::int64_t{1} << 32;
    REQUIRE(L::make(CacheShape{64, 64, cap, kvq::DType::kBFloat16}, &l) == Status::kSuccess);
    CHECK(l.k_codes_bytes() == T * 16 * 4);
    CHECK(l.k_meta_bytes() == T * 2 * 4);
    CHECK(l.v_codes_bytes() == T * 32 * 4);
    CHECK(l.v_meta_bytes() == T * 1 * 8);
    CHECK(l.k_meta_offset() == (std::int64_t{1} << 38));
    CHECK(l.v_codes_offset() == (std::int64_t{1} << 38) + (std::int64_t{1} << 35));
    CHECK(l.v_meta_offset() == (std::int64_t{1} << 38) + (std::int64_t{1} << 35) + (std::int64_t{1} << 39));
    CHECK(l.bytes() == (std::int64_t{1} << 38) + (std::int64_t{1} << 35) + (std::int64_t{1} << 39) + (std::int64_t{1} << 35));
    CHECK(l.k_code_word(63, 63, cap - 1) == T * 16 - 16);
    CHECK(l.k_code_word(40, 7, 123456) == ((std::int64_t{40} * 64 + 7) * cap + 123456) * 16);
    CHECK(l.v_code_word(63, 63, cap - 1) == T * 32 - 32);
    CHECK(l.k_meta_index(63, 63, cap - 1, 127) == T * 2 - 1);
    CHECK(l.v_meta_index(63, 63, cap - 1, 127) == T - 1);
    CHECK(l.v_meta_index(32, 0, 0, 0) == std::int64_t{1} << 31);
  }
  {
    // PerChannel keys with a tail: 2000 · 1000 heads; the tail alone has 2e6 · 32 · 64 elements.
    using L = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
    L l;
    const std::int64_t cap = std::int64_t{1} << 20, heads = 2000 * 1000;
    REQUIRE(L::make(CacheShape{2000, 1000, cap, kvq::DType::kBFloat16}, &l) == Status::kSuccess);
    CHECK(l.tail_index(1999, 999, 31, 63) == heads * 32 * 64 - 1);
    CHECK(l.tail_index(1500, 0, 0, 0) == std::int64_t{1500} * 1000 * 32 * 64);
    CHECK(l.k_meta_index(1999, 999, cap - 1, 63) == heads * (cap / 32) * 64 - 1);
    CHECK(l.k_meta_index(1999, 999, cap - 32, 0) == heads * (cap / 32) * 64 - 64);
    CHECK(l.tail_bytes() == heads * 32 * 64 * 2);
    CHECK(l.v_tail_offset() - l.k_tail_offset() == heads * 32 * 64 * 2);
    CHECK(l.k_codes_bytes() == heads * cap * 4 * 4);
  }
}

TEST_CASE("CachePointers point at the region offsets of one allocation", "[layout][cpu]") {
  using L = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
  L l;
  REQUIRE(L::make(CacheShape{3, 5, 96, kvq::DType::kBFloat16}, &l) == Status::kSuccess);
  std::vector<unsigned char> buf(static_cast<std::size_t>(l.bytes()));
  auto* base = buf.data();
  const auto p = kvq::layout::CachePointers<L>::from_base(l, base);
  CHECK(reinterpret_cast<unsigned char*>(p.k_codes) == base + l.k_codes_offset());
  CHECK(reinterpret_cast<unsigned char*>(p.k_meta) == base + l.k_meta_offset());
  CHECK(reinterpret_cast<unsigned char*>(p.v_codes) == base + l.v_codes_offset());
  CHECK(reinterpret_cast<unsigned char*>(p.v_meta) == base + l.v_meta_offset());
  CHECK(static_cast<unsigned char*>(p.k_tail) == base + l.k_tail_offset());
  CHECK(static_cast<unsigned char*>(p.v_tail) == base + l.v_tail_offset());
  STATIC_REQUIRE(sizeof(L::KMeta) == 4);
  STATIC_REQUIRE(L::kAlignment == 256);
}

TEST_CASE("a rotated-key layout records its rotation and keeps every size and offset of the unrotated one", "[layout][cpu]") {
  using kvq::Rotation;
  using KPc = QuantSpec<2, 32, Granularity::kPerChannel>;
  using KPt = QuantSpec<4, 64, Granularity::kPerToken, ScaleType::kBFloat16>;
  using V = QuantSpec<2, 128, Granularity::kPerToken>;
  using V64 = QuantSpec<2, 64, Granularity::kPerToken>;
  using Plain = CacheLayout<KPc, V, 128>;
  using Rot = CacheLayout<KPc, V, 128, Rotation::kHadamard>;
  using PlainPt = CacheLayout<KPt, V64, 64>;
  using RotPt = CacheLayout<KPt, V64, 64, Rotation::kHadamard>;
  // Three template arguments keep meaning unrotated.
  STATIC_REQUIRE(std::is_same<Plain, CacheLayout<KPc, V, 128, Rotation::kNone>>::value);
  STATIC_REQUIRE(Plain::kKeyRotation == Rotation::kNone);
  STATIC_REQUIRE(!Plain::kRotatedKeys);
  STATIC_REQUIRE(Rot::kKeyRotation == Rotation::kHadamard);
  STATIC_REQUIRE(Rot::kRotatedKeys);
  STATIC_REQUIRE(RotPt::kRotatedKeys);
  STATIC_REQUIRE(Rot::kBytesPerToken == Plain::kBytesPerToken);
  STATIC_REQUIRE(RotPt::kBytesPerToken == PlainPt::kBytesPerToken);
  STATIC_REQUIRE(Rot::kKeyWordsPerToken == Plain::kKeyWordsPerToken && Rot::kHasTail == Plain::kHasTail);
  const CacheShape shape{2, 3, 160, kvq::DType::kBFloat16};
  Plain p;
  Rot r;
  REQUIRE(Plain::make(shape, &p) == Status::kSuccess);
  REQUIRE(Rot::make(shape, &r) == Status::kSuccess);
  CHECK(r.bytes() == p.bytes());
  CHECK(r.k_meta_offset() == p.k_meta_offset());
  CHECK(r.v_codes_offset() == p.v_codes_offset());
  CHECK(r.v_meta_offset() == p.v_meta_offset());
  CHECK(r.k_tail_offset() == p.k_tail_offset());
  CHECK(r.v_tail_offset() == p.v_tail_offset());
  CHECK(r.k_meta_index(1, 2, 100, 7) == p.k_meta_index(1, 2, 100, 7));
  CHECK(r.tail_index(1, 2, 5, 7) == p.tail_index(1, 2, 5, 7));
}
