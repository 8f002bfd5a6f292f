// Tests of kvq/spec/variant.hpp: the runtime key of a cache layout and the fold that
// maps it to the instantiated layouts.
#include <catch2/catch.hpp>

#include <vector>

#include <kvq/layout/cache_layout.hpp>
#include <kvq/spec/variant.hpp>

namespace {

using kvq::CacheVariant;
using kvq::Granularity;
using kvq::QuantSpec;
using kvq::ScaleType;
using kvq::Status;
using kvq::layout::CacheLayout;

using LA = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 128, Granularity::kPerToken>, 128>;
using LB = CacheLayout<QuantSpec<4, 64, Granularity::kPerToken, ScaleType::kBFloat16>,
                       QuantSpec<8, 32, Granularity::kPerToken, ScaleType::kFloat32>, 64>;
using LC = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 128, Granularity::kPerToken>, 256>;
using LR = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 128, Granularity::kPerToken>, 128,
                       kvq::Rotation::kHadamard>;

}  // namespace

TEST_CASE("variant_of reads a layout's bits, groups, granularity, metadata type and head dim", "[layout][cpu]") {
  constexpr CacheVariant a = kvq::variant_of<LA>();
  STATIC_REQUIRE(a.k_bits == 2);
  STATIC_REQUIRE(a.k_group == 32);
  STATIC_REQUIRE(a.k_granularity == Granularity::kPerChannel);
  STATIC_REQUIRE(a.k_scale == ScaleType::kFloat16);
  STATIC_REQUIRE(a.v_bits == 2);
  STATIC_REQUIRE(a.v_group == 128);
  STATIC_REQUIRE(a.v_scale == ScaleType::kFloat16);
  STATIC_REQUIRE(a.head_dim == 128);
  STATIC_REQUIRE(a.k_rotation == kvq::Rotation::kNone);
  constexpr CacheVariant b = kvq::variant_of<LB>();
  STATIC_REQUIRE(b == CacheVariant{4, 64, Granularity::kPerToken, ScaleType::kBFloat16, 8, 32, ScaleType::kFloat32, 64});
  STATIC_REQUIRE(a != b);
  STATIC_REQUIRE(kvq::variant_of<LC>() != a);  // differs in head dim only
}

TEST_CASE("the key rotation is part of a variant", "[layout][cpu]") {
  constexpr CacheVariant a = kvq::variant_of<LA>();
  constexpr CacheVariant r = kvq::variant_of<LR>();
  STATIC_REQUIRE(r.k_rotation == kvq::Rotation::kHadamard);
  STATIC_REQUIRE(r != a);  // differs in rotation only
  CacheVariant unrotated = r;
  unrotated.k_rotation = kvq::Rotation::kNone;
  CHECK(unrotated == a);
  // A variant written without the rotation field means unrotated keys.
  STATIC_REQUIRE(CacheVariant{2, 32, Granularity::kPerChannel, ScaleType::kFloat16, 2, 128, ScaleType::kFloat16, 128} == a);
  std::vector<int> calls;
  auto f = [&](auto tag) {
    calls.push_back(decltype(tag)::type::kRotatedKeys ? 1 : 0);
    return Status::kSuccess;
  };
  const kvq::TypeList<LA, LR> list;
  CHECK(kvq::dispatch_layout(list, r, f) == Status::kSuccess);
  CHECK(kvq::dispatch_layout(list, a, f) == Status::kSuccess);
  CHECK(calls == std::vector<int>{1, 0});
  CHECK(kvq::dispatch_layout(kvq::TypeList<LA>{}, r, f) == Status::kErrorNotSupported);
}

TEST_CASE("dispatch_layout calls the function for the first matching layout only", "[layout][cpu]") {
  const kvq::TypeList<LA, LB, LC> list;
  std::vector<int> calls;
  auto f = [&](auto tag) {
    using L = typename decltype(tag)::type;
    calls.push_back(L::kHeadDim);
    return L::kHeadDim == 64 ? Status::kErrorMisaligned : Status::kSuccess;  // a status only f can produce
  };
  CHECK(kvq::dispatch_layout(list, kvq::variant_of<LB>(), f) == Status::kErrorMisaligned);
  CHECK(calls == std::vector<int>{64});
  calls.clear();
  CHECK(kvq::dispatch_layout(list, kvq::variant_of<LC>(), f) == Status::kSuccess);
  CHECK(calls == std::vector<int>{256});
  calls.clear();
  CacheVariant unknown = kvq::variant_of<LA>();
  unknown.k_bits = 8;
  CHECK(kvq::dispatch_layout(list, unknown, f) == Status::kErrorNotSupported);
  CHECK(calls.empty());
  CHECK(kvq::dispatch_layout(kvq::TypeList<>{}, kvq::variant_of<LA>(), f) == Status::kErrorNotSupported);
}

TEST_CASE("dispatch stops at the first of several matches", "[layout][cpu]") {
  int count = 0;
  const Status s = kvq::dispatch(
      kvq::TypeList<int, long, short>{}, [](auto tag) { return sizeof(typename decltype(tag)::type) >= 4; },
      [&](auto tag) {
        ++count;
        return sizeof(typename decltype(tag)::type) == 4 ? Status::kErrorNoDevice : Status::kSuccess;
      });
  CHECK(s == Status::kErrorNoDevice);
  CHECK(count == 1);
}
