// Float32 activations [batch, tokens, heads, D] for the CPU reference tests, with kvq::Tensor4
// views of a range of tokens (and heads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <kvq/spec/tensor.hpp>
#include <kvq/spec/types.hpp>

namespace kvq::test {

template <int D>
struct FloatActivations {
  int b, n, h;
  std::vector<float> x;
  FloatActivations(int b_, int n_, int h_) : b(b_), n(n_), h(h_), x(static_cast<std::size_t>(b_) * n_ * h_ * D) {}
  /// Tokens from `first_token`, heads from `first_head` (the batch and token strides of the whole tensor).
  Tensor4 view(int first_token = 0, int first_head = 0) {
    return Tensor4{x.data() + (static_cast<std::size_t>(first_token) * h + first_head) * D, DType::kFloat32,
                   std::int64_t{n} * h * D, std::int64_t{h} * D, D};
  }
};

}  // namespace kvq::test
