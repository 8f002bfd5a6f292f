// Kernel launches through cudaLaunchKernelEx: the launch's own error is returned (and
// kept, see error.cuh) instead of being read back with cudaGetLastError.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kvq/device/error.cuh"
#include "kvq/status.hpp"

namespace kvq::device {

struct LaunchShape {
  dim3 grid;
  dim3 block;
  int smem_bytes = 0;
  /// Programmatic dependent launch: the kernel may start before the previous kernel of the
  /// stream has finished (it waits with griddepcontrol.wait where it must); sm_90+ only.
  bool programmatic = false;
};

template <class... Params, class... Args>
Status launch(void (*kernel)(Params...), const LaunchShape& shape, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = shape.grid;
  cfg.blockDim = shape.block;
  cfg.dynamicSmemBytes = static_cast<size_t>(shape.smem_bytes);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = shape.programmatic ? 1 : 0;
  return check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace kvq::device
