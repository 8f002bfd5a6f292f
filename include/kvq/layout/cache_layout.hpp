// Packed layout of the K and V cache of one attention layer.
//
// One allocation of layout.bytes() holds six regions, each aligned to 256 bytes,
// all head-major so that the tokens of one (batch, kv head) are contiguous:
//
//   k_codes  uint32 [batch][heads][capacity][HeadDim·Bk/32]   packed key codes
//   k_meta   GroupMeta<Sk> [batch][heads][capacity/Tk][HeadDim/Ck]   key (step, zero)
//   v_codes  uint32 [batch][heads][capacity][HeadDim·Bv/32]   packed value codes
//   v_meta   GroupMeta<Sv> [batch][heads][capacity][HeadDim/Gv]      value (step, zero)
//   k_tail   tail dtype [batch][heads][Tk][HeadDim]   keys not yet in a full group
//   v_tail   tail dtype [batch][heads][Tk][HeadDim]   values of the same tokens
//
// Tk is the key spec's tokens per group (1 for PerToken keys, G for PerChannel
// keys) and Ck its channels per group. Partial-group policy: of a batch entry's
// `length` cached tokens, the first quantized_length(length) = length − length % Tk
// are quantized (keys and values), and the last length % Tk are kept unquantized,
// in the tail dtype, in k_tail/v_tail, like KIVI's full-precision residual. An
// append completes the tail group first; once a group is full it is quantized and
// its tokens leave the tail. With PerToken keys Tk = 1 and the tail regions are empty.
//
// Rotated keys (KeyRotation = Rotation::kHadamard): every key token is multiplied by the
// fixed randomized Hadamard matrix R of math/rotation.hpp right before it is quantized:
// codes and metadata describe R·k. The tail of PerChannel keys holds keys as given
// (unrotated), so the rotated segment is exactly the quantized one. Attention scores the
// quantized keys with the rotated query R·q (q·k = (R·q)·(R·k)) and corrects them with
// its elements; the tail and the current chunk are scored with q. The rotation changes
// no byte count.
//
// Centered rotated keys (KeyRotation = Rotation::kHadamardCentered): the quantized keys are
// R·(k − μ), μ[b][h] a float32 vector of HeadDim channels per batch entry and kv head,
// kept in the k_mean region at the end of the cache (HeadDim floats per entry and head, no
// per-token bytes). μ is set by the first append of N > 0 tokens into an entry of length 0
// (the mean of those N keys, see reference/quantize_append.hpp) and kept by later appends;
// the tail holds keys as given. Attention scores a quantized key with (R·q)·k̂ + q·μ.
// Values are never rotated: the output is linear in V, so value noise needs no
// correction (DESIGN.md section 3).
//
// All offsets are 64-bit. Values must be PerToken.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/math/rotation.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/spec/quant_spec.hpp"
#include "kvq/status.hpp"

namespace kvq::layout {

/// Runtime shape of a cache: everything that is not a template parameter.
struct CacheShape {
  int batch = 0;
  int heads = 0;               ///< kv heads
  std::int64_t capacity = 0;   ///< tokens per batch entry; a multiple of the key tokens-per-group
  DType tail_dtype = DType::kBFloat16;  ///< element type of the unquantized tail (that of the K/V inputs)
};

/// \tparam KeyRotation_ whether keys are cached rotated (Rotation::kHadamard needs a head
///                      dim that is a power of two in [32, 512]); values never are.
template <class KSpec_, class VSpec_, int HeadDim_, Rotation KeyRotation_ = Rotation::kNone>
struct CacheLayout {
  static_assert(is_quant_spec<KSpec_>::value, "KSpec must be a kvq::QuantSpec");
  static_assert(is_quant_spec<VSpec_>::value, "VSpec must be a kvq::QuantSpec");
  static_assert(VSpec_::kPerToken, "VSpec must be PerToken: values are quantized per token");
  static_assert(KSpec_::template check_head_dim<HeadDim_>() && VSpec_::template check_head_dim<HeadDim_>(),
                "HeadDim incompatible with the specs");
  static_assert(KeyRotation_ == Rotation::kNone || math::rotation_supports(HeadDim_),
                "KeyRotation = kHadamard needs a HeadDim that is a power of two in [32, 512]");

  using KSpec = KSpec_;
  using VSpec = VSpec_;
  using KMeta = math::GroupMeta<KSpec::kScaleType>;
  using VMeta = math::GroupMeta<VSpec::kScaleType>;

  static constexpr int kHeadDim = HeadDim_;
  static constexpr Rotation kKeyRotation = KeyRotation_;
  /// Quantized keys are stored rotated: R·k, or R·(k − μ) with centering.
  static constexpr bool kRotatedKeys = KeyRotation_ != Rotation::kNone;
  /// Quantized keys are centered by the entry's key mean μ (the k_mean region).
  static constexpr bool kCenteredKeys = KeyRotation_ == Rotation::kHadamardCentered;
  static constexpr int kKeyWordsPerToken = kHeadDim * KSpec::kBits / 32;
  static constexpr int kValueWordsPerToken = kHeadDim * VSpec::kBits / 32;
  static constexpr int kKeyTokensPerGroup = KSpec::kTokensPerGroup;         ///< Tk
  static constexpr int kKeyGroupsPerTokenGroup = kHeadDim / KSpec::kChannelsPerGroup;
  static constexpr int kValueGroupsPerToken = kHeadDim / VSpec::kGroupSize;
  static constexpr bool kHasTail = kKeyTokensPerGroup > 1;
  static constexpr std::int64_t kAlignment = 256;

  /// Bytes of one quantized token, codes and metadata of K and V included
  /// (key metadata amortised over the Tk tokens of a group).
  static constexpr double kBytesPerToken =
      4.0 * (kKeyWordsPerToken + kValueWordsPerToken) +
      static_cast<double>(sizeof(KMeta)) * kKeyGroupsPerTokenGroup / kKeyTokensPerGroup +
      static_cast<double>(sizeof(VMeta)) * kValueGroupsPerToken;
  /// Bytes of one bf16 token of K and V, for ratios.
  static constexpr double kBf16BytesPerToken = 2.0 * 2.0 * kHeadDim;

  CacheShape shape{};

  /// Validates a shape; on success writes the layout to *out.
  [[nodiscard]] static Status make(const CacheShape& s, CacheLayout* out) {
    if (out == nullptr || s.batch <= 0 || s.heads <= 0 || s.capacity < 0) return Status::kErrorInvalidArgument;
    if (s.capacity % kKeyTokensPerGroup != 0) return Status::kErrorInvalidArgument;
    out->shape = s;
    return Status::kSuccess;
  }

  // ---- lengths ------------------------------------------------------------------
  static KVQ_HOST_DEVICE std::int64_t quantized_length(std::int64_t length) { return length - length % kKeyTokensPerGroup; }
  static KVQ_HOST_DEVICE std::int64_t tail_length(std::int64_t length) { return length % kKeyTokensPerGroup; }

  // ---- element offsets within each region ----------------------------------------
  KVQ_HOST_DEVICE std::int64_t head_index(int b, int h) const { return static_cast<std::int64_t>(b) * shape.heads + h; }
  /// Index (in words) of the first code word of token t.
  KVQ_HOST_DEVICE std::int64_t k_code_word(int b, int h, std::int64_t t) const {
    return (head_index(b, h) * shape.capacity + t) * kKeyWordsPerToken;
  }
  KVQ_HOST_DEVICE std::int64_t v_code_word(int b, int h, std::int64_t t) const {
    return (head_index(b, h) * shape.capacity + t) * kValueWordsPerToken;
  }
  /// Index (in GroupMeta) of the (step, zero) of key element (t, channel c).
  KVQ_HOST_DEVICE std::int64_t k_meta_index(int b, int h, std::int64_t t, int c) const {
    return (head_index(b, h) * (shape.capacity / kKeyTokensPerGroup) + t / kKeyTokensPerGroup) * kKeyGroupsPerTokenGroup +
           c / KSpec::kChannelsPerGroup;
  }
  KVQ_HOST_DEVICE std::int64_t v_meta_index(int b, int h, std::int64_t t, int c) const {
    return (head_index(b, h) * shape.capacity + t) * kValueGroupsPerToken + c / VSpec::kGroupSize;
  }
  /// Index (in elements) of tail slot i (0 <= i < Tk), channel c.
  KVQ_HOST_DEVICE std::int64_t tail_index(int b, int h, int i, int c) const {
    return (head_index(b, h) * kKeyTokensPerGroup + i) * kHeadDim + c;
  }
  /// Index (in floats) of channel c of the key mean μ[b][h] (centered layouts).
  KVQ_HOST_DEVICE std::int64_t k_mean_index(int b, int h, int c) const { return head_index(b, h) * kHeadDim + c; }

  // ---- region sizes and byte offsets ---------------------------------------------
  static constexpr KVQ_HOST_DEVICE std::int64_t align_up(std::int64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }
  KVQ_HOST_DEVICE std::int64_t heads_total() const { return static_cast<std::int64_t>(shape.batch) * shape.heads; }
  KVQ_HOST_DEVICE std::int64_t k_codes_bytes() const { return heads_total() * shape.capacity * kKeyWordsPerToken * 4; }
  KVQ_HOST_DEVICE std::int64_t k_meta_bytes() const {
    return heads_total() * (shape.capacity / kKeyTokensPerGroup) * kKeyGroupsPerTokenGroup * static_cast<std::int64_t>(sizeof(KMeta));
  }
  KVQ_HOST_DEVICE std::int64_t v_codes_bytes() const { return heads_total() * shape.capacity * kValueWordsPerToken * 4; }
  KVQ_HOST_DEVICE std::int64_t v_meta_bytes() const {
    return heads_total() * shape.capacity * kValueGroupsPerToken * static_cast<std::int64_t>(sizeof(VMeta));
  }
  KVQ_HOST_DEVICE std::int64_t tail_bytes() const {
    return kHasTail ? heads_total() * kKeyTokensPerGroup * kHeadDim * static_cast<std::int64_t>(dtype_size(shape.tail_dtype)) : 0;
  }

  KVQ_HOST_DEVICE std::int64_t k_codes_offset() const { return 0; }
  KVQ_HOST_DEVICE std::int64_t k_meta_offset() const { return align_up(k_codes_offset() + k_codes_bytes()); }
  KVQ_HOST_DEVICE std::int64_t v_codes_offset() const { return align_up(k_meta_offset() + k_meta_bytes()); }
  KVQ_HOST_DEVICE std::int64_t v_meta_offset() const { return align_up(v_codes_offset() + v_codes_bytes()); }
  KVQ_HOST_DEVICE std::int64_t k_tail_offset() const { return align_up(v_meta_offset() + v_meta_bytes()); }
  KVQ_HOST_DEVICE std::int64_t v_tail_offset() const { return align_up(k_tail_offset() + tail_bytes()); }
  KVQ_HOST_DEVICE std::int64_t k_mean_bytes() const { return kCenteredKeys ? heads_total() * kHeadDim * 4 : 0; }
  KVQ_HOST_DEVICE std::int64_t k_mean_offset() const { return align_up(v_tail_offset() + tail_bytes()); }
  /// Bytes to allocate for the whole cache (256-byte aligned base expected).
  KVQ_HOST_DEVICE std::int64_t bytes() const { return align_up(k_mean_offset() + k_mean_bytes()); }
};

/// Typed pointers into one cache allocation. Built on the host from a base pointer;
/// trivially copyable into kernel parameters.
template <class Layout>
struct CachePointers {
  std::uint32_t* k_codes;
  typename Layout::KMeta* k_meta;
  std::uint32_t* v_codes;
  typename Layout::VMeta* v_meta;
  void* k_tail;
  void* v_tail;
  float* k_mean;  ///< centered layouts: μ[b][h][c]; otherwise points at the (empty) region's offset

  static CachePointers from_base(const Layout& l, void* base) {
    auto* p = static_cast<unsigned char*>(base);
    return {reinterpret_cast<std::uint32_t*>(p + l.k_codes_offset()),
            reinterpret_cast<typename Layout::KMeta*>(p + l.k_meta_offset()),
            reinterpret_cast<std::uint32_t*>(p + l.v_codes_offset()),
            reinterpret_cast<typename Layout::VMeta*>(p + l.v_meta_offset()),
            p + l.k_tail_offset(),
            p + l.v_tail_offset(),
            reinterpret_cast<float*>(p + l.k_mean_offset())};
  }
};

}  // namespace kvq::layout
