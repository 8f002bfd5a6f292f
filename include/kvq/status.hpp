// Status codes returned by every host entry point. The library never throws,
// exits or prints: callers decide what an error means to them.
#pragma once

namespace kvq {

enum class Status {
  kSuccess = 0,
  kErrorInvalidArgument,   ///< A null pointer, a negative length, a bad stride.
  kErrorMisaligned,        ///< A pointer or stride does not have the alignment the kernel needs.
  kErrorCapacityExceeded,  ///< An append would write past the cache capacity.
  kErrorNotSupported,      ///< The variant (bits, group, granularity, mode, head dim, dtype) is not instantiated.
  kErrorNoDevice,          ///< No CUDA device is visible.
  kErrorCudaRuntime,       ///< A CUDA runtime call or a kernel launch failed.
};

/// A short, stable English description of a status, for logs and test failures.
constexpr const char* to_string(Status s) noexcept {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kErrorInvalidArgument: return "invalid argument";
    case Status::kErrorMisaligned: return "misaligned pointer or stride";
    case Status::kErrorCapacityExceeded: return "cache capacity exceeded";
    case Status::kErrorNotSupported: return "variant not supported";
    case Status::kErrorNoDevice: return "no CUDA device";
    case Status::kErrorCudaRuntime: return "CUDA runtime error";
  }
  return "unknown status";
}

}  // namespace kvq
