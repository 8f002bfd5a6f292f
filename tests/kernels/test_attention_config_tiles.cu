// Tile shapes other than the heuristic's, against the reference (see test_attention_config.cu).
#include "kernels/test_attention_common.cuh"

namespace {
using Warps4 = kvq::kernels::sm80::TileConfig<4, 64, 4>;
using Tile32 = kvq::kernels::sm80::TileConfig<8, 32, 4>;

template <class Layout, kvq::Correction Mode, class Config>
void run_tile_cases(const char* name, std::uint64_t seed0) {
  for (const auto& c : kvq::test::standard_cases(kvq::DType::kBFloat16, seed0)) {
    DYNAMIC_SECTION(c.describe()) { kvq::test::run_attention_case<Layout, Mode, Config>(c, name); }
  }
}
}  // namespace

TEST_CASE("fused attention with 4 warps per CTA: int2_pt128 taylor2", "[attention][gpu][config]") {
  run_tile_cases<kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2, Warps4>("int2_pt128 t2 w4", 830001);
}
TEST_CASE("fused attention with 32-token tiles: int2_pc32 taylor2", "[attention][gpu][config]") {
  run_tile_cases<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2, Tile32>("int2_pc32 t2 n32", 840001);
}

TEST_CASE("attention with other tile shapes refuses bad arguments", "[attention][gpu][config][api]") {
  const auto w4 = kvq::test::refusal_statuses<kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2, Warps4>();
  KVQ_REQUIRE_REFUSALS(w4);
  const auto n32 = kvq::test::refusal_statuses<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2, Tile32>();
  KVQ_REQUIRE_REFUSALS(n32);
}
