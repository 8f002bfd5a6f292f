// GPU test of kernels/common/rotation.cuh: the warp's rotation of a row has the bits of
// math::hadamard_rotate (the CPU transform the cache format is defined by), for head
// dims 32, 64 and 128, on rows with outliers, zeros, denormals and infinities.
#include <catch2/catch.hpp>

#include <kvq/kernels/common/rotation.cuh>
#include <kvq/math/rotation.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "support/cuda_check.cuh"

namespace {

template <int D>
__global__ void rotate_rows(float* rows, int n) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= n) return;  // whole warps leave together
  constexpr int E = D / 32;
  float x[E];
  for (int i = 0; i < E; ++i) x[i] = rows[row * D + lane * E + i];
  kvq::kernels::common::warp_hadamard_rotate<D>(x, lane);
  for (int i = 0; i < E; ++i) rows[row * D + lane * E + i] = x[i];
}

template <int D>
void check_bits() {
  constexpr int kRows = 1000;
  std::mt19937_64 rng(0x707 + D);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> in(static_cast<std::size_t>(kRows) * D);
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < D; ++c) {
      float x = nd(rng) * (c % 9 == 0 ? 40.0f : 1.0f) + (c % 13 == 0 ? 25.0f : 0.0f);
      if (r == 1) x = 0.0f;
      if (r == 2) x = (c % 2 ? 1.0f : -1.0f) * std::numeric_limits<float>::denorm_min() * static_cast<float>(c + 1);
      if (r == 3 && c == 5) x = std::numeric_limits<float>::infinity();
      if (r == 4) x = 1e30f * nd(rng);
      in[static_cast<std::size_t>(r) * D + c] = x;
    }
  std::vector<float> want = in;
  for (int r = 0; r < kRows; ++r) kvq::math::hadamard_rotate<D>(want.data() + static_cast<std::size_t>(r) * D);
  kvq::test::DeviceBuffer<float> d(in);
  rotate_rows<D><<<(kRows + 3) / 4, 128>>>(d.get(), kRows);
  KVQ_TEST_CUDA(cudaGetLastError());
  KVQ_TEST_CUDA(cudaDeviceSynchronize());
  const std::vector<float> got = d.download();
  int mismatches = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    std::uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b && !(std::isnan(got[i]) && std::isnan(want[i]))) ++mismatches;
  }
  INFO("D " << D);
  REQUIRE(mismatches == 0);
  // Not vacuous: the transform changed the rows.
  REQUIRE(std::memcmp(got.data(), in.data(), got.size() * sizeof(float)) != 0);
}

}  // namespace

TEST_CASE("the warp rotation has the bits of the CPU rotation", "[rotation][gpu][sanitize]") {
  check_bits<32>();
  check_bits<64>();
  check_bits<128>();
}
