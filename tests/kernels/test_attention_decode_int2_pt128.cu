// GPU tests of the short-query attention kernel: int2_pt128 keys and values (None, Taylor2,
// Taylor4), and the selection of kvq::AttentionPlan<..., AutoConfig> on both sides of its
// rule (kernels/decode/schedule.hpp), the split plan and its workspace.
#include "kernels/test_attention_decode.cuh"

#include "kvq/kernels/decode/schedule.hpp"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)

KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kNone, "int2_pt128 none", 910001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2, "int2_pt128 taylor2", 911001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor4, "int2_pt128 taylor4", 912001)

TEST_CASE("short-query attention, small cases for the sanitizers: INT2 PerToken G128", "[attention][gpu][decode][sanitize]") {
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pt128D128, kvq::Correction::kNone>("int2_pt128 none", 910001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2>("int2_pt128 taylor2", 911001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor4>("int2_pt128 taylor4", 912001) > 0);
}

namespace {

using L = kvq::variants::Int2Pt128D128;
constexpr int kD = 128;

bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  KVQ_TEST_CUDA(cudaGetDevice(&dev));
  KVQ_TEST_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  KVQ_TEST_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major == 9 && minor == 0;
}

/// Device buffers of a [batch, n, heads, D] problem with a cache of `capacity` tokens.
struct SelectionFixture {
  L layout;
  kvq::test::DeviceBuffer<unsigned char> cache;
  kvq::test::DeviceBuffer<std::uint16_t> q, k, v, o;
  kvq::test::DeviceBuffer<std::int32_t> lengths;
  kvq::AttentionArguments a;

  static L make_layout(int batch, int kv_heads, std::int64_t capacity) {
    L l;
    REQUIRE(L::make({batch, kv_heads, capacity, kvq::DType::kBFloat16}, &l) == kvq::Status::kSuccess);
    return l;
  }
  SelectionFixture(int batch, int q_heads, int kv_heads, int n, std::int64_t capacity)
      : layout(make_layout(batch, kv_heads, capacity)),
        cache(static_cast<std::size_t>(layout.bytes())),
        q(static_cast<std::size_t>(batch) * n * q_heads * kD),
        k(static_cast<std::size_t>(batch) * n * kv_heads * kD),
        v(static_cast<std::size_t>(batch) * n * kv_heads * kD),
        o(static_cast<std::size_t>(batch) * n * q_heads * kD),
        lengths(std::vector<std::int32_t>(static_cast<std::size_t>(batch), 0)) {
    cache.fill_bytes(0);
    q.fill_bytes(0);
    k.fill_bytes(0);
    v.fill_bytes(0);
    a.batch = batch;
    a.q_heads = q_heads;
    a.num_q = n;
    a.num_chunk = n;
    a.q = kvq::Tensor4::contiguous(q.get(), kvq::DType::kBFloat16, n, q_heads, kD);
    a.k_chunk = kvq::Tensor4::contiguous(k.get(), kvq::DType::kBFloat16, n, kv_heads, kD);
    a.v_chunk = kvq::Tensor4::contiguous(v.get(), kvq::DType::kBFloat16, n, kv_heads, kD);
    a.o = kvq::Tensor4::contiguous(o.get(), kvq::DType::kBFloat16, n, q_heads, kD);
    a.cache = cache.get();
    a.cache_lengths = lengths.get();
    a.scale = 0.088f;
  }
};

}  // namespace

TEST_CASE("short-query selection rule (host)", "[attention][gpu][decode][api]") {
  namespace dk = kvq::kernels::decode;
  dk::ShortQueryShape s;
  s.batch = 8, s.q_heads = 32, s.kv_heads = 8, s.sm_count = 132, s.ctas_per_sm = 2;
  s.num_q = 1;
  CHECK(dk::prefer_short_query(s));
  s.num_q = dk::kMaxShortQueries;
  CHECK(dk::prefer_short_query(s));
  s.num_q = dk::kMaxShortQueries + 1;
  CHECK_FALSE(dk::prefer_short_query(s));
}

TEST_CASE("short-query selection on both sides of the rule, against the reference", "[attention][gpu][decode][api]") {
  const kvq::AttentionPath chunk = device_is_sm90() ? kvq::AttentionPath::kSm90 : kvq::AttentionPath::kSm80;
  // The short side of the rule runs the short-query kernel where AutoConfig applies it.
  const kvq::AttentionPath short_side = kvq::kernels::decode::kAutoSelect ? kvq::AttentionPath::kShort : chunk;
  for (const auto& c : kvq::test::decode_cases(kvq::DType::kBFloat16, 913001)) {
    if (c.num_q > kvq::kernels::decode::kMaxShortQueries) continue;
    DYNAMIC_SECTION("auto, short side: " << c.describe()) {
      kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::AutoConfig>(c, "int2_pt128 t2 auto", false,
                                                                                 short_side);
    }
  }
  kvq::test::AttentionCase c;
  c.batch = 2, c.q_heads = 8, c.kv_heads = 2, c.num_q = kvq::kernels::decode::kMaxShortQueries + 1, c.num_chunk = 17;
  c.cache_lengths = {600, 31};
  c.mask = kvq::Mask::kCausalLastSegment;
  c.mass = true;
  c.seed = 913500;
  DYNAMIC_SECTION("auto, chunk side: " << c.describe()) {
    kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::AutoConfig>(c, "int2_pt128 t2 auto", false, chunk);
  }
  // The same 17-query case forced onto the short-query kernel (several row blocks).
  DYNAMIC_SECTION("forced short: " << c.describe()) {
    kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::ShortQueryConfig>(c, "int2_pt128 t2 short");
  }
}

TEST_CASE("short-query plan: splits, workspace and attention_path", "[attention][gpu][decode][api]") {
  {  // decode, 2 CTAs of work, a long cache: split, with a workspace
    SelectionFixture f(1, 8, 2, 1, 8192);
    kvq::Status s = kvq::Status::kErrorCudaRuntime;
    const kvq::AttentionPath chunk = device_is_sm90() ? kvq::AttentionPath::kSm90 : kvq::AttentionPath::kSm80;
    CHECK(kvq::attention_path<kvq::Correction::kTaylor2>(f.layout, f.a, &s) ==
          (kvq::kernels::decode::kAutoSelect ? kvq::AttentionPath::kShort : chunk));
    CHECK(s == kvq::Status::kSuccess);
    kvq::AttentionPlan<L, kvq::Correction::kTaylor2, kvq::ShortQueryConfig> plan;
    REQUIRE(plan.initialize(f.layout, f.a) == kvq::Status::kSuccess);
    CHECK(plan.path() == kvq::AttentionPath::kShort);
    CHECK(plan.splits() > 1);
    CHECK(plan.splits() <= kvq::kernels::decode::kMaxSplits);
    CHECK(plan.workspace_bytes() >= static_cast<std::size_t>(plan.splits()) * 8 * (kD + 1) * sizeof(float));
    REQUIRE(plan.run(f.a, kvq::test::test_stream()) == kvq::Status::kSuccess);
    // More query rows than the workspace was sized for: refused before any launch.
    kvq::AttentionArguments more = f.a;
    more.num_q = 2;
    CHECK(plan.run(more, kvq::test::test_stream()) == kvq::Status::kErrorInvalidArgument);
    // A moved plan keeps its workspace and runs.
    kvq::AttentionPlan<L, kvq::Correction::kTaylor2, kvq::ShortQueryConfig> moved(std::move(plan));
    CHECK(moved.workspace_bytes() > 0);
    CHECK(moved.run(f.a, kvq::test::test_stream()) == kvq::Status::kSuccess);
    KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  }
  {  // more CTAs than the GPU holds at once: one split, no workspace
    SelectionFixture f(32, 32, 32, 1, 256);
    kvq::AttentionPlan<L, kvq::Correction::kTaylor2, kvq::ShortQueryConfig> plan;
    REQUIRE(plan.initialize(f.layout, f.a) == kvq::Status::kSuccess);
    CHECK(plan.path() == kvq::AttentionPath::kShort);
    CHECK(plan.splits() == 1);
    CHECK(plan.workspace_bytes() == 0);
  }
  {  // 17 queries: the chunk kernels
    SelectionFixture f(1, 8, 2, 17, 256);
    kvq::Status s = kvq::Status::kErrorCudaRuntime;
    CHECK(kvq::attention_path<kvq::Correction::kTaylor2>(f.layout, f.a, &s) ==
          (device_is_sm90() ? kvq::AttentionPath::kSm90 : kvq::AttentionPath::kSm80));
    CHECK(s == kvq::Status::kSuccess);
  }
}
