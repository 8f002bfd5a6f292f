// Tests of kvq/spec/types.hpp, kvq/spec/tensor.hpp and kvq/status.hpp: sizes and
// names of the enumerations, strided tensor views, typed element access.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <kvq/spec/tensor.hpp>
#include <kvq/spec/types.hpp>
#include <kvq/status.hpp>

using kvq::Correction;
using kvq::DType;
using kvq::Granularity;
using kvq::Mask;
using kvq::ScaleType;
using kvq::Status;

TEST_CASE("element and metadata types have their storage sizes", "[quant][cpu]") {
  STATIC_REQUIRE(kvq::dtype_size(DType::kFloat16) == 2);
  STATIC_REQUIRE(kvq::dtype_size(DType::kBFloat16) == 2);
  STATIC_REQUIRE(kvq::dtype_size(DType::kFloat32) == 4);
  STATIC_REQUIRE(kvq::scale_type_size(ScaleType::kFloat16) == 2);
  STATIC_REQUIRE(kvq::scale_type_size(ScaleType::kBFloat16) == 2);
  STATIC_REQUIRE(kvq::scale_type_size(ScaleType::kFloat32) == 4);
}

TEST_CASE("every enumerator has a distinct short name", "[quant][cpu]") {
  CHECK(std::string(kvq::to_string(DType::kFloat16)) == "fp16");
  CHECK(std::string(kvq::to_string(DType::kBFloat16)) == "bf16");
  CHECK(std::string(kvq::to_string(DType::kFloat32)) == "fp32");
  CHECK(std::string(kvq::to_string(ScaleType::kBFloat16)) == "bf16");
  CHECK(std::string(kvq::to_string(Granularity::kPerToken)) == "per_token");
  CHECK(std::string(kvq::to_string(Granularity::kPerChannel)) == "per_channel");
  CHECK(std::string(kvq::to_string(kvq::Rotation::kNone)) == "none");
  CHECK(std::string(kvq::to_string(kvq::Rotation::kHadamard)) == "hadamard");
  CHECK(std::string(kvq::to_string(Mask::kNone)) == "none");
  CHECK(std::string(kvq::to_string(Mask::kCausalLastSegment)) == "causal_last_segment");
  std::set<std::string> modes;
  for (Correction c : {Correction::kNone, Correction::kTaylor2, Correction::kTaylor4, Correction::kExact})
    modes.insert(kvq::to_string(c));
  CHECK(modes == std::set<std::string>{"none", "taylor2", "taylor4", "exact"});
}

TEST_CASE("every status has a distinct description and success is zero", "[cpu]") {
  STATIC_REQUIRE(static_cast<int>(Status::kSuccess) == 0);
  std::set<std::string> names;
  const Status all[] = {Status::kSuccess,          Status::kErrorInvalidArgument, Status::kErrorMisaligned,
                        Status::kErrorCapacityExceeded, Status::kErrorNotSupported, Status::kErrorNoDevice,
                        Status::kErrorCudaRuntime};
  for (Status s : all) {
    const char* n = kvq::to_string(s);
    REQUIRE(n != nullptr);
    REQUIRE(std::string(n).size() > 0);
    names.insert(n);
  }
  CHECK(names.size() == sizeof(all) / sizeof(all[0]));
  CHECK(std::string(kvq::to_string(Status::kSuccess)) == "success");
}

TEST_CASE("a contiguous Tensor4 has [batch, tokens, heads, head_dim] strides", "[layout][cpu]") {
  float buf[1];
  const kvq::Tensor4 t = kvq::Tensor4::contiguous(buf, DType::kFloat32, 7, 3, 64);
  CHECK(t.data == buf);
  CHECK(t.dtype == DType::kFloat32);
  CHECK(t.batch_stride == 7 * 3 * 64);
  CHECK(t.token_stride == 3 * 64);
  CHECK(t.head_stride == 64);
  CHECK(t.offset(0, 0, 0, 0) == 0);
  CHECK(t.offset(1, 2, 1, 5) == 1 * 1344 + 2 * 192 + 64 + 5);
  // 64-bit offsets.
  kvq::Tensor4 big{nullptr, DType::kBFloat16, std::int64_t{1} << 33, std::int64_t{1} << 20, 128};
  CHECK(big.offset(3, 5, 2, 1) == 3 * (std::int64_t{1} << 33) + 5 * (std::int64_t{1} << 20) + 256 + 1);
}

TEST_CASE("load_as_float and store_from_float read and write each dtype", "[quant][cpu]") {
  std::uint16_t h[3] = {0x3c00u, 0xc000u, 0x7bffu};  // 1, -2, 65504 in fp16
  std::uint16_t b[3] = {0x3f80u, 0xc040u, 0x0001u};  // 1, -3, the smallest bf16 subnormal
  float f[3] = {0.1f, -7.5f, 1e30f};
  CHECK(kvq::load_as_float(h, DType::kFloat16, 0) == 1.0f);
  CHECK(kvq::load_as_float(h, DType::kFloat16, 1) == -2.0f);
  CHECK(kvq::load_as_float(h, DType::kFloat16, 2) == 65504.0f);
  CHECK(kvq::load_as_float(b, DType::kBFloat16, 0) == 1.0f);
  CHECK(kvq::load_as_float(b, DType::kBFloat16, 1) == -3.0f);
  CHECK(kvq::load_as_float(b, DType::kBFloat16, 2) == std::ldexp(1.0f, -133));
  CHECK(kvq::load_as_float(f, DType::kFloat32, 1) == -7.5f);
  CHECK(kvq::load_as_float(f, DType::kFloat32, 2) == 1e30f);

  kvq::store_from_float(h, DType::kFloat16, 1, 0.1f);  // rounds to nearest even
  CHECK(h[1] == 0x2e66u);
  CHECK(h[0] == 0x3c00u);  // neighbours untouched
  CHECK(h[2] == 0x7bffu);
  kvq::store_from_float(b, DType::kBFloat16, 0, 0.1f);
  CHECK(b[0] == 0x3dcdu);
  CHECK(b[1] == 0xc040u);
  kvq::store_from_float(f, DType::kFloat32, 0, 0.3f);
  CHECK(f[0] == 0.3f);
  CHECK(f[1] == -7.5f);
  kvq::store_from_float(h, DType::kFloat16, 2, 1e6f);  // overflow: +inf
  CHECK(h[2] == 0x7c00u);
  kvq::store_from_float(b, DType::kBFloat16, 2, std::nanf(""));
  CHECK(std::isnan(kvq::load_as_float(b, DType::kBFloat16, 2)));
}
