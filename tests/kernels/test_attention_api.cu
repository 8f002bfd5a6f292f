// Host API of the fused attention: argument checks refuse before any launch (nothing is
// written, no CUDA error is left behind), plans refuse changed invariants, the kernel
// selection on both sides of its rule, the runtime dispatch runs listed variants only,
// empty problems succeed, a caller's pending CUDA error survives a kvq call, and
// quantize-append + attention captured in a CUDA graph replay as direct calls. Linked
// with the int2_pt128 instantiations.
#include "kernels/test_attention_common.cuh"

#include "kvq/api/quantize_append.cuh"

// The other side of the selection rule: PerChannel keys, which only the mma.sync kernel implements.
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kNone)

namespace {

using L = kvq::variants::Int2Pt128D128;
constexpr int kD = 128;

struct ApiFixture {
  L layout;
  kvq::test::DeviceBuffer<unsigned char> cache;
  kvq::test::DeviceBuffer<std::uint16_t> q, k, v, o;
  kvq::test::DeviceBuffer<std::int32_t> lengths;
  kvq::AttentionArguments a;

  static L make_layout() {
    L l;
    REQUIRE(L::make({2, 2, 64, kvq::DType::kBFloat16}, &l) == kvq::Status::kSuccess);
    return l;
  }
  // A zero cache dequantizes to 0: valid input.
  ApiFixture()
      : layout(make_layout()),
        cache(static_cast<std::size_t>(layout.bytes())),
        q(2 * 8 * 4 * kD),
        k(2 * 8 * 2 * kD),
        v(2 * 8 * 2 * kD),
        o(2 * 8 * 4 * kD),
        lengths(std::vector<std::int32_t>{5, 64}) {
    cache.fill_bytes(0);
    q.fill_bytes(0);
    k.fill_bytes(0);
    v.fill_bytes(0);
    a.batch = 2;
    a.q_heads = 4;
    a.num_q = 8;
    a.num_chunk = 8;
    a.q = kvq::Tensor4::contiguous(q.get(), kvq::DType::kBFloat16, 8, 4, kD);
    a.k_chunk = kvq::Tensor4::contiguous(k.get(), kvq::DType::kBFloat16, 8, 2, kD);
    a.v_chunk = kvq::Tensor4::contiguous(v.get(), kvq::DType::kBFloat16, 8, 2, kD);
    a.o = kvq::Tensor4::contiguous(o.get(), kvq::DType::kBFloat16, 8, 4, kD);
    a.cache = cache.get();
    a.cache_lengths = lengths.get();
    a.scale = 0.125f;
  }
  void poison() { o.fill_bytes(0xFF); }
  bool untouched() const {
    for (auto x : o.download())
      if (x != 0xFFFFu) return false;
    return true;
  }
};

}  // namespace

TEST_CASE("attention refuses bad arguments before any launch", "[attention][gpu][api]") {
  ApiFixture f;
  REQUIRE(kvq::AttentionPlan<L, kvq::Correction::kTaylor2>::can_implement(f.layout, f.a) == kvq::Status::kSuccess);
  f.poison();
  REQUIRE(kvq::attention<kvq::Correction::kTaylor2>(f.layout, f.a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  REQUIRE_FALSE(f.untouched());

  struct Bad {
    const char* what;
    void (*edit)(kvq::AttentionArguments&);
    kvq::Status expected;
  };
  const Bad bad[] = {
      {"null q", [](kvq::AttentionArguments& a) { a.q.data = nullptr; }, kvq::Status::kErrorInvalidArgument},
      {"null o", [](kvq::AttentionArguments& a) { a.o.data = nullptr; }, kvq::Status::kErrorInvalidArgument},
      {"null k chunk", [](kvq::AttentionArguments& a) { a.k_chunk.data = nullptr; }, kvq::Status::kErrorInvalidArgument},
      {"null v chunk", [](kvq::AttentionArguments& a) { a.v_chunk.data = nullptr; }, kvq::Status::kErrorInvalidArgument},
      {"lengths without cache", [](kvq::AttentionArguments& a) { a.cache = nullptr; }, kvq::Status::kErrorInvalidArgument},
      {"misaligned q", [](kvq::AttentionArguments& a) { a.q.data = static_cast<std::uint16_t*>(a.q.data) + 1; },
       kvq::Status::kErrorMisaligned},
      {"misaligned o", [](kvq::AttentionArguments& a) { a.o.data = static_cast<std::uint16_t*>(a.o.data) + 4; },
       kvq::Status::kErrorMisaligned},
      {"q token stride not a multiple of 8", [](kvq::AttentionArguments& a) { a.q.token_stride += 4; },
       kvq::Status::kErrorMisaligned},
      {"v head stride not a multiple of 8", [](kvq::AttentionArguments& a) { a.v_chunk.head_stride += 2; },
       kvq::Status::kErrorMisaligned},
      {"misaligned cache", [](kvq::AttentionArguments& a) { a.cache = static_cast<const unsigned char*>(a.cache) + 8; },
       kvq::Status::kErrorMisaligned},
      {"Hq not a multiple of Hkv", [](kvq::AttentionArguments& a) { a.q_heads = 3; }, kvq::Status::kErrorInvalidArgument},
      {"zero q heads", [](kvq::AttentionArguments& a) { a.q_heads = 0; }, kvq::Status::kErrorInvalidArgument},
      {"negative num_q", [](kvq::AttentionArguments& a) { a.num_q = -1; }, kvq::Status::kErrorInvalidArgument},
      {"negative num_chunk", [](kvq::AttentionArguments& a) { a.num_chunk = -3; }, kvq::Status::kErrorInvalidArgument},
      {"batch mismatch", [](kvq::AttentionArguments& a) { a.batch = 1; }, kvq::Status::kErrorInvalidArgument},
      {"o dtype mismatch", [](kvq::AttentionArguments& a) { a.o.dtype = kvq::DType::kFloat16; },
       kvq::Status::kErrorInvalidArgument},
      {"k dtype mismatch", [](kvq::AttentionArguments& a) { a.k_chunk.dtype = kvq::DType::kFloat32; },
       kvq::Status::kErrorInvalidArgument},
      {"fp32 queries", [](kvq::AttentionArguments& a) { a.q.dtype = kvq::DType::kFloat32; }, kvq::Status::kErrorNotSupported},
      {"zero scale", [](kvq::AttentionArguments& a) { a.scale = 0.0f; }, kvq::Status::kErrorInvalidArgument},
      {"NaN scale", [](kvq::AttentionArguments& a) { a.scale = std::numeric_limits<float>::quiet_NaN(); },
       kvq::Status::kErrorInvalidArgument},
      {"max_cache_length past capacity", [](kvq::AttentionArguments& a) { a.max_cache_length = 65; },
       kvq::Status::kErrorInvalidArgument},
      {"negative splits", [](kvq::AttentionArguments& a) { a.splits = -1; }, kvq::Status::kErrorInvalidArgument},
      {"splits past the most", [](kvq::AttentionArguments& a) { a.splits = kvq::kMaxAttentionSplits + 1; },
       kvq::Status::kErrorInvalidArgument},
  };
  for (const Bad& b : bad) {
    INFO(b.what);
    kvq::AttentionArguments a = f.a;
    b.edit(a);
    f.poison();
    CHECK(kvq::AttentionPlan<L, kvq::Correction::kTaylor2>::can_implement(f.layout, a) == b.expected);
    CHECK(kvq::attention<kvq::Correction::kTaylor2>(f.layout, a, kvq::test::test_stream()) == b.expected);
    KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(f.untouched());
  }
  // Exact needs PerChannel keys.
  CHECK(kvq::AttentionPlan<L, kvq::Correction::kExact>::can_implement(f.layout, f.a) == kvq::Status::kErrorNotSupported);
  // A tail dtype other than the inputs' (PerChannel keys keep a tail): the same Status as
  // quantize_append gives.
  using Lpc = kvq::variants::Int2Pc32D128;
  Lpc lpc;
  REQUIRE(Lpc::make({2, 2, 64, kvq::DType::kFloat16}, &lpc) == kvq::Status::kSuccess);
  CHECK(kvq::AttentionPlan<Lpc, kvq::Correction::kTaylor2>::can_implement(lpc, f.a) == kvq::Status::kErrorInvalidArgument);
}

TEST_CASE("attention with nothing to do succeeds without writing", "[attention][gpu][api]") {
  ApiFixture f;
  f.poison();
  kvq::AttentionArguments a = f.a;
  a.num_q = 0;
  CHECK(kvq::attention<kvq::Correction::kNone>(f.layout, a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  // Every q length 0: the kernel runs and writes nothing.
  kvq::test::DeviceBuffer<std::int32_t> zeros(std::vector<std::int32_t>{0, 0});
  a = f.a;
  a.q_lengths = zeros.get();
  CHECK(kvq::attention<kvq::Correction::kNone>(f.layout, a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  CHECK(f.untouched());
}

TEST_CASE("runtime dispatch runs the listed variants and refuses others", "[attention][gpu][api]") {
  ApiFixture f;
  using List = kvq::TypeList<kvq::AttentionVariant<L, kvq::Correction::kNone>, kvq::AttentionVariant<L, kvq::Correction::kTaylor2>>;
  const kvq::CacheVariant cv = kvq::variant_of<L>();
  f.poison();
  REQUIRE(kvq::attention(List{}, cv, kvq::Correction::kTaylor2, f.layout.shape, f.a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  const auto via_dispatch = f.o.download();
  f.poison();
  REQUIRE(kvq::attention<kvq::Correction::kTaylor2>(f.layout, f.a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  CHECK(f.o.download() == via_dispatch);

  f.poison();
  CHECK(kvq::attention(List{}, cv, kvq::Correction::kTaylor4, f.layout.shape, f.a, kvq::test::test_stream()) == kvq::Status::kErrorNotSupported);
  CHECK(kvq::attention(List{}, kvq::variant_of<kvq::variants::Int4Pt128D128>(), kvq::Correction::kTaylor2, f.layout.shape, f.a,
                       kvq::test::test_stream()) == kvq::Status::kErrorNotSupported);
  kvq::CacheVariant other = cv;
  other.head_dim = 64;
  CHECK(kvq::attention(List{}, other, kvq::Correction::kNone, f.layout.shape, f.a, kvq::test::test_stream()) == kvq::Status::kErrorNotSupported);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  CHECK(f.untouched());
}

namespace {
template <class... Ts>
constexpr int count(kvq::TypeList<Ts...>) {
  return static_cast<int>(sizeof...(Ts));
}
}  // namespace
static_assert(count(kvq::variants::DefaultAttentionVariants{}) == 17, "the default variant list has 17 pairs");

namespace {
bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  KVQ_TEST_CUDA(cudaGetDevice(&dev));
  KVQ_TEST_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  KVQ_TEST_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major == 9 && minor == 0;
}
}  // namespace

TEST_CASE("a plan refuses runs that change what it was initialized with", "[attention][gpu][api]") {
  ApiFixture f;
  using Plan = kvq::AttentionPlan<L, kvq::Correction::kTaylor2>;
  Plan uninitialized;
  CHECK_FALSE(uninitialized.initialized());
  CHECK(uninitialized.run(f.a, kvq::test::test_stream()) == kvq::Status::kErrorInvalidArgument);
  Plan plan;
  REQUIRE(plan.initialize(f.layout, f.a) == kvq::Status::kSuccess);
  REQUIRE(plan.initialized());
  f.poison();
  kvq::AttentionArguments a = f.a;
  a.q_heads = 2;  // valid for the layout, but not the planned value
  CHECK(plan.run(a, kvq::test::test_stream()) == kvq::Status::kErrorInvalidArgument);
  a = f.a;
  a.mask = kvq::Mask::kCausalLastSegment;
  CHECK(plan.run(a, kvq::test::test_stream()) == kvq::Status::kErrorInvalidArgument);
  a = f.a;
  a.q.dtype = a.k_chunk.dtype = a.v_chunk.dtype = a.o.dtype = kvq::DType::kFloat16;
  CHECK(plan.run(a, kvq::test::test_stream()) == kvq::Status::kErrorInvalidArgument);
  a = f.a;
  a.splits = 3;
  CHECK(plan.run(a, kvq::test::test_stream()) == kvq::Status::kErrorInvalidArgument);
  a = f.a;
  a.scale = -1.0f;  // per-call arguments are still checked
  CHECK(plan.run(a, kvq::test::test_stream()) == kvq::Status::kErrorInvalidArgument);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  CHECK(f.untouched());
  // What may change per call: pointers, lengths, num_q, num_chunk, scale.
  a = f.a;
  a.num_q = 5;
  a.num_chunk = 3;
  a.scale = 0.25f;
  REQUIRE(plan.run(a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  CHECK_FALSE(f.untouched());
}

TEST_CASE("kernel selection: the Hopper kernel exactly where it implements the variant and the device is 9.0",
          "[attention][gpu][api]") {
  ApiFixture f;
  const bool sm90 = device_is_sm90();
  INFO("device is compute 9.0: " << sm90);
  // The fixture's 8 queries take the short-query kernel where AutoConfig selects it
  // (kernels::decode::kAutoSelect); these checks are about the chunk kernels, so they plan
  // 17 query rows (initialize reads no buffer).
  const kvq::AttentionPath chunk_path = sm90 ? kvq::AttentionPath::kSm90 : kvq::AttentionPath::kSm80;
  kvq::Status s = kvq::Status::kErrorCudaRuntime;
  CHECK(kvq::attention_path<kvq::Correction::kTaylor2>(f.layout, f.a, &s) ==
        (kvq::kernels::decode::kAutoSelect ? kvq::AttentionPath::kShort : chunk_path));
  CHECK(s == kvq::Status::kSuccess);
  f.a.num_q = 17;
  // PerToken 2-bit keys: the Hopper kernel implements them.
  s = kvq::Status::kErrorCudaRuntime;
  CHECK(kvq::attention_path<kvq::Correction::kTaylor2>(f.layout, f.a, &s) ==
        (sm90 ? kvq::AttentionPath::kSm90 : kvq::AttentionPath::kSm80));
  CHECK(s == kvq::Status::kSuccess);
  // PerChannel keys: the mma.sync kernel on every device.
  using Lpc = kvq::variants::Int2Pc32D128;
  Lpc lpc;
  REQUIRE(Lpc::make({2, 2, 64, kvq::DType::kBFloat16}, &lpc) == kvq::Status::kSuccess);
  kvq::AttentionArguments a = f.a;
  a.cache = nullptr;
  a.cache_lengths = nullptr;
  CHECK(kvq::attention_path<kvq::Correction::kNone>(lpc, a, &s) == kvq::AttentionPath::kSm80);
  CHECK(s == kvq::Status::kSuccess);
  // Forcing a configuration: the Hopper kernel is refused off 9.0 devices, the mma.sync kernel runs anywhere.
  kvq::AttentionPlan<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config192> hopper;
  CHECK(hopper.initialize(f.layout, f.a) == (sm90 ? kvq::Status::kSuccess : kvq::Status::kErrorNotSupported));
  kvq::AttentionPlan<L, kvq::Correction::kTaylor2, kvq::kernels::sm80::DefaultTileConfig<128>> mma;
  REQUIRE(mma.initialize(f.layout, f.a) == kvq::Status::kSuccess);
  CHECK(mma.path() == kvq::AttentionPath::kSm80);
  // A variant no kernel of the configuration implements.
  CHECK(kvq::AttentionPlan<Lpc, kvq::Correction::kNone, kvq::kernels::sm90::Config128>::can_implement(lpc, a) ==
        kvq::Status::kErrorNotSupported);
}

TEST_CASE("a caller's pending CUDA error survives kvq calls", "[attention][gpu][api]") {
  ApiFixture f;
  // The kernel's shared-memory limit is raised by the first initialize on this device (the
  // runtime's cudaFuncSetAttribute resets the last error, README.md says so); after that
  // no kvq call touches the caller's pending error.
  {
    kvq::AttentionPlan<L, kvq::Correction::kTaylor2> first;
    REQUIRE(first.initialize(f.layout, f.a) == kvq::Status::kSuccess);
  }
  // A non-sticky error of the caller's: an allocation that cannot succeed.
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, std::size_t{1} << 62) == cudaErrorMemoryAllocation);
  REQUIRE(kvq::attention<kvq::Correction::kTaylor2>(f.layout, f.a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);  // still there for the caller
  CHECK(cudaGetLastError() == cudaSuccess);
}

namespace {
/// Random bf16 [batch, n, heads, kD] on the host, uploaded.
kvq::test::DeviceBuffer<std::uint16_t> random_bf16(std::size_t elems, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<std::uint16_t> h(elems);
  for (auto& x : h) x = kvq::math::float_to_bf16_bits_rn(nd(rng));
  return kvq::test::DeviceBuffer<std::uint16_t>(h);
}
}  // namespace

TEST_CASE("quantize-append + attention captured in a CUDA graph replay as direct calls", "[attention][gpu][api][graph]") {
  constexpr int kB = 2, kHkv = 2, kHq = 4, kN = 40, kReplays = 4;
  L l;
  REQUIRE(L::make({kB, kHkv, 512, kvq::DType::kBFloat16}, &l) == kvq::Status::kSuccess);
  std::mt19937_64 rng(Catch::rngSeed() + 4242);
  auto q = random_bf16(std::size_t{kB} * kN * kHq * kD, rng);
  auto k = random_bf16(std::size_t{kB} * kN * kHkv * kD, rng);
  auto v = random_bf16(std::size_t{kB} * kN * kHkv * kD, rng);

  struct Run {
    kvq::test::DeviceBuffer<unsigned char> cache;
    kvq::test::DeviceBuffer<std::int32_t> lengths;
    kvq::test::DeviceBuffer<std::uint16_t> o;
    kvq::AppendArguments app;
    kvq::AttentionArguments att;
  };
  auto make_run = [&](Run& r) {
    r.cache = kvq::test::DeviceBuffer<unsigned char>(static_cast<std::size_t>(l.bytes()));
    r.cache.fill_bytes(0);
    r.lengths = kvq::test::DeviceBuffer<std::int32_t>(std::vector<std::int32_t>{0, 3});
    r.o = kvq::test::DeviceBuffer<std::uint16_t>(std::size_t{kB} * kN * kHq * kD);
    r.app.cache = r.cache.get();
    r.app.k = kvq::Tensor4::contiguous(k.get(), kvq::DType::kBFloat16, kN, kHkv, kD);
    r.app.v = kvq::Tensor4::contiguous(v.get(), kvq::DType::kBFloat16, kN, kHkv, kD);
    r.app.num_tokens = kN;
    r.app.lengths = r.lengths.get();
    r.att.cache = r.cache.get();
    r.att.batch = kB;
    r.att.q_heads = kHq;
    r.att.num_q = kN;
    r.att.num_chunk = kN;
    r.att.q = kvq::Tensor4::contiguous(q.get(), kvq::DType::kBFloat16, kN, kHq, kD);
    r.att.k_chunk = r.app.k;
    r.att.v_chunk = r.app.v;
    r.att.o = kvq::Tensor4::contiguous(r.o.get(), kvq::DType::kBFloat16, kN, kHq, kD);
    r.att.cache_lengths = r.lengths.get();
    r.att.scale = 0.088f;
  };
  Run direct, graphed;
  make_run(direct);
  make_run(graphed);
  cudaStream_t s = kvq::test::test_stream();

  // Direct calls: append then attend, kReplays times (the cache grows by kN each time).
  std::vector<std::vector<std::uint16_t>> want;
  for (int r = 0; r < kReplays; ++r) {
    REQUIRE(kvq::quantize_append(l, direct.app, s) == kvq::Status::kSuccess);
    REQUIRE(kvq::attention<kvq::Correction::kTaylor2>(l, direct.att, s) == kvq::Status::kSuccess);
    KVQ_TEST_CUDA(cudaStreamSynchronize(s));
    want.push_back(direct.o.download());
  }

  // The same two operations captured once from prepared plans, replayed kReplays times.
  kvq::AppendPlan<L> append_plan;
  kvq::AttentionPlan<L, kvq::Correction::kTaylor2> attention_plan;
  REQUIRE(append_plan.initialize(l, graphed.app) == kvq::Status::kSuccess);
  REQUIRE(attention_plan.initialize(l, graphed.att) == kvq::Status::kSuccess);
  cudaGraph_t graph = nullptr;
  KVQ_TEST_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const kvq::Status s1 = append_plan.run(graphed.app, s);
  const kvq::Status s2 = attention_plan.run(graphed.att, s);
  KVQ_TEST_CUDA(cudaStreamEndCapture(s, &graph));
  REQUIRE(s1 == kvq::Status::kSuccess);
  REQUIRE(s2 == kvq::Status::kSuccess);
  cudaGraphExec_t exec = nullptr;
  KVQ_TEST_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int r = 0; r < kReplays; ++r) {
    INFO("replay " << r);
    KVQ_TEST_CUDA(cudaGraphLaunch(exec, s));
    KVQ_TEST_CUDA(cudaStreamSynchronize(s));
    CHECK(graphed.o.download() == want[static_cast<std::size_t>(r)]);
  }
  CHECK(graphed.lengths.download() == direct.lengths.download());
  CHECK(graphed.cache.download() == direct.cache.download());
  KVQ_TEST_CUDA(cudaGraphExecDestroy(exec));
  KVQ_TEST_CUDA(cudaGraphDestroy(graph));
}

TEST_CASE("rotated caches are accepted by both GPU operations", "[attention][gpu][api]") {
  using Lr = kvq::variants::Int2Pt128D128Rot;
  STATIC_REQUIRE(kvq::AttentionPlan<Lr, kvq::Correction::kTaylor2>::kImplemented);
  ApiFixture f;
  Lr lr;
  REQUIRE(Lr::make(f.layout.shape, &lr) == kvq::Status::kSuccess);
  CHECK(kvq::AttentionPlan<Lr, kvq::Correction::kTaylor2>::can_implement(lr, f.a) == kvq::Status::kSuccess);
  kvq::AppendArguments app;
  app.cache = f.cache.get();
  app.k = f.a.k_chunk;
  app.v = f.a.v_chunk;
  app.num_tokens = 8;
  app.lengths = f.lengths.get();
  CHECK(kvq::AppendPlan<Lr>::can_implement(lr, app) == kvq::Status::kSuccess);
}
