// Single PTX instructions and warp shuffles the attention kernels use on every supported
// architecture (sm_80+): exp2, -inf, quad reductions over the four lanes of an MMA row,
// and PRMT.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"

namespace kvq::arch {

/// 2^x, approximate (MUFU.EX2); 2^-inf = +0.
KVQ_DEVICE float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

KVQ_DEVICE float neg_inf() { return __uint_as_float(0xff800000u); }

KVQ_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}
KVQ_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

/// PRMT with a selector whose nibbles are known to be below 8 (the default mode, no sign
/// replication): __byte_perm would mask every selector with 0x7777 first, one more
/// instruction per lookup.
KVQ_DEVICE std::uint32_t prmt(std::uint32_t a, std::uint32_t b, std::uint32_t sel) {
  std::uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

}  // namespace kvq::arch
