// The CUDA error behind a kvq Status. kvq never calls cudaGetLastError (it would clear an
// error the caller has pending); it judges each runtime call by its own return value and
// keeps the cudaError_t of the last failure, per host thread, for the caller to read.
#pragma once

#include <cuda_runtime.h>

#include "kvq/status.hpp"

namespace kvq {

namespace device::detail {
inline cudaError_t& last_error_slot() noexcept {
  thread_local cudaError_t e = cudaSuccess;
  return e;
}
}  // namespace device::detail

/// The cudaError_t behind the last kErrorCudaRuntime or kErrorNoDevice that a kvq call
/// returned on this host thread (cudaSuccess if none has).
inline cudaError_t last_cuda_error() noexcept { return device::detail::last_error_slot(); }

namespace device {

/// Records a failed runtime call and maps it to its Status.
inline Status fail(cudaError_t e) noexcept {
  detail::last_error_slot() = e;
  return e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? Status::kErrorNoDevice : Status::kErrorCudaRuntime;
}

/// kSuccess for cudaSuccess, else fail(e).
inline Status check(cudaError_t e) noexcept { return e == cudaSuccess ? Status::kSuccess : fail(e); }

}  // namespace device
}  // namespace kvq
