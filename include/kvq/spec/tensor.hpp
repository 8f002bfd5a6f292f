// Strided views of the [batch, tokens, heads, head_dim] activations that the
// reference and the kernels read and write (the layout of PyTorch, FlashAttention
// and FlashInfer). Strides are in elements; the head_dim stride is 1.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/spec/types.hpp"

namespace kvq {

struct Tensor4 {
  void* data = nullptr;
  DType dtype = DType::kBFloat16;
  std::int64_t batch_stride = 0;
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;

  KVQ_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t t, std::int64_t h, std::int64_t c) const {
    return b * batch_stride + t * token_stride + h * head_stride + c;
  }

  /// A dense tensor of shape [batch, tokens, heads, head_dim].
  static Tensor4 contiguous(void* data, DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim) {
    return {data, dtype, tokens * heads * head_dim, heads * head_dim, head_dim};
  }
};

/// Reads element i of a buffer of the given dtype as float (exact for every dtype).
KVQ_HOST_DEVICE float load_as_float(const void* p, DType t, std::int64_t i) {
  switch (t) {
    case DType::kFloat16: return math::half_bits_to_float(static_cast<const std::uint16_t*>(p)[i]);
    case DType::kBFloat16: return math::bf16_bits_to_float(static_cast<const std::uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

/// Writes x (rounded to nearest even) as element i of a buffer of the given dtype.
KVQ_HOST_DEVICE void store_from_float(void* p, DType t, std::int64_t i, float x) {
  switch (t) {
    case DType::kFloat16: static_cast<std::uint16_t*>(p)[i] = math::float_to_half_bits_rn(x); break;
    case DType::kBFloat16: static_cast<std::uint16_t*>(p)[i] = math::float_to_bf16_bits_rn(x); break;
    default: static_cast<float*>(p)[i] = x; break;
  }
}

}  // namespace kvq
