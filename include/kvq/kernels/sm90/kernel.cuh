// The Hopper (sm_90a) attention kernel: warp-specialised, warpgroup MMA.
//
// One CTA per (64 x G query rows, q head, batch entry), 1 + G warpgroups (G = 2 or 3,
// Config::kConsumerGroups): a producer warpgroup (sm90/producer.cuh) whose key and value
// halves copy and dequantize the packed tiles into 16-bit tiles in shared memory, and G
// consumer warpgroups of 64 query rows (sm90/consumer.cuh) that run the MMAs, the
// correction and the online softmax. Full/empty mbarriers per K and V buffer hand tiles
// from the producer to the consumers and back; setmaxnreg gives the consumers the
// registers the producer does not need. The consumer warpgroups share the tensor cores:
// one computes its softmax while the others' MMAs run, as it falls out
// (ScheduleCooperative), with the PV MMA of the previous tile running during the softmax
// (ScheduleOverlap), or taking turns at the softmax in warpgroup order (SchedulePingpong),
// the schedule of cuDNN's and FA3's Hopper kernels. The PerToken Taylor corrections are one
// extra bf16 k16 step of the QK MMA (rows of per-query and per-token coefficients, split
// hi/lo).
// Two CTA shapes: 128 rows with 128-token tiles (Config128, Config128Overlap,
// Config128Pingpong) and 192 rows with 64-token tiles (Config192: each dequantized tile
// serves 1.5x the rows; the registers of three consumer warpgroups leave room for 64-token
// score tiles only). kvq::attention runs the one of DefaultConfig.
//
// Rotated keys (Layout::kRotatedKeys): each consumer warpgroup rotates its Q rows in place
// (R·q, for the quantized tiles and their correction terms) and loads q over them at its
// first unquantized tile, once its earlier MMAs are done. In place rather than a second Q
// buffer: that would take two of the four ring slots of the 128-row INT2 plan and does not
// fit the 192-row INT4 plan at all. Centered keys (Layout::kCenteredKeys): the quantized
// scores lack q·μ, a constant per row, which moves no weight within the quantized tiles: it
// is added to the row's running max once, after its last quantized tile (consumer.cuh).
//
// Supported here: PerToken keys (2- or 4-bit codes, group size >= 8, shared-memory plans
// within 227 KB) with corrections None, Taylor2, Taylor4; head dim 64 or 128; bf16 or
// fp16 (variant_supported). kvq::attention falls back to the mma.sync kernel for the other
// variants.
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/arch/sm90_primitives.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/cta.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/traits.cuh"
#include "kvq/kernels/sm90/consumer.cuh"
#include "kvq/kernels/sm90/plan.cuh"
#include "kvq/kernels/sm90/producer.cuh"
#include "kvq/kernels/sm90/smem.cuh"

namespace kvq::kernels::sm90 {

/// The Hopper kernel. Launch with Tr::kThreads threads, Tr::kSmemBytes of dynamic shared
/// memory and grid (ceil(num_q / Tr::kRows) x splits, q_heads, batch) (split-KV: p.splits,
/// common::CtaContext). Compiled for sm_90a only
/// (elsewhere its body traps: kvq::attention never launches it there).
/// Static shared memory of the kernel's stub (built without sm_90a features); the real
/// kernel uses dynamic shared memory only.
constexpr int kStubSharedBytes = 16;

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    attention_kernel(const __grid_constant__ common::AttentionParams<typename Tr::Layout> p) {
  static_assert(common::TraitsProtocol<Tr>::value, "the traits the common device functions read");
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int tid = threadIdx.x;
  // Broadcast from lane 0: the compiler then knows the warp index (and all that derives
  // from it: warpgroup, wgmma descriptors, barrier ids) is warp-uniform and keeps it in
  // uniform registers, rather than moving descriptors from vector registers (R2UR) before
  // every wgmma.
  const int warp = __shfl_sync(0xffffffffu, tid >> 5, 0);
  const int lane = tid & 31;
  Smem<Tr> sm;
  {
    const std::uint32_t a = arch::smem_u32(smem_raw);
    sm.base = smem_raw + (((a + 1023u) & ~1023u) - a);
  }
  common::CtaContext<Tr> c;
  if (!c.init(p, sm.base)) return;  // uniform over the CTA
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < Tr::kStages; ++s) {
      arch::mbarrier_init(sm.bar(kFullK, s), Tr::kProducerThreads / 2);
      arch::mbarrier_init(sm.bar(kFullV, s), Tr::kProducerThreads / 2);
      arch::mbarrier_init(sm.bar(kEmptyK, s), 4 * Tr::kConsumerGroups);
      arch::mbarrier_init(sm.bar(kEmptyV, s), 4 * Tr::kConsumerGroups);
    }
#pragma unroll
    for (int r = 0; r < Tr::kRingStages; ++r) {
      arch::mbarrier_init(sm.ring_bar(0, r), 1);
      arch::mbarrier_init(sm.ring_bar(1, r), 1);
    }
  }
  const int wg = warp / 4;
  float qmu[2] = {0.0f, 0.0f};  // centered keys: q·μ of the lane's two rows (none: no quantized tile)
  if (wg > 0) {
    if constexpr (Tr::kRotatedKeys) {
      if (c.t_begin < c.n_qtiles) {  // the CTA's tiles start with quantized ones
        load_q_rotated<Tr>(p, c, sm, wg - 1, warp & 3, lane, qmu);
      } else {
        load_q<Tr>(p, c, sm, wg - 1, tid & 127);
      }
    } else {
      load_q<Tr>(p, c, sm, wg - 1, tid & 127);
    }
  }
  arch::fence_proxy_async();
  __syncthreads();
  if (wg == 0) {
    arch::regs_dealloc<Tr::kProducerRegs>();
    if (warp < 2) {
      produce<Tr, true>(p, c, sm, tid);
    } else {
      produce<Tr, false>(p, c, sm, tid - 64);
    }
  } else {
    arch::regs_alloc<Tr::kConsumerRegs>();
    consume<Tr>(p, c, sm, wg - 1, warp - 4, lane, qmu);
  }
#elif defined(__CUDA_ARCH__)
  // Built for a target without wgmma: a stub that marks itself with static shared memory
  // (the real kernel has none), which the host reads through cudaFuncGetAttributes.
  __shared__ unsigned char stub_marker[kStubSharedBytes];
  asm volatile("st.shared.u8 [%0], 0;" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(stub_marker))));
  (void)p;
  __trap();
#else
  (void)p;
#endif
}

}  // namespace kvq::kernels::sm90
