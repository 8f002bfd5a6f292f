// TMA descriptors (CUtensorMap) of the current chunk's K and V for the Hopper attention
// kernel, encoded on the host through the driver's cuTensorMapEncodeTiled, looked up
// through the runtime (no link against libcuda).
#pragma once

#include <cuda.h>  // CUtensorMap and its enums (types only)
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "kvq/spec/tensor.hpp"

namespace kvq::device {

/// cuTensorMapEncodeTiled, or null where the driver does not provide it. A found entry
/// point is kept; a failed look-up is tried again on the next call.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static std::atomic<PFN_cuTensorMapEncodeTiled_v12000> cached{nullptr};
  PFN_cuTensorMapEncodeTiled_v12000 fn = cached.load(std::memory_order_acquire);
  if (fn != nullptr) return fn;
  void* f = nullptr;
  cudaDriverEntryPointQueryResult q{};
#if CUDART_VERSION >= 12050
  const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
  const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || f == nullptr) return nullptr;
  fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  cached.store(fn, std::memory_order_release);
  return fn;
}

/// A TMA descriptor of a [batch][tokens][heads][head_dim] tensor of 16-bit elements with
/// t's strides, read in boxes of 64 channels x `box_tokens` tokens with the 128-byte
/// swizzle; false (nothing written) where the driver refuses it.
inline bool encode_chunk_map(unsigned char (&out)[128], const Tensor4& t, int head_dim, std::int64_t tokens, int heads,
                             int batch, int box_tokens) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || tokens <= 0 || heads <= 0 || batch <= 0) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(tokens),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(t.token_stride) * 2, static_cast<cuuint64_t>(t.head_stride) * 2,
                                 static_cast<cuuint64_t>(t.batch_stride) * 2};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_tokens), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  static_assert(sizeof(map) == sizeof(out), "a CUtensorMap is 128 bytes");
  if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, t.data, dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
    return false;
  std::memcpy(out, &map, sizeof(map));
  return true;
}

/// The chunk maps of the last call, kept so that a plan re-encodes them only when the
/// chunk's pointers, strides or length change.
struct ChunkMapCache {
  const void* k = nullptr;
  const void* v = nullptr;
  std::int64_t k_strides[3] = {0, 0, 0};
  std::int64_t v_strides[3] = {0, 0, 0};
  std::int64_t tokens = -1;
  bool valid = false;
  bool ok = false;  ///< whether the driver accepted both maps
  unsigned char k_map[128];
  unsigned char v_map[128];

  bool matches(const Tensor4& kt, const Tensor4& vt, std::int64_t n) const {
    return valid && k == kt.data && v == vt.data && tokens == n && k_strides[0] == kt.batch_stride &&
           k_strides[1] == kt.token_stride && k_strides[2] == kt.head_stride && v_strides[0] == vt.batch_stride &&
           v_strides[1] == vt.token_stride && v_strides[2] == vt.head_stride;
  }

  /// Encodes both maps (or neither: the kernel then copies the chunk with cp.async).
  void update(const Tensor4& kt, const Tensor4& vt, std::int64_t n, int head_dim, int heads, int batch, int box_tokens) {
    ok = encode_chunk_map(k_map, kt, head_dim, n, heads, batch, box_tokens) &&
         encode_chunk_map(v_map, vt, head_dim, n, heads, batch, box_tokens);
    k = kt.data;
    v = vt.data;
    tokens = n;
    k_strides[0] = kt.batch_stride, k_strides[1] = kt.token_stride, k_strides[2] = kt.head_stride;
    v_strides[0] = vt.batch_stride, v_strides[1] = vt.token_stride, v_strides[2] = vt.head_stride;
    valid = true;
  }
};

}  // namespace kvq::device
