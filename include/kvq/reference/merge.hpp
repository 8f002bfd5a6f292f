// CPU reference of merging attention states: partial results (O_p, LSE_p) of the same
// queries over disjoint key sets combine into the result over their union,
//
//   LSE = log Σ_p exp(LSE_p),   O = Σ_p exp(LSE_p − LSE) · O_p,
//
// (LSE in natural log, as kvq's attention writes it). A part with LSE_p = −inf (it saw no
// key) weighs nothing; a row whose parts are all −inf gets O = 0 and LSE = −inf (kvq's
// convention for a row that sees no key); a NaN LSE_p makes the row's O and LSE NaN.
// float64 arithmetic; the oracle for kvq::merge_states.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kvq/spec/tensor.hpp"
#include "kvq/status.hpp"

namespace kvq::reference {

/// Host arguments of a merge: num_parts parts, each an output [batch, num_q, heads, dim]
/// (o_parts + p·o_part_stride elements) and an LSE [batch, heads, num_q] (lse_parts +
/// p·lse_part_stride); the merged O (double, dense [batch, num_q, heads, dim]) and LSE.
struct MergeArgs {
  int num_parts = 0;
  int batch = 0;
  int heads = 0;
  std::int64_t num_q = 0;
  int dim = 0;
  Tensor4 o_parts;
  std::int64_t o_part_stride = 0;
  const float* lse_parts = nullptr;
  std::int64_t lse_part_stride = 0;
  double* out = nullptr;  ///< [batch, num_q, heads, dim]
  double* lse = nullptr;  ///< optional [batch, heads, num_q]
};

[[nodiscard]] inline Status merge_states(const MergeArgs& a) {
  if (a.num_parts <= 0 || a.batch < 0 || a.heads < 0 || a.num_q < 0 || a.dim <= 0) return Status::kErrorInvalidArgument;
  if (a.out == nullptr || a.o_parts.data == nullptr || a.lse_parts == nullptr) return Status::kErrorInvalidArgument;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> w(static_cast<std::size_t>(a.num_parts));
  for (int b = 0; b < a.batch; ++b)
    for (std::int64_t i = 0; i < a.num_q; ++i)
      for (int h = 0; h < a.heads; ++h) {
        const std::int64_t row = (static_cast<std::int64_t>(b) * a.heads + h) * a.num_q + i;
        double m = -inf;
        bool nan = false;
        for (int p = 0; p < a.num_parts; ++p) {
          const double x = a.lse_parts[p * a.lse_part_stride + row];
          nan = nan || std::isnan(x);
          m = std::max(m, x);
        }
        double* o = a.out + ((static_cast<std::int64_t>(b) * a.num_q + i) * a.heads + h) * a.dim;
        double lse;
        if (nan) {
          for (int c = 0; c < a.dim; ++c) o[c] = std::numeric_limits<double>::quiet_NaN();
          lse = std::numeric_limits<double>::quiet_NaN();
        } else if (m == -inf) {
          for (int c = 0; c < a.dim; ++c) o[c] = 0.0;
          lse = -inf;
        } else {
          double sum = 0.0;
          for (int p = 0; p < a.num_parts; ++p) sum += (w[p] = std::exp(a.lse_parts[p * a.lse_part_stride + row] - m));
          for (int c = 0; c < a.dim; ++c) {
            double acc = 0.0;
            for (int p = 0; p < a.num_parts; ++p)
              if (w[p] > 0.0)
                acc += w[p] * load_as_float(a.o_parts.data, a.o_parts.dtype, p * a.o_part_stride + a.o_parts.offset(b, i, h, c));
            o[c] = acc / sum;
          }
          lse = m + std::log(sum);
        }
        if (a.lse != nullptr) a.lse[row] = lse;
      }
  return Status::kSuccess;
}

}  // namespace kvq::reference
