// What the launch code needs to know of a device, queried once per plan.
#pragma once

#include <cuda_runtime.h>

#include "kvq/device/error.cuh"
#include "kvq/status.hpp"

namespace kvq::device {

struct Properties {
  int device = -1;
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  int smem_optin = 0;  ///< opt-in shared memory per block, bytes

  bool is_sm90() const { return cc_major == 9 && cc_minor == 0; }

  /// The current device's properties (kErrorNoDevice where there is none).
  static Status query(Properties* out) {
    Properties p;
    Status s = check(cudaGetDevice(&p.device));
    if (s != Status::kSuccess) return s;
    if ((s = check(cudaDeviceGetAttribute(&p.cc_major, cudaDevAttrComputeCapabilityMajor, p.device))) != Status::kSuccess ||
        (s = check(cudaDeviceGetAttribute(&p.cc_minor, cudaDevAttrComputeCapabilityMinor, p.device))) != Status::kSuccess ||
        (s = check(cudaDeviceGetAttribute(&p.sm_count, cudaDevAttrMultiProcessorCount, p.device))) != Status::kSuccess ||
        (s = check(cudaDeviceGetAttribute(&p.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device))) !=
            Status::kSuccess)
      return s;
    *out = p;
    return Status::kSuccess;
  }
};

}  // namespace kvq::device
