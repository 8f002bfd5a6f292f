// Catch2 main for GPU test binaries. What a run needs is read from its test spec:
//   "[cpu]"   host-only cases: run on any machine;
//   "[sm90]"  Hopper cases: need a compute capability 9.0 device;
//   anything else needs a CUDA device.
// Where the need is not met it prints why and exits 77, which CTest reports as skipped
// (SKIP_RETURN_CODE 77), never as passed. A spec that matches no case fails.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <cuda_runtime.h>

int main(int argc, char** argv) {
  bool cpu_only = false, sm90 = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "[cpu]") == 0) cpu_only = true;
    if (std::strstr(argv[i], "[sm90]") != nullptr && std::strstr(argv[i], "~[sm90]") == nullptr) sm90 = true;
  }
  if (!cpu_only) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      std::printf("SKIPPED: no CUDA device (%s)\n", e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
      return 77;
    }
    if (sm90) {
      int dev = 0, major = 0, minor = 0;
      if (cudaGetDevice(&dev) != cudaSuccess ||
          cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
          cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
        std::printf("SKIPPED: cannot read the device's compute capability\n");
        return 77;
      }
      if (major != 9 || minor != 0) {
        std::printf("SKIPPED: the [sm90] cases need a compute capability 9.0 device (this one is %d.%d)\n", major, minor);
        return 77;
      }
    }
  }
  return Catch::Session().run(argc, argv);
}
