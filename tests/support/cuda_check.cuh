// Throwing CUDA checks and device buffers for tests and benchmarks (never include/).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#define KVQ_TEST_CUDA(expr)                                                                                   \
  do {                                                                                                        \
    const cudaError_t kvq_err_ = (expr);                                                                      \
    if (kvq_err_ != cudaSuccess)                                                                              \
      throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(kvq_err_) + " at " + __FILE__ + \
                               ":" + std::to_string(__LINE__));                                               \
  } while (0)

namespace kvq::test {

/// An owning device allocation.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (n) KVQ_TEST_CUDA(cudaMalloc(&p_, n * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& h) : DeviceBuffer(h.size()) { upload(h); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = o.p_, n_ = o.n_;
      o.p_ = nullptr, o.n_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { if (p_) cudaFree(p_); }
  T* get() const { return p_; }
  std::size_t size() const { return n_; }
  /// Copies and waits: a pageable copy may still be in flight when cudaMemcpy returns, and
  /// the non-blocking stream the tests run on does not order itself after it.
  void upload(const std::vector<T>& h) {
    KVQ_TEST_CUDA(cudaMemcpy(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    KVQ_TEST_CUDA(cudaDeviceSynchronize());
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    if (n_) KVQ_TEST_CUDA(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  /// Fills and waits: the tests' kernels run on a non-blocking stream that does not order
  /// itself after the legacy stream's memset.
  void fill_bytes(int byte) {
    if (n_) KVQ_TEST_CUDA(cudaMemset(p_, byte, n_ * sizeof(T)));
    KVQ_TEST_CUDA(cudaDeviceSynchronize());
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

/// The stream the tests run kvq on: a non-blocking stream, never the legacy default stream.
inline cudaStream_t test_stream() {
  static cudaStream_t s = [] {
    cudaStream_t x = nullptr;
    KVQ_TEST_CUDA(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
    return x;
  }();
  return s;
}

}  // namespace kvq::test
