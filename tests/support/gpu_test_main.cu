// Catch2 main for GPU test binaries: with no CUDA device it prints why and exits 77,
// which CTest reports as skipped (SKIP_RETURN_CODE 77), never as passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cuda_runtime.h>

int main(int argc, char** argv) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n", e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
