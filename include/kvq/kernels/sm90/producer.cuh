// The producer warpgroup of the Hopper attention kernel, two independent halves (keys:
// warps 0-1, values: warps 2-3). Each copies its packed tiles of the quantized cache
// (codes and per-token metadata) into a ring of shared-memory slots by bulk copies (one
// thread, completion on the slot's mbarrier), kRingStages - 1 tiles ahead, and
// dequantizes them into 16-bit tiles (kStages buffers, the 128-byte swizzled layout wgmma
// reads), whole token rows per thread (the tokens of a whole 2-bit tile interleaved); the
// unquantized tiles [cache tail ; chunk] go into the same buffers: whole tiles of chunk
// rows by TMA (one thread, the copy engine swizzles), the rest with cp.async. Keys never
// wait for the consumers' use of values or the other way round.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/arch/sm90_primitives.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/correction.cuh"
#include "kvq/kernels/common/cta.cuh"
#include "kvq/kernels/common/dequant.cuh"
#include "kvq/kernels/common/pages.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/sm90/smem.cuh"
#include "kvq/layout/paged_layout.hpp"
#include "kvq/math/scale_traits.hpp"

namespace kvq::kernels::sm90 {

/// The tensor (K or V) one half of the producer warpgroup works on.
template <class Tr, bool kKey>
struct Half {
  using Spec = std::conditional_t<kKey, typename Tr::KSpec, typename Tr::VSpec>;
  using Meta = std::conditional_t<kKey, typename Tr::KMeta, typename Tr::VMeta>;
  static constexpr int kWords = kKey ? Tr::kKWords : Tr::kVWords;
  static constexpr int kMetaBytes = kKey ? Tr::kKMetaBytesPerToken : Tr::kVMetaBytesPerToken;
  static constexpr int kSlotCodes = kKey ? Tr::kSlotKCodes : Tr::kSlotVCodes;
  static constexpr int kSlotMeta = kKey ? Tr::kSlotKMeta : Tr::kSlotVMeta;
  static constexpr int kThreads = Tr::kProducerThreads / 2;
  static constexpr int kBarrierId = kKey ? 1 : 2;  ///< named barrier of the half
  static constexpr int kFull = kKey ? kFullK : kFullV;
  static constexpr int kEmpty = kKey ? kEmptyK : kEmptyV;
  static_assert(Tr::kTileN % kThreads == 0, "tokens per producer thread");
};

/// Global addresses of the half's packed codes and metadata of quantized token t.
template <class Tr, bool kKey>
KVQ_DEVICE const unsigned char* packed_codes(const common::AttentionParams<typename Tr::Layout>& p,
                                             const common::CtaContext<Tr>& c, std::int64_t t) {
  const auto& l = p.layout;
  return reinterpret_cast<const unsigned char*>(kKey ? p.k_codes + l.k_code_word(c.b, c.h, t)
                                                     : p.v_codes + l.v_code_word(c.b, c.h, t));
}
template <class Tr, bool kKey>
KVQ_DEVICE const unsigned char* packed_meta(const common::AttentionParams<typename Tr::Layout>& p,
                                            const common::CtaContext<Tr>& c, std::int64_t t) {
  const auto& l = p.layout;
  return kKey ? reinterpret_cast<const unsigned char*>(p.k_meta + l.k_meta_index(c.b, c.h, t, 0))
              : reinterpret_cast<const unsigned char*>(p.v_meta + l.v_meta_index(c.b, c.h, t, 0));
}

/// Tokens of quantized tile m that exist (the last tile may be partial).
template <class Tr>
KVQ_DEVICE int valid_tokens(const common::CtaContext<Tr>& c, int m) {
  const std::int64_t rest = c.qlen - static_cast<std::int64_t>(m) * Tr::kTileN;
  return rest < Tr::kTileN ? static_cast<int>(rest) : Tr::kTileN;
}

/// One thread: the half's part of packed tile m (the codes and per-token metadata of its
/// valid tokens) into its ring slot by two bulk copies, completing on the slot's barrier.
/// The codes are 16-byte aligned (cache base and regions); the metadata copy moves the
/// 16-byte-aligned window around the rows, which starts `skew` bytes before them (the same
/// for every tile of the head) and stays inside the cache allocation (regions are 256-byte
/// aligned).
/// The block-table walk of the packed tiles: the pages of up to two pieces of a tile read
/// ahead (pages of at least half a tile; further pieces of smaller pages are read as they
/// are issued).
template <class Tr>
using PageCursor = common::PageCursor<typename Tr::Layout, Tr::kTileN, 2>;

template <class Tr, bool kKey>
KVQ_DEVICE void issue_packed(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                             const Smem<Tr>& sm, int m, int skew, PageCursor<Tr>& pages) {
  using H = Half<Tr, kKey>;
  // Ring slots go by the CTA's own tiles (split-KV: from t_begin).
  const std::uint32_t slot = arch::smem_u32(sm.slot(m - c.t_begin));
  const std::uint32_t bar = sm.ring_bar(kKey ? 0 : 1, m - c.t_begin);
  const int valid = valid_tokens(c, m);
  const std::uint32_t code_bytes = static_cast<std::uint32_t>(valid * H::kWords * 4);
  const std::uint32_t meta_bytes = static_cast<std::uint32_t>((skew + valid * H::kMetaBytes + 15) & ~15);
  arch::mbarrier_arrive_expect_tx(bar, code_bytes + meta_bytes);
  if constexpr (layout::is_paged_view_v<typename Tr::Layout>) {
    // Paged: the tile lies in one page (page_tokens a multiple of kTileN) or spans whole
    // pages (kTileN a multiple of page_tokens): one pair of copies per page. The host admits
    // this kernel only where page_tokens × metadata bytes per token is a multiple of 16, so
    // that skew is 0 and every piece starts 16-byte aligned on both sides; the pieces' byte
    // counts add up to code_bytes and meta_bytes (only the last one is rounded up).
    using L = typename Tr::Layout;
    const auto t = pages.take(p.layout, m);
    const int piece = static_cast<int>(pages.pt) < Tr::kTileN ? static_cast<int>(pages.pt) : Tr::kTileN;
    const auto copy = [&](int i, std::int32_t page, std::uint32_t s) {
      const int n = valid - i < piece ? valid - i : piece;
      const auto& a = pages.head;
      const auto* codes = reinterpret_cast<const unsigned char*>(kKey ? p.k_codes + L::k_code_word_at(a, page, s)
                                                                      : p.v_codes + L::v_code_word_at(a, page, s));
      const auto* meta = kKey ? reinterpret_cast<const unsigned char*>(p.k_meta + L::k_meta_index_at(a, page, s, 0))
                              : reinterpret_cast<const unsigned char*>(p.v_meta + L::v_meta_index_at(a, page, s, 0));
      arch::bulk_load(slot + H::kSlotCodes + static_cast<std::uint32_t>(i * H::kWords * 4), codes,
                      static_cast<std::uint32_t>(n * H::kWords * 4), bar);
      arch::bulk_load(slot + H::kSlotMeta + static_cast<std::uint32_t>(i * H::kMetaBytes), meta,
                      static_cast<std::uint32_t>((n * H::kMetaBytes + 15) & ~15), bar);
    };
    copy(0, t.page[0], t.slot);  // valid >= 1: the tile is a quantized one
    if (valid > piece) copy(piece, t.page[1], 0);
#pragma unroll 1
    for (int i = 2 * piece, k = 2; i < valid; i += piece, ++k) copy(i, pages.at(t.col + k), 0);
  } else {
    (void)pages;
    const std::int64_t t0 = static_cast<std::int64_t>(m) * Tr::kTileN;
    arch::bulk_load(slot + H::kSlotCodes, packed_codes<Tr, kKey>(p, c, t0), code_bytes, bar);
    arch::bulk_load(slot + H::kSlotMeta, packed_meta<Tr, kKey>(p, c, t0) - skew, meta_bytes, bar);
  }
}

/// The half's rows of unquantized tile m ([tail ; chunk] tokens [i TileN, (i+1) TileN),
/// i = m - n_qtiles) into its buffer s: thread lt copies whole token rows (tokens past
/// u_needed are zero-filled).
template <class Tr, bool kKey>
KVQ_DEVICE void issue_plain(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                            const Smem<Tr>& sm, int m, int s, int lt) {
  using H = Half<Tr, kKey>;
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto& l = p.layout;
  const std::int64_t u0 = static_cast<std::int64_t>(m - c.n_qtiles) * Tr::kTileN;
  const std::uint32_t dst = arch::smem_u32(kKey ? sm.k(s) : sm.v(s));
  const auto* tail = static_cast<const std::uint16_t*>(kKey ? p.k_tail : p.v_tail);
  const auto* x = static_cast<const std::uint16_t*>(kKey ? p.k_chunk : p.v_chunk);
  const std::int64_t* st = kKey ? p.k_stride : p.v_stride;
#pragma unroll 1
  for (int tok = lt; tok < Tr::kTileN; tok += H::kThreads) {
    const std::int64_t u = u0 + tok;
    const bool ok = u < c.u_needed;
    const std::uint16_t* row = static_cast<const std::uint16_t*>(p.q);
    if (ok) {
      row = u < c.tlen ? tail + l.tail_index(c.b, c.h, static_cast<int>(u), 0)
                       : x + c.b * st[0] + (u - c.tlen) * st[1] + c.h * st[2];
    }
#pragma unroll
    for (int ch = 0; ch < kCpr; ++ch)
      arch::cp_async<16>(dst + arch::sw128_offset<Tr::kTileN>(tok, ch), ok ? row + ch * 8 : row, ok ? 16 : 0);
  }
}

/// Where a producer thread's token rows go in a swizzled 16-bit tile: the byte offsets of
/// chunks 0-7 of its first token `lt` (sw128_offset). Chunk c + 8b of token lt + r (r a
/// multiple of 8) lies b Tr::kTileN * 128 + r * 128 bytes further (the swizzle permutes
/// address bits 4-6 by the row's low three bits only), so that the stores of every token and
/// tile take these offsets and an immediate.
template <class Tr>
struct RowOffsets {
  std::uint32_t off[8];
  KVQ_DEVICE explicit RowOffsets(int lt) {
#pragma unroll
    for (int c = 0; c < 8; ++c) off[c] = arch::sw128_offset<Tr::kTileN>(lt, c);
  }
};

/// 16 bytes (chunk `chunk`: 8 channels) of the row `r` rows after the thread's first token
/// (a multiple of 8) in a swizzled 16-bit tile.
template <class Tr>
KVQ_DEVICE void store_chunk(unsigned char* tile, const RowOffsets<Tr>& ro, int r, int chunk, const std::uint32_t* v) {
  *reinterpret_cast<uint4*>(tile + ro.off[chunk & 7] + (chunk >> 3) * (Tr::kTileN * 128) + r * 128) =
      make_uint4(v[0], v[1], v[2], v[3]);
}

/// Token `tok`'s B row of the folded correction (`rows`: the K buffer's fold rows; fold[i]
/// holds bf16 columns 2i, 2i + 1).
KVQ_DEVICE void store_fold_row(float* rows, int tok, const std::uint32_t (&fold)[8]) {
  auto* row = reinterpret_cast<unsigned char*>(rows);
  *reinterpret_cast<uint4*>(row + common::fold_offset(tok, 0)) = make_uint4(fold[0], fold[1], fold[2], fold[3]);
  *reinterpret_cast<uint4*>(row + common::fold_offset(tok, 8)) = make_uint4(fold[4], fold[5], fold[6], fold[7]);
}

/// A token's packed codes and group metadata, read from its ring slot into registers.
template <class Tr, class Spec, int kWords>
struct PackedToken {
  static constexpr int kGroups = Tr::kHeadDim / Spec::kGroupSize;
  static_assert(kWords % 4 == 0, "a token's codes are whole 16-byte chunks");
  std::uint32_t src[kWords];
  math::GroupMeta<Spec::kScaleType> meta[kGroups];

  /// Token `tok` of the slot's codes and metadata, 16 bytes of codes at a time.
  KVQ_DEVICE void load(const std::uint32_t* codes, const math::GroupMeta<Spec::kScaleType>* meta_rows, int tok) {
#pragma unroll
    for (int i = 0; i < kWords; i += 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(codes + tok * kWords + i);
      src[i] = v.x, src[i + 1] = v.y, src[i + 2] = v.z, src[i + 3] = v.w;
    }
#pragma unroll
    for (int g = 0; g < kGroups; ++g) meta[g] = meta_rows[tok * kGroups + g];
  }
};

/// Dequantizes a PerToken token (its codes and metadata loaded into `pk`) into row
/// `tok` = the thread's first token + r of a 16-bit tile buffer. With kCoefficients (keys
/// with a correction) it also writes the token's correction coefficients kc2[g][tok] =
/// -step^2 (kc4 = step^4) of each group, or its fold row. 2-bit codes are table lookups of
/// the group's four values (dequant_word_lut2); wider codes use the arithmetic form
/// (dequant_word). Reads no shared memory: the caller loads every token first, so that the
/// compiler may interleave the tokens' work (it cannot move a load past these stores).
template <class Tr, class Spec, int kWords, bool kCoefficients>
KVQ_DEVICE void dequant_token(const PackedToken<Tr, Spec, kWords>& pk, unsigned char* tile, const RowOffsets<Tr>& ro,
                              float* kc2, float* kc4, int tok, int r) {
  constexpr int kB = Spec::kBits;
  constexpr int kP = 32 / kB;  // codes per word (a multiple of 4)
  constexpr int kG = Spec::kGroupSize;
  constexpr int kGroups = Tr::kHeadDim / kG;
  const std::uint32_t(&src)[kWords] = pk.src;
  float step[kGroups], zero[kGroups];
  std::uint32_t fold[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};  // bf16 columns 2i, 2i+1 in fold[i]
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const math::GroupMeta<Spec::kScaleType> mm = pk.meta[g];
    step[g] = common::scale_to_float<Spec::kScaleType>(mm.step);
    zero[g] = common::scale_to_float<Spec::kScaleType>(mm.zero);
    if constexpr (kCoefficients) {
      const float d2 = step[g] * step[g];
      if constexpr (Tr::kFold) {
        common::fold_token_columns<Tr::kTaylor4>(d2, g * Tr::kFoldColsPerGroup,
                                                 [&](int col, std::uint32_t v) { fold[col >> 1] |= v << (16 * (col & 1)); });
      } else {
        kc2[g * Tr::kTileN + tok] = -d2;
        if constexpr (Tr::kTaylor4) kc4[g * Tr::kTileN + tok] = d2 * d2;
      }
    }
  }
  if constexpr (kCoefficients && Tr::kFold) store_fold_row(kc2, tok, fold);  // kc2: the buffer's fold rows
  if constexpr (kB == 2) {
    // Table lookups (PRMT) per group: two 16-byte chunks of output per word.
    common::Lut2 lut[kGroups];
#pragma unroll
    for (int g = 0; g < kGroups; ++g) lut[g] = common::make_lut2<Tr::kElement>(step[g], zero[g]);
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      std::uint32_t out[8];
      common::dequant_word_lut2(src[i], lut[(16 * i) / kG], lut[(16 * i + 8) / kG], out);
#pragma unroll
      for (int q = 0; q < 2; ++q) store_chunk<Tr>(tile, ro, r, 2 * i + q, out + 4 * q);
    }
  } else {
    // Arithmetic form, one word (kP codes: kP/8 chunks of output) at a time.
    static_assert(kP >= 8, "2- and 4-bit codes (sm90_variant_supported)");
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      std::uint32_t out[kP / 2];
      common::dequant_word<kB, Tr::kElement>(
          src[i], [&](int k) { return common::slot_step<kB>(k, step[(i * kP + k) / kG]); },
          [&](int k) {
            const int g = (i * kP + k) / kG;
            return common::slot_zero<kB>(k, step[g], zero[g]);
          },
          out);
#pragma unroll
      for (int q = 0; q < kP / 8; ++q) store_chunk<Tr>(tile, ro, r, i * (kP / 8) + q, out + 4 * q);
    }
  }
}

/// Token `tok` past the quantized length (last tile): a zero row, and zero correction
/// coefficients for keys (the ring holds no data for it; the masks drop its scores, and a
/// zero row keeps P V finite).
template <class Tr, bool kCoefficients>
KVQ_DEVICE void zero_token(unsigned char* tile, const RowOffsets<Tr>& ro, float* kc2, float* kc4, int tok, int r) {
  const std::uint32_t zeros[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
#pragma unroll
  for (int ch = 0; ch < Tr::kChunksPerRow; ++ch) store_chunk<Tr>(tile, ro, r, ch, zeros);
  if constexpr (kCoefficients && Tr::kFold) {
    store_fold_row(kc2, tok, zeros);
  } else if constexpr (kCoefficients) {
#pragma unroll
    for (int g = 0; g < Tr::kKGroupsPerToken; ++g) {
      kc2[g * Tr::kTileN + tok] = 0.0f;
      if constexpr (Tr::kTaylor4) kc4[g * Tr::kTileN + tok] = 0.0f;
    }
  } else {
    (void)kc2, (void)kc4;
  }
}

/// One half of the producer warpgroup (lt: 0..63): keys or values of every tile, with its
/// own ring refills, barriers and named barrier, so that neither tensor waits for the
/// other's consumers.
template <class Tr, bool kKey>
KVQ_DEVICE void produce(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                        const Smem<Tr>& sm, int lt) {
  using H = Half<Tr, kKey>;
  constexpr int kR = Tr::kRingStages;
  constexpr int kS = Tr::kStages;
  constexpr bool kCoefficients = kKey && Tr::kCorrect;
  // The 16-byte phase of the head's metadata rows (every tile's rows share it).
  // Paged views: 0 (every piece starts 16-byte aligned, see issue_packed).
  const int skew = layout::is_paged_view_v<typename Tr::Layout> || c.n_qtiles == 0
                       ? 0
                       : static_cast<int>(reinterpret_cast<std::uintptr_t>(packed_meta<Tr, kKey>(p, c, 0)) & 15u);
  static_assert(H::kThreads % 8 == 0, "rows past the first token keep its swizzle phase");
  const RowOffsets<Tr> ro(lt);
  PageCursor<Tr> pages;
  pages.init(p.layout, c.b, c.h, c.t_begin);
  // The CTA's tiles [t_begin, t_end) (split-KV), j = n - t_begin their own index: buffers,
  // ring slots and barrier phases go by j; the quantized ones end at q_end.
  const int nb = c.t_begin, nt = c.t_end - c.t_begin;
  const int q_end = c.t_end < c.n_qtiles ? c.t_end : c.n_qtiles;
  if (lt == 0) {
#pragma unroll 1
    for (int m = nb; m < nb + kR - 1 && m < q_end; ++m) issue_packed<Tr, kKey>(p, c, sm, m, skew, pages);
  }
#pragma unroll 1
  for (int j = 0; j < nt; ++j) {
    const int n = nb + j;
    const int s = j % kS;
    const std::uint32_t parity = ((j / kS) & 1) ^ 1;
    if (n < q_end) {
      // Every thread of the half is done reading slot (j-1) % kR: one refills it. Then
      // tile n's packed data has landed.
      arch::named_barrier_sync(H::kBarrierId, H::kThreads);
      if (lt == 0 && n + kR - 1 < q_end) issue_packed<Tr, kKey>(p, c, sm, n + kR - 1, skew, pages);
      arch::mbarrier_wait(sm.ring_bar(kKey ? 0 : 1, j), static_cast<std::uint32_t>(j / kR) & 1u);
      const unsigned char* slot = sm.slot(j);
      const int valid = valid_tokens(c, n);
      float* kc2 = Tr::kFold ? sm.fold_rows(s) : reinterpret_cast<float*>(sm.base + Tr::kOffKc2 + s * Tr::kKcBytes);
      auto* kc4 = reinterpret_cast<float*>(sm.base + Tr::kOffKc4 + s * Tr::kKcBytes);
      arch::mbarrier_wait(sm.bar(H::kEmpty, s), parity);
      unsigned char* tile = kKey ? sm.k(s) : sm.v(s);
      const auto* codes = reinterpret_cast<const std::uint32_t*>(slot + H::kSlotCodes);
      const auto* meta = reinterpret_cast<const typename H::Meta*>(slot + H::kSlotMeta + skew);
      constexpr int kRows = Tr::kTileN / H::kThreads;  // tokens per thread
      // 2-bit codes, a whole tile: every token's packed data first, then the tokens'
      // dequantization, which the compiler interleaves. Wider codes go one token at a time:
      // their arithmetic form, doubled, costs more than the interleaving gains.
      constexpr bool kInterleave = H::Spec::kBits == 2;
      if (kInterleave && valid == Tr::kTileN) {
        PackedToken<Tr, typename H::Spec, H::kWords> pk[kRows];
#pragma unroll
        for (int j = 0; j < kRows; ++j) pk[j].load(codes, meta, lt + j * H::kThreads);
#pragma unroll
        for (int j = 0; j < kRows; ++j)
          dequant_token<Tr, typename H::Spec, H::kWords, kCoefficients>(pk[j], tile, ro, kc2, kc4, lt + j * H::kThreads,
                                                                         j * H::kThreads);
      } else {
#pragma unroll 1
        for (int j = 0; j < kRows; ++j) {
          const int tok = lt + j * H::kThreads;
          const RowOffsets<Tr> rt(tok);  // per token: offsets held across this loop are slower
          if (tok < valid) {
            PackedToken<Tr, typename H::Spec, H::kWords> pk;
            pk.load(codes, meta, tok);
            dequant_token<Tr, typename H::Spec, H::kWords, kCoefficients>(pk, tile, rt, kc2, kc4, tok, 0);
          } else {
            zero_token<Tr, kCoefficients>(tile, rt, kc2, kc4, tok, 0);
          }
        }
      }
      arch::fence_proxy_async();
      arch::mbarrier_arrive(sm.bar(H::kFull, s));
    } else {
      arch::mbarrier_wait(sm.bar(H::kEmpty, s), parity);
      if constexpr (kCoefficients && Tr::kFold) {
        // The fold step reads buffer s's B rows for every tile: zero rows for unquantized
        // tiles (once per buffer: only quantized tiles, which all come first, write them).
        if (n < (q_end > nb ? q_end : nb) + kS) {
          const std::uint32_t zeros[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
          for (int tok = lt; tok < Tr::kTileN; tok += H::kThreads) store_fold_row(sm.fold_rows(s), tok, zeros);
          arch::fence_proxy_async();
        }
      }
      const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
      if (p.chunk_maps && u0 >= c.tlen && u0 + Tr::kTileN <= c.u_needed) {
        // A whole tile of chunk rows: TMA (one thread; the copy engine swizzles).
        if (lt == 0) {
          arch::mbarrier_arrive_expect_tx(sm.bar(H::kFull, s), Tr::kTileBytes);
          const std::uint32_t dst = arch::smem_u32(kKey ? sm.k(s) : sm.v(s));
#pragma unroll
          for (int blk = 0; blk < Tr::kHeadDim / 64; ++blk)
            arch::tma_load_4d(dst + blk * (Tr::kTileN * 128), kKey ? p.k_chunk_map : p.v_chunk_map, sm.bar(H::kFull, s),
                              64 * blk, static_cast<int>(u0 - c.tlen), c.h, c.b);
        } else {
          arch::mbarrier_arrive(sm.bar(H::kFull, s));
        }
      } else {
        // Rows of the cache tail, or a tile that ends past the rows the CTA needs (zero-filled).
        issue_plain<Tr, kKey>(p, c, sm, n, s, lt);
        arch::cp_async_commit();
        arch::cp_async_wait<0>();
        arch::fence_proxy_async();
        arch::mbarrier_arrive(sm.bar(H::kFull, s));
      }
    }
  }
  arch::cp_async_wait<0>();
}

}  // namespace kvq::kernels::sm90
