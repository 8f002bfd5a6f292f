// Host API of the merge of attention states: partial results (O_p, LSE_p) of the same
// queries over disjoint key sets (split-KV, chunked prefill, context parallelism across
// GPUs) combined into the result over their union (reference/merge.hpp defines it):
//
//   LSE = log Σ_p exp(LSE_p),   O = Σ_p exp(LSE_p − LSE) · O_p.
//
// A part with LSE_p = −inf (no key) weighs nothing and its O_p is not read; a row with
// every part −inf gets O = 0 and LSE = −inf; a NaN LSE_p makes the row NaN. The parts are
// kvq::attention outputs (or anything in that layout): O [batch, num_q, heads, head_dim]
// (bf16, fp16 or fp32, strided; part p at o_parts.data + p·o_part_stride elements) and
// LSE [batch, heads, num_q] float32 (part p at lse_parts + p·lse_part_stride). The merged
// O may be written over the memory of one of the parts (same strides): every row is read
// whole before it is written.
//
//   kvq::MergeArguments m;  // parts, output
//   kvq::Status s = kvq::merge_states(m, stream);
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "kvq/device/error.cuh"
#include "kvq/device/launch.cuh"
#include "kvq/kernels/merge/kernel.cuh"
#include "kvq/spec/tensor.hpp"
#include "kvq/status.hpp"

namespace kvq {

struct MergeArguments {
  int num_parts = 0;                  ///< >= 1
  int batch = 0;
  int heads = 0;                      ///< q heads
  std::int64_t num_q = 0;
  int head_dim = 0;                   ///< a multiple of 32 in [32, 512]
  Tensor4 o_parts;                    ///< part 0's output; bf16, fp16 or fp32, device
  std::int64_t o_part_stride = 0;     ///< elements from one part's output to the next
  const float* lse_parts = nullptr;   ///< part 0's LSE [batch, heads, num_q], device
  std::int64_t lse_part_stride = 0;   ///< elements from one part's LSE to the next
  Tensor4 o;                          ///< merged output [batch, num_q, heads, head_dim], device
  float* lse = nullptr;               ///< optional merged LSE [batch, heads, num_q], device
};

namespace detail::merge {

template <int D>
Status launch(const MergeArguments& a, cudaStream_t stream) {
  kernels::merge::Params p{a.o_parts, a.o_part_stride, a.lse_parts, a.lse_part_stride, a.o, a.lse,
                           a.num_parts, a.heads, a.num_q,
                           static_cast<std::int64_t>(a.batch) * a.num_q * a.heads};
  constexpr int kRowsPerBlock = kernels::merge::kWarpsPerBlock;
  const std::int64_t blocks = (p.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffff) return Status::kErrorNotSupported;
  device::LaunchShape shape;
  shape.grid = dim3(static_cast<unsigned>(blocks));
  shape.block = dim3(32 * kRowsPerBlock);
  return device::launch(&kernels::merge::merge_kernel<D>, shape, stream, p);
}

/// launch<32·k> for d = 32·k, k in [1, 16].
template <int... Ks>
Status launch_for(int d, const MergeArguments& a, cudaStream_t stream, std::integer_sequence<int, Ks...>) {
  Status s = Status::kErrorNotSupported;
  ((d == 32 * (Ks + 1) ? (s = launch<32 * (Ks + 1)>(a, stream), true) : false) || ...);
  return s;
}

}  // namespace detail::merge

/// The checks of merge_states that need no device (kSuccess when it would launch).
[[nodiscard]] inline Status merge_states_can_implement(const MergeArguments& a) {
  if (a.num_parts <= 0 || a.batch < 0 || a.heads < 0 || a.num_q < 0) return Status::kErrorInvalidArgument;
  if (a.head_dim < 32 || a.head_dim > 512 || a.head_dim % 32 != 0) return Status::kErrorNotSupported;
  const bool empty = a.batch == 0 || a.heads == 0 || a.num_q == 0;
  if (!empty && (a.o_parts.data == nullptr || a.lse_parts == nullptr || a.o.data == nullptr))
    return Status::kErrorInvalidArgument;
  if (a.o_part_stride < 0 || a.lse_part_stride < 0) return Status::kErrorInvalidArgument;
  for (const Tensor4* t : {&a.o_parts, &a.o})
    if (t->batch_stride < 0 || t->token_stride < 0 || t->head_stride < 0) return Status::kErrorInvalidArgument;
  const auto misaligned = [](const void* ptr, std::size_t n) { return reinterpret_cast<std::uintptr_t>(ptr) % n != 0; };
  if (misaligned(a.o_parts.data, dtype_size(a.o_parts.dtype)) || misaligned(a.o.data, dtype_size(a.o.dtype)) ||
      misaligned(a.lse_parts, 4) || misaligned(a.lse, 4))
    return Status::kErrorMisaligned;
  return Status::kSuccess;
}

/// Merges the parts on `stream` (one kernel launch; nothing when there is no row).
[[nodiscard]] inline Status merge_states(const MergeArguments& a, cudaStream_t stream) {
  const Status s = merge_states_can_implement(a);
  if (s != Status::kSuccess) return s;
  if (a.batch == 0 || a.heads == 0 || a.num_q == 0) return Status::kSuccess;
  return detail::merge::launch_for(a.head_dim, a, stream, std::make_integer_sequence<int, 16>{});
}

}  // namespace kvq
