"""Host-side helpers for tests: the dequantized cache (through the C ABI's CPU reference)
and the torch SDPA reference of kvq's attention built from it. Slow; for small shapes."""
import torch
import torch.nn.functional as F

from . import _lib


def dequantize_host(handle, shape, host_buffer, host_lengths, host_tables=None):
    """(keys, values, key_steps) float32 [batch, kv_heads, capacity, head_dim] of a host copy
    of a cache (uint8 CPU tensor) with host lengths (int32 CPU tensor) and, for a paged cache,
    host tables (int32 CPU tensor [batch, max_pages_per_entry], contiguous), through the C ABI's
    CPU reference: keys/values as attention sees them (rotated keys rotated back, centered ones
    with μ added), zero past each entry's length; key_steps the step of every quantized key
    element (rotated space for rotated keys), zero elsewhere."""
    keys = torch.zeros(shape, dtype=torch.float32)
    values = torch.zeros(shape, dtype=torch.float32)
    steps = torch.zeros(shape, dtype=torch.float32)
    tables = None if host_tables is None else host_tables.data_ptr()
    s = _lib.lib().kvq_c_dequantize_host(handle, host_buffer.data_ptr(), host_lengths.data_ptr(), tables,
                                         keys.data_ptr(), values.data_ptr(), steps.data_ptr())
    _lib.check("kvq_c_dequantize_host", s)
    return keys, values, steps


def dequantize(cache):
    """(keys, values, key_steps, lengths) of a KVCache, on the CPU (see dequantize_host)."""
    if cache.device.type == "cuda":
        torch.cuda.synchronize(cache.device)
    host = cache.buffer.cpu()
    lengths = cache.lengths.cpu()
    tables = None if cache.block_table is None else cache.block_table.cpu().contiguous()
    shape = (cache.batch, cache.kv_heads, cache.capacity, cache.head_dim)
    keys, values, steps = dequantize_host(cache._binding.handle, shape, host, lengths, tables)
    return keys, values, steps, lengths


def rotate_rows(x):
    """R·x for every row of x [..., head_dim] (float64 on the CPU), R the key rotation."""
    y = x.detach().to("cpu", torch.float64).contiguous().clone()
    d = y.shape[-1]
    _lib.check("kvq_c_rotate_rows_host", _lib.lib().kvq_c_rotate_rows_host(d, y.data_ptr(), y.numel() // d))
    return y


def correction_bias(qc, steps, scale, mode):
    """The correction subtracted from the scores of quantized keys: qc [H, nq, D] (the query as
    it scores the quantized keys), steps [H, nk, D] -> [H, nq, nk]; a_j = scale q_j Δ_j / 2."""
    if mode == "none" or steps.shape[1] == 0:
        return torch.zeros(qc.shape[0], qc.shape[1], steps.shape[1], dtype=qc.dtype)
    if mode in ("taylor2", "taylor4"):
        c = (scale * scale / 24.0) * torch.einsum("hid,htd->hit", qc * qc, steps * steps)
        if mode == "taylor4":
            c = c - (scale ** 4 / 2880.0) * torch.einsum("hid,htd->hit", qc ** 4, steps ** 4)
        return c
    out = torch.empty(qc.shape[0], qc.shape[1], steps.shape[1], dtype=qc.dtype)
    for t0 in range(0, steps.shape[1], 64):
        a = (0.5 * scale * qc[:, :, None, :] * steps[:, None, t0:t0 + 64, :]).abs()
        small = a < 1e-3
        safe = torch.where(small, torch.ones_like(a), a)
        big = safe + torch.log1p(-torch.exp(-2 * safe)) - torch.log(2 * safe)
        out[:, :, t0:t0 + 64] = torch.where(small, a * a / 6 - a ** 4 / 180, big).sum(-1)
    return out


def reference_attention(cache, q, k_chunk, v_chunk, correction, mask="none", scale=None):
    """torch SDPA (math backend, float64, CPU) over [dequantized cache ; chunk] with the
    correction of the quantized keys as an additive bias. Returns (o [B, nq, Hq, D] float64,
    lse [B, Hq, nq], mass [B, Hq, nq, 3])."""
    keys, values, steps, lengths = dequantize(cache)
    return sdpa_reference(keys, values, steps, lengths, cache.meta.key_tokens_per_group,
                          cache.variant["rotation"] != "none", q, k_chunk, v_chunk, correction, mask, scale)


def sdpa_reference(keys, values, steps, lengths, key_tokens_per_group, rotated, q, k_chunk, v_chunk, correction,
                   mask="none", scale=None):
    """The reference of reference_attention from a dequantized cache (dequantize_host)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    d = keys.shape[-1]
    kv_heads = keys.shape[1]
    scale = d ** -0.5 if scale is None else scale
    tpg = key_tokens_per_group
    q = q.detach().to("cpu", torch.float64)
    kc = k_chunk.detach().to("cpu", torch.float64)
    vc = v_chunk.detach().to("cpu", torch.float64)
    B, nq, hq, _ = q.shape
    nc = kc.shape[1]
    r = hq // kv_heads
    outs, lses, masses = [], [], []
    for b in range(B):
        L = int(lengths[b])
        ql = L - L % tpg
        kb = torch.cat([keys[b, :, :L].double(), kc[b].permute(1, 0, 2)], 1).repeat_interleave(r, 0)  # [Hq, nk, D]
        vb = torch.cat([values[b, :, :L].double(), vc[b].permute(1, 0, 2)], 1).repeat_interleave(r, 0)
        qh = q[b].permute(1, 0, 2)  # [Hq, nq, D]
        qc = rotate_rows(qh) if rotated else qh
        sh = steps[b, :, :ql].double().repeat_interleave(r, 0)
        nk = kb.shape[1]
        bias = torch.zeros(hq, nq, nk, dtype=torch.float64)
        bias[:, :, :ql] = -correction_bias(qc, sh, scale, correction)
        if mask == "causal":
            i = torch.arange(nq)[:, None]
            j = torch.arange(nc)[None, :]
            bias[:, :, L:] = bias[:, :, L:].masked_fill(j > i + (nc - nq), float("-inf"))
        with sdpa_kernel([SDPBackend.MATH]):
            o = F.scaled_dot_product_attention(qh[None], kb[None], vb[None], attn_mask=bias[None], scale=scale)[0]
        s = scale * torch.einsum("hid,htd->hit", qh, kb) + bias
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - lse[..., None])
        mass = torch.stack([p[..., :ql].sum(-1), p[..., ql:L].sum(-1), p[..., L:].sum(-1)], -1)
        outs.append(o.permute(1, 0, 2))
        lses.append(lse)
        masses.append(mass)
    return torch.stack(outs), torch.stack(lses), torch.stack(masses)


def exact_attention(q, k, v, scale=None, chunk_mask=None, num_chunk=0):
    """Attention of q [B, nq, Hq, D] over keys/values [B, nk, Hkv, D] in float64 on the CPU
    (GQA by head groups), the last num_chunk keys under the bottom-right causal mask when
    chunk_mask == "causal". Returns (o [B, nq, Hq, D], lse [B, Hq, nq]); a row without a key
    gets o = 0 and lse = -inf (kvq's convention)."""
    q = q.detach().to("cpu", torch.float64)
    k = k.detach().to("cpu", torch.float64)
    v = v.detach().to("cpu", torch.float64)
    B, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    r = hq // hkv
    kk = k.repeat_interleave(r, 2)
    vv = v.repeat_interleave(r, 2)
    s = scale * torch.einsum("bihd,bjhd->bhij", q, kk)
    if chunk_mask == "causal" and num_chunk:
        i = torch.arange(nq)[:, None]
        j = torch.arange(num_chunk)[None, :]
        s[..., nk - num_chunk:] = s[..., nk - num_chunk:].masked_fill(j > i + (num_chunk - nq), float("-inf"))
    lse = torch.logsumexp(s, -1) if nk else torch.full((B, hq, nq), float("-inf"), dtype=torch.float64)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    o = torch.einsum("bhij,bjhd->bihd", p, vv)
    return o, lse


def merge_states_reference(o_parts, lse_parts):
    """LSE = log sum_p exp(LSE_p), O = sum_p exp(LSE_p - LSE) O_p in float64 on the CPU:
    o_parts [P, B, nq, H, D], lse_parts [P, B, H, nq] -> (o [B, nq, H, D], lse [B, H, nq]);
    parts with LSE -inf weigh nothing, a row whose parts are all -inf gets o = 0, lse = -inf,
    a NaN LSE_p makes the row NaN."""
    o_parts = o_parts.detach().to("cpu", torch.float64)
    lse_parts = lse_parts.detach().to("cpu", torch.float64)
    lse = torch.logsumexp(lse_parts, 0)
    w = torch.exp(lse_parts - lse).nan_to_num(0.0)  # [P, B, H, nq]; all -inf rows: 0
    o = torch.einsum("pbhi,pbihd->bihd", w, torch.where(w.permute(0, 1, 3, 2)[..., None] > 0, o_parts, 0.0))
    nan = torch.isnan(lse_parts).any(0)  # [B, H, nq]: a NaN part makes the row NaN
    o[nan.transpose(1, 2)] = float("nan")
    return o, lse


def merge_states_host(o_parts, lse_parts):
    """kvq's CPU reference of the merge (reference/merge.hpp, through the C ABI): same
    arguments and results as merge_states_reference."""
    o_parts = o_parts.detach().cpu()
    lse_parts = lse_parts.detach().to("cpu", torch.float32).contiguous()
    P, B, n, H, D = o_parts.shape
    codes = {torch.bfloat16: _lib.BF16, torch.float16: _lib.FP16, torch.float32: _lib.FP32}
    st = o_parts.stride()
    out = torch.empty((B, n, H, D), dtype=torch.float64)
    lse = torch.empty((B, H, n), dtype=torch.float64)
    args = _lib.MERGE_ARGS.pack(o_parts.data_ptr(), lse_parts.data_ptr(), 0, 0, 0, st[1], st[2], st[3], 0, 0, 0,
                                st[0], B * H * n, n, P, B, H, D, codes[o_parts.dtype], codes[o_parts.dtype], 0, 0)
    _lib.check("kvq_c_merge_states_host", _lib.lib().kvq_c_merge_states_host(args, out.data_ptr(), lse.data_ptr()))
    return out, lse
