// mma.sync-era (sm_80+) PTX wrappers: tensor-core MMA m16n8k16 with the packed 16-bit
// arithmetic of its operands, ldmatrix, cp.async and shared-memory addresses. Both
// attention kernels use them (the Hopper kernel for cp.async and the packed arithmetic).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::arch {

// ---- shared memory addressing ----------------------------------------------------------

KVQ_DEVICE std::uint32_t smem_u32(const void* p) { return static_cast<std::uint32_t>(__cvta_generic_to_shared(p)); }

// ---- cp.async ------------------------------------------------------------------------

/// Asynchronous copy of Bytes bytes global -> shared; src_bytes < Bytes zero-fills the rest
/// (src_bytes = 0 reads nothing and writes zeros).
template <int Bytes>
KVQ_DEVICE void cp_async(std::uint32_t dst, const void* src, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(Bytes), "r"(src_bytes)
                 : "memory");
  }
}
KVQ_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
KVQ_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- ldmatrix ------------------------------------------------------------------------

KVQ_DEVICE void ldsm_x4(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
KVQ_DEVICE void ldsm_x4_trans(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ---- element types of the MMA operands ----------------------------------------------------

/// Packed-pair arithmetic and MMA of one 16-bit operand type. A "pair" is a uint32
/// holding two elements, element 0 in the low half.
template <DType T>
struct ElementOps {
  static_assert(T == DType::kBFloat16 || T == DType::kFloat16, "the fused attention kernel computes in bf16 or fp16");
};

template <>
struct ElementOps<DType::kBFloat16> {
  static constexpr std::uint32_t kNegZero = 0x80008000u;
  /// Scale applied to q before squaring it for the PerChannel correction MMA (bf16 has
  /// the float exponent range: none needed).
  static constexpr std::uint32_t kSquareScale = 0x3F803F80u;  // 1
  static constexpr float kSquareScaleValue = 1.0f;

  static KVQ_DEVICE std::uint32_t fma2(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
    std::uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  static KVQ_DEVICE std::uint32_t mul2(std::uint32_t a, std::uint32_t b) { return fma2(a, b, kNegZero); }
  static KVQ_DEVICE std::uint32_t pack(float lo, float hi) {
    std::uint32_t d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
  }
  static KVQ_DEVICE float lo(std::uint32_t v) { return __uint_as_float(v << 16); }
  static KVQ_DEVICE float hi(std::uint32_t v) { return __uint_as_float(v & 0xffff0000u); }
  static KVQ_DEVICE void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct ElementOps<DType::kFloat16> {
  static constexpr std::uint32_t kNegZero = 0x80008000u;
  /// q is scaled by 2^-6 before squaring, so q^2 and q^4 stay in fp16 range for |q| < 1024.
  static constexpr std::uint32_t kSquareScale = 0x24002400u;  // 2^-6
  static constexpr float kSquareScaleValue = 0.015625f;

  static KVQ_DEVICE std::uint32_t fma2(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
    std::uint32_t d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  static KVQ_DEVICE std::uint32_t mul2(std::uint32_t a, std::uint32_t b) { return fma2(a, b, kNegZero); }
  static KVQ_DEVICE std::uint32_t pack(float lo, float hi) {
    std::uint32_t d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
  }
  static KVQ_DEVICE float lo(std::uint32_t v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xffffu)));
  }
  static KVQ_DEVICE float hi(std::uint32_t v) { return __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16))); }
  static KVQ_DEVICE void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

}  // namespace kvq::arch
