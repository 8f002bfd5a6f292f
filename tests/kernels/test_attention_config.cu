// The fused attention with non-default configurations against the reference: the
// correction applied with one FMA/FADD per score instead of folded into the MMA (mma.sync
// and Hopper kernels), and other tile shapes (4 warps per CTA; 32-token tiles). The
// benchmark compares them.
#include "kernels/test_attention_common.cuh"

#include <type_traits>

namespace {
using Unfolded = kvq::kernels::sm80::TileConfig<8, 64, 4, false>;

template <class Layout, kvq::Correction Mode, class Config>
void run_config_cases(const char* name, std::uint64_t seed0) {
  for (const auto& c : kvq::test::standard_cases(kvq::DType::kBFloat16, seed0)) {
    DYNAMIC_SECTION(c.describe()) { kvq::test::run_attention_case<Layout, Mode, Config>(c, name); }
  }
}
}  // namespace

TEST_CASE("fused attention, correction per score (not folded): int2_pt128 taylor2", "[attention][gpu][config]") {
  run_config_cases<kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2, Unfolded>("int2_pt128 t2 unfolded", 810001);
}
TEST_CASE("fused attention, correction per score (not folded): int2_pt128 taylor4", "[attention][gpu][config]") {
  run_config_cases<kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor4, Unfolded>("int2_pt128 t4 unfolded", 811001);
}
TEST_CASE("fused attention, correction per score (not folded): int2_pc32 taylor2", "[attention][gpu][config]") {
  run_config_cases<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2, Unfolded>("int2_pc32 t2 unfolded", 820001);
}

TEST_CASE("Hopper attention kernel, correction per score (not folded)", "[attention][gpu][config][sm90]") {
  using L = kvq::variants::Int2Pt128D128;
  using HopperFma = kvq::kernels::sm90::Config128NoFold;
  run_config_cases<L, kvq::Correction::kTaylor2, HopperFma>("int2_pt128 t2 sm90 fma", 830001);
  run_config_cases<L, kvq::Correction::kTaylor4, HopperFma>("int2_pt128 t4 sm90 fma", 831001);
}
TEST_CASE("Hopper attention kernel, small case for the sanitizers (not folded)", "[attention][gpu][config][sm90][sanitize]") {
  using L = kvq::variants::Int2Pt128D128;
  kvq::test::run_attention_case<L, kvq::Correction::kTaylor4, kvq::kernels::sm90::Config128NoFold>(
      kvq::test::sanitizer_case(832001), "int2_pt128 t4 sm90 fma");
}

TEST_CASE("Hopper attention kernel, other schedules", "[attention][gpu][config][sm90]") {
  using L = kvq::variants::Int2Pt128D128;
  SECTION("overlapped softmax and PV") {
    run_config_cases<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Overlap>("sm90 ov", 840001);
  }
  SECTION("64-token tiles, 4 buffers") {
    run_config_cases<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config<128, 64, 4, kvq::kernels::sm90::ScheduleCooperative>>("sm90 n64", 841001);
  }
  SECTION("64-token tiles, 4 buffers, overlapped") {
    run_config_cases<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config<128, 64, 4, kvq::kernels::sm90::ScheduleOverlap>>("sm90 n64 ov", 842001);
  }
}

// The CTA shapes and schedules the variants' tests do not run (they run the default,
// kernels::sm90::DefaultConfig: 128 rows with the overlapped schedule for 2-bit caches at
// head dim 128, 192 rows for the others).
TEST_CASE("Hopper attention kernel, 128- and 192-row CTAs", "[attention][gpu][config][sm90]") {
  using L2 = kvq::variants::Int2Pt128D128;
  using L4 = kvq::variants::Int4Pt128D128;
  STATIC_REQUIRE(std::is_same_v<kvq::kernels::sm90::DefaultConfig<L2, kvq::Correction::kTaylor2>, kvq::kernels::sm90::Config128Overlap>);
  STATIC_REQUIRE(std::is_same_v<kvq::kernels::sm90::DefaultConfig<L4, kvq::Correction::kTaylor2>, kvq::kernels::sm90::Config192>);
  STATIC_REQUIRE(
      std::is_same_v<kvq::kernels::sm90::DefaultConfig<kvq::variants::Int2Pt64D64, kvq::Correction::kTaylor2>, kvq::kernels::sm90::Config192>);
  SECTION("128 rows: int2 taylor2") {
    run_config_cases<L2, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128>("sm90 128 int2 t2", 845001);
  }
  SECTION("128 rows: int2 taylor4") {
    run_config_cases<L2, kvq::Correction::kTaylor4, kvq::kernels::sm90::Config128>("sm90 128 int2 t4", 846001);
  }
  SECTION("128 rows: int2 none") {
    run_config_cases<L2, kvq::Correction::kNone, kvq::kernels::sm90::Config128>("sm90 128 int2 none", 847001);
  }
  SECTION("128 rows: int4 taylor2") {
    run_config_cases<L4, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128>("sm90 128 int4 t2", 848001);
  }
  SECTION("192 rows: int2 taylor2") {
    run_config_cases<L2, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config192>("sm90 192 int2 t2", 850001);
  }
  SECTION("192 rows: int2 taylor4") {
    run_config_cases<L2, kvq::Correction::kTaylor4, kvq::kernels::sm90::Config192>("sm90 192 int2 t4", 850501);
  }
  SECTION("192 rows: int2 none") {
    run_config_cases<L2, kvq::Correction::kNone, kvq::kernels::sm90::Config192>("sm90 192 int2 none", 851001);
  }
  SECTION("overlapped: int4 taylor2") {
    run_config_cases<L4, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Overlap>("sm90 ov int4 t2", 851301);
  }
  SECTION("turns: int2 taylor2") {
    run_config_cases<L2, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Pingpong>("sm90 pp int2 t2", 851501);
  }
  SECTION("turns: int2 none") {
    run_config_cases<L2, kvq::Correction::kNone, kvq::kernels::sm90::Config128Pingpong>("sm90 pp int2 none", 851701);
  }
  SECTION("turns: int4 taylor2") {
    run_config_cases<L4, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Pingpong>("sm90 pp int4 t2", 852001);
  }
  SECTION("turns, 192 rows (three warpgroups): int2 taylor2") {
    run_config_cases<L2, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config<192, 64, 4, kvq::kernels::sm90::SchedulePingpong>>("sm90 pp192 int2 t2",
                                                                                                         852501);
  }
}
TEST_CASE("Hopper attention kernel, other schedules, small case for the sanitizers", "[attention][gpu][config][sm90][sanitize]") {
  using L = kvq::variants::Int2Pt128D128;
  kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Overlap>(
      kvq::test::sanitizer_case(843001), "sm90 ov");
  kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config<128, 64, 4, kvq::kernels::sm90::ScheduleOverlap>>(
      kvq::test::sanitizer_case(844001), "sm90 n64 ov");
  kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128>(kvq::test::sanitizer_case(849001),
                                                                                       "sm90 128 int2 t2");
  kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config192>(kvq::test::sanitizer_case(853001),
                                                                                          "sm90 192 int2 t2");
  kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Pingpong>(kvq::test::sanitizer_case(853301),
                                                                                               "sm90 pp int2 t2");
  kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config<192, 64, 4, kvq::kernels::sm90::SchedulePingpong>>(
      kvq::test::sanitizer_case(853501), "sm90 pp192 int2 t2");
}

TEST_CASE("attention with non-default configurations refuses bad arguments", "[attention][gpu][config][api]") {
  using L = kvq::variants::Int2Pt128D128;
  const auto unfolded = kvq::test::refusal_statuses<L, kvq::Correction::kTaylor2, Unfolded>();
  KVQ_REQUIRE_REFUSALS(unfolded);
  const auto hopper_fma = kvq::test::refusal_statuses<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128NoFold>();
  KVQ_REQUIRE_REFUSALS(hopper_fma);
  const auto hopper_ov = kvq::test::refusal_statuses<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Overlap>();
  KVQ_REQUIRE_REFUSALS(hopper_ov);
  const auto hopper_128 = kvq::test::refusal_statuses<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128>();
  KVQ_REQUIRE_REFUSALS(hopper_128);
  const auto hopper_192 = kvq::test::refusal_statuses<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config192>();
  KVQ_REQUIRE_REFUSALS(hopper_192);
  // A variant the Hopper kernel does not implement is refused as such, whatever the arguments.
  const auto pc = kvq::test::refusal_statuses<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128>();
  REQUIRE(pc.null_q == kvq::Status::kErrorNotSupported);
  REQUIRE(pc.zero_scale == kvq::Status::kErrorNotSupported);
}
