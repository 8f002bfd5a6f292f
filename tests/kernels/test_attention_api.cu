// Host API of the fused attention: argument checks refuse before any launch (nothing is
// written, no CUDA error is left behind), the runtime dispatch runs listed variants only,
// and empty problems succeed. Linked with the int2_pt128 instantiations.
#include "kernels/test_attention_common.cuh"

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
  REQUIRE(kvq::can_implement<L, kvq::Correction::kTaylor2>(f.layout, f.a) == kvq::Status::kSuccess);
  f.poison();
  REQUIRE(kvq::attention<L, kvq::Correction::kTaylor2>(f.layout, f.a, nullptr) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
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
  };
  for (const Bad& b : bad) {
    INFO(b.what);
    kvq::AttentionArguments a = f.a;
    b.edit(a);
    f.poison();
    CHECK(kvq::can_implement<L, kvq::Correction::kTaylor2>(f.layout, a) == b.expected);
    CHECK(kvq::attention<L, kvq::Correction::kTaylor2>(f.layout, a, nullptr) == b.expected);
    KVQ_TEST_CUDA(cudaDeviceSynchronize());
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(f.untouched());
  }
  // Exact needs PerChannel keys.
  CHECK(kvq::can_implement<L, kvq::Correction::kExact>(f.layout, f.a) == kvq::Status::kErrorNotSupported);
  // A tail dtype other than the inputs' (PerChannel keys keep a tail).
  using Lpc = kvq::variants::Int2Pc32D128;
  Lpc lpc;
  REQUIRE(Lpc::make({2, 2, 64, kvq::DType::kFloat16}, &lpc) == kvq::Status::kSuccess);
  CHECK(kvq::can_implement<Lpc, kvq::Correction::kTaylor2>(lpc, f.a) == kvq::Status::kErrorNotSupported);
}

TEST_CASE("attention with nothing to do succeeds without writing", "[attention][gpu][api]") {
  ApiFixture f;
  f.poison();
  kvq::AttentionArguments a = f.a;
  a.num_q = 0;
  CHECK(kvq::attention<L, kvq::Correction::kNone>(f.layout, a, nullptr) == kvq::Status::kSuccess);
  // Every q length 0: the kernel runs and writes nothing.
  kvq::test::DeviceBuffer<std::int32_t> zeros(std::vector<std::int32_t>{0, 0});
  a = f.a;
  a.q_lengths = zeros.get();
  CHECK(kvq::attention<L, kvq::Correction::kNone>(f.layout, a, nullptr) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
  CHECK(f.untouched());
}

TEST_CASE("runtime dispatch runs the listed variants and refuses others", "[attention][gpu][api]") {
  ApiFixture f;
  using List = kvq::TypeList<kvq::AttentionVariant<L, kvq::Correction::kNone>, kvq::AttentionVariant<L, kvq::Correction::kTaylor2>>;
  const kvq::CacheVariant cv = kvq::variant_of<L>();
  f.poison();
  REQUIRE(kvq::attention(List{}, cv, kvq::Correction::kTaylor2, f.layout.shape, f.a, nullptr) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
  const auto via_dispatch = f.o.download();
  f.poison();
  REQUIRE(kvq::attention<L, kvq::Correction::kTaylor2>(f.layout, f.a, nullptr) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
  CHECK(f.o.download() == via_dispatch);

  f.poison();
  CHECK(kvq::attention(List{}, cv, kvq::Correction::kTaylor4, f.layout.shape, f.a, nullptr) == kvq::Status::kErrorNotSupported);
  CHECK(kvq::attention(List{}, kvq::variant_of<kvq::variants::Int4Pt128D128>(), kvq::Correction::kTaylor2, f.layout.shape, f.a,
                       nullptr) == kvq::Status::kErrorNotSupported);
  kvq::CacheVariant other = cv;
  other.head_dim = 64;
  CHECK(kvq::attention(List{}, other, kvq::Correction::kNone, f.layout.shape, f.a, nullptr) == kvq::Status::kErrorNotSupported);
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
  CHECK(f.untouched());
}

namespace {
template <class... Ts>
constexpr int count(kvq::TypeList<Ts...>) {
  return static_cast<int>(sizeof...(Ts));
}
}  // namespace
static_assert(count(kvq::variants::DefaultAttentionVariants{}) == 17, "the default variant list has 17 pairs");
