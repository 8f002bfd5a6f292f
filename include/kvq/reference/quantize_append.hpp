// CPU reference of quantize-and-append: the oracle for the GPU kernel, whose codes
// and metadata must match it bit for bit. Naive loops over host memory.
//
// Rotated keys (Layout::kRotatedKeys): each key token that is quantized (the HeadDim
// channels of one token and head, read as float: an input token after converting
// bf16/fp16 to float, a tail token from the tail dtype) is rotated by
// math::hadamard_rotate in float right before it is quantized. The tail of PerChannel
// keys holds keys as given (unrotated, rounded to the tail dtype), so only the quantized
// segment is rotated. Values are stored as given.
//
// Centered keys (Layout::kCenteredKeys): an append of N > 0 tokens into a batch entry of
// length 0 first sets the entry's key mean, per kv head h and channel c,
//   μ[b][h][c] = (((0 + x_0) + x_1) + ... + x_{N−1}) / N,
// x_t the float value of input key element (t, h, c), the sum in float in token order and
// one float division (both rounded to nearest); later appends keep μ. A key token that is
// quantized is then rotated from (x_c − μ_c) (one float subtraction per element) instead of
// x_c.
#pragma once

#include <cstdint>
#include <vector>

#include "kvq/layout/cache_layout.hpp"
#include "kvq/layout/paged_layout.hpp"
#include "kvq/math/pack.hpp"
#include "kvq/math/quantize.hpp"
#include "kvq/math/rotation.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/status.hpp"

namespace kvq::reference {

namespace detail {

/// Quantizes `count` tokens (HeadDim floats each) of one (batch, head) into the quantized
/// positions [first, first + count) of a cache. `key(i, c)` and `value(i, c)` return
/// element c of token i (keys already rotated where the layout rotates them).
template <class Layout, class GetK, class GetV>
void quantize_tokens(const Layout& l, const layout::CachePointers<Layout>& p, int b, int h, std::int64_t first,
                     std::int64_t count, const GetK& key, const GetV& value) {
  using KS = typename Layout::KSpec;
  using VS = typename Layout::VSpec;
  constexpr int D = Layout::kHeadDim;
  // Keys.
  if constexpr (KS::kPerToken) {
    for (std::int64_t i = 0; i < count; ++i) {
      for (int g = 0; g < D; g += KS::kGroupSize) {
        math::GroupStats st = math::GroupStats::empty();
        for (int c = g; c < g + KS::kGroupSize; ++c) st.add(key(i, c));
        const auto meta = math::make_group_meta<KS::kScaleType, KS::kLevels>(st);
        p.k_meta[l.k_meta_index(b, h, first + i, g)] = meta;
      }
    }
  } else {
    // PerChannel: `count` is a multiple of G and `first` is group aligned.
    for (std::int64_t g0 = 0; g0 < count; g0 += KS::kGroupSize) {
      for (int c = 0; c < D; ++c) {
        math::GroupStats st = math::GroupStats::empty();
        for (int i = 0; i < KS::kGroupSize; ++i) st.add(key(g0 + i, c));
        p.k_meta[l.k_meta_index(b, h, first + g0, c)] = math::make_group_meta<KS::kScaleType, KS::kLevels>(st);
      }
    }
  }
  for (std::int64_t i = 0; i < count; ++i) {
    std::uint32_t* words = p.k_codes + l.k_code_word(b, h, first + i);
    for (int w = 0; w < Layout::kKeyWordsPerToken; ++w) {
      std::uint32_t codes[KS::kCodesPerWord];
      for (int s = 0; s < KS::kCodesPerWord; ++s) {
        const int c = w * KS::kCodesPerWord + s;
        const auto& m = p.k_meta[l.k_meta_index(b, h, first + i, c)];
        using T = math::ScaleTraits<KS::kScaleType>;
        codes[s] = math::quantize_value<KS::kLevels>(key(i, c), T::to_float(m.step), T::to_float(m.zero));
      }
      words[w] = math::pack_word<KS::kBits>(codes);
    }
  }
  // Values: always PerToken.
  for (std::int64_t i = 0; i < count; ++i) {
    for (int g = 0; g < D; g += VS::kGroupSize) {
      math::GroupStats st = math::GroupStats::empty();
      for (int c = g; c < g + VS::kGroupSize; ++c) st.add(value(i, c));
      p.v_meta[l.v_meta_index(b, h, first + i, g)] = math::make_group_meta<VS::kScaleType, VS::kLevels>(st);
    }
    std::uint32_t* words = p.v_codes + l.v_code_word(b, h, first + i);
    for (int w = 0; w < Layout::kValueWordsPerToken; ++w) {
      std::uint32_t codes[VS::kCodesPerWord];
      for (int s = 0; s < VS::kCodesPerWord; ++s) {
        const int c = w * VS::kCodesPerWord + s;
        const auto& m = p.v_meta[l.v_meta_index(b, h, first + i, c)];
        using T = math::ScaleTraits<VS::kScaleType>;
        codes[s] = math::quantize_value<VS::kLevels>(value(i, c), T::to_float(m.step), T::to_float(m.zero));
      }
      words[w] = math::pack_word<VS::kBits>(codes);
    }
  }
}

}  // namespace detail

/// Appends `num_tokens` tokens of keys `k` and values `v` (each [batch, num_tokens,
/// heads, HeadDim], any DType, strided) to every batch entry of a host cache.
///
/// \param cache    host buffer of layout.bytes() bytes (the same bytes as the device cache)
/// \param lengths  host array [batch] of current token counts; each is increased by num_tokens
///
/// Tokens are quantized in order: the key tail (PerChannel keys) is completed first,
/// every full group is quantized, and the remaining tokens are kept in the tail,
/// rounded to the tail dtype. With a rotated-key layout every key token that is
/// quantized is rotated (in float) first; the tail keeps keys unrotated. Refuses
/// (and changes nothing) if any length would exceed the capacity.
template <class Layout>
[[nodiscard]] Status quantize_append(const Layout& l, void* cache, std::int32_t* lengths, const Tensor4& k, const Tensor4& v,
                                     std::int64_t num_tokens) {
  if (cache == nullptr || lengths == nullptr || num_tokens < 0) return Status::kErrorInvalidArgument;
  if (num_tokens > 0 && (k.data == nullptr || v.data == nullptr)) return Status::kErrorInvalidArgument;
  for (int b = 0; b < l.shape.batch; ++b) {
    if (lengths[b] < 0) return Status::kErrorInvalidArgument;
    if (lengths[b] + num_tokens > l.shape.capacity) return Status::kErrorCapacityExceeded;
  }
  constexpr int D = Layout::kHeadDim;
  constexpr int T = Layout::kKeyTokensPerGroup;
  const auto p = layout::CachePointers<Layout>::from_base(l, cache);
  const DType td = l.shape.tail_dtype;
  for (int b = 0; b < l.shape.batch; ++b) {
    const std::int64_t len = lengths[b];
    const std::int64_t tail = Layout::tail_length(len);
    const std::int64_t qlen = Layout::quantized_length(len);
    const std::int64_t total = tail + num_tokens;  // tokens of the stream [tail ; chunk]
    const std::int64_t full = total - total % T;   // stream tokens that land in full groups
    for (int h = 0; h < l.shape.heads; ++h) {
      // Stream element (i, c): the tail first, then the chunk. Tail tokens were rounded
      // to the tail dtype when they were stored; chunk tokens are read as given.
      const auto key = [&](std::int64_t i, int c) -> float {
        if (i < tail) return load_as_float(p.k_tail, td, l.tail_index(b, h, static_cast<int>(i), c));
        return load_as_float(k.data, k.dtype, k.offset(b, i - tail, h, c));
      };
      // Centered layouts: the first append into an empty entry sets the key mean.
      if constexpr (Layout::kCenteredKeys) {
        if (len == 0 && num_tokens > 0) {
          for (int c = 0; c < D; ++c) {
            float sum = 0.0f;
            for (std::int64_t i = 0; i < num_tokens; ++i) sum = sum + load_as_float(k.data, k.dtype, k.offset(b, i, h, c));
            p.k_mean[l.k_mean_index(b, h, c)] = sum / static_cast<float>(num_tokens);
          }
        }
      }
      // Rotated layouts: the stream tokens that are quantized, (centered and) rotated in float.
      std::vector<float> rotated;
      if constexpr (Layout::kRotatedKeys) {
        rotated.resize(static_cast<std::size_t>(full) * D);
        for (std::int64_t i = 0; i < full; ++i) {
          float* row = rotated.data() + i * D;
          for (int c = 0; c < D; ++c) row[c] = key(i, c);
          if constexpr (Layout::kCenteredKeys)
            for (int c = 0; c < D; ++c) row[c] = row[c] - p.k_mean[l.k_mean_index(b, h, c)];
          math::hadamard_rotate<D>(row);
        }
      }
      const auto quantized_key = [&](std::int64_t i, int c) -> float {
        if constexpr (Layout::kRotatedKeys) return rotated[static_cast<std::size_t>(i * D + c)];
        return key(i, c);
      };
      const auto value = [&](std::int64_t i, int c) -> float {
        if (i < tail) return load_as_float(p.v_tail, td, l.tail_index(b, h, static_cast<int>(i), c));
        return load_as_float(v.data, v.dtype, v.offset(b, i - tail, h, c));
      };
      detail::quantize_tokens(l, p, b, h, qlen, full, quantized_key, value);
      // The new tail: stream tokens [full, total), read before anything overwrote them.
      if constexpr (Layout::kHasTail) {
        std::vector<float> kt, vt;
        for (std::int64_t i = full; i < total; ++i)
          for (int c = 0; c < D; ++c) {
            kt.push_back(key(i, c));
            vt.push_back(value(i, c));
          }
        for (std::int64_t i = 0; i < total - full; ++i)
          for (int c = 0; c < D; ++c) {
            store_from_float(p.k_tail, td, l.tail_index(b, h, static_cast<int>(i), c), kt[i * D + c]);
            store_from_float(p.v_tail, td, l.tail_index(b, h, static_cast<int>(i), c), vt[i * D + c]);
          }
      }
    }
    lengths[b] = static_cast<std::int32_t>(len + num_tokens);
  }
  return Status::kSuccess;
}

/// The same through block tables (host tables): the contiguous definition token by token,
/// each token at its page. Refuses (and changes nothing) if a table lists a page outside the
/// pool for any token an entry will hold, or a length would exceed the table's capacity.
template <class Paged>
[[nodiscard]] Status quantize_append(const layout::PagedView<Paged>& view, void* cache, std::int32_t* lengths, const Tensor4& k,
                                     const Tensor4& v, std::int64_t num_tokens) {
  if (cache == nullptr || lengths == nullptr || view.tables == nullptr || num_tokens < 0) return Status::kErrorInvalidArgument;
  for (int b = 0; b < view.shape.batch; ++b) {
    if (lengths[b] < 0) return Status::kErrorInvalidArgument;
    if (lengths[b] + num_tokens > view.shape.capacity) return Status::kErrorCapacityExceeded;
    if (!view.pages_valid(b, lengths[b] + num_tokens)) return Status::kErrorInvalidArgument;
  }
  return quantize_append<layout::PagedView<Paged>>(view, cache, lengths, k, v, num_tokens);
}

/// Dequantized key element (token t < quantized_length, channel c) of a host cache, and
/// its step Δ (the width of its uniform noise under the model of DESIGN.md section 3).
/// For a rotated-key layout this is element c of the rotated key R·k (R·(k − μ) when
/// centered).
template <class Layout>
float dequantized_key(const Layout& l, const void* cache, int b, int h, std::int64_t t, int c, float* step = nullptr) {
  using KS = typename Layout::KSpec;
  using Tr = math::ScaleTraits<KS::kScaleType>;
  const auto p = layout::CachePointers<Layout>::from_base(l, const_cast<void*>(cache));
  const auto& m = p.k_meta[l.k_meta_index(b, h, t, c)];
  const std::uint32_t w = p.k_codes[l.k_code_word(b, h, t) + c / KS::kCodesPerWord];
  const std::uint32_t code = math::unpack_code<KS::kBits>(w, c % KS::kCodesPerWord);
  if (step) *step = Tr::to_float(m.step);
  return math::dequantize_value(code, Tr::to_float(m.step), Tr::to_float(m.zero));
}

/// Dequantized value element (token t < quantized_length, channel c) of a host cache.
template <class Layout>
float dequantized_value(const Layout& l, const void* cache, int b, int h, std::int64_t t, int c) {
  using VS = typename Layout::VSpec;
  using Tr = math::ScaleTraits<VS::kScaleType>;
  const auto p = layout::CachePointers<Layout>::from_base(l, const_cast<void*>(cache));
  const auto& m = p.v_meta[l.v_meta_index(b, h, t, c)];
  const std::uint32_t w = p.v_codes[l.v_code_word(b, h, t) + c / VS::kCodesPerWord];
  const std::uint32_t code = math::unpack_code<VS::kBits>(w, c % VS::kCodesPerWord);
  return math::dequantize_value(code, Tr::to_float(m.step), Tr::to_float(m.zero));
}

}  // namespace kvq::reference
