"""Context parallelism over kvq caches with torch.distributed: each rank holds a shard of
the quantized cache and runs kvq's kernels on it; torch.distributed (NCCL on GPUs) moves
the activations; kvq.merge_states combines partial results. No kvq call communicates.

Two ways to shard, for W ranks of a process group:

* **By heads (Ulysses-style)**, ``head_parallel_attention``: rank r owns kv heads
  [r*Hkv/W, (r+1)*Hkv/W) in a cache of its own (``KVCache(kv_heads=Hkv // W, ...)``) and
  the matching q heads (GQA groups stay whole). Activations arrive sharded by sequence
  ([batch, tokens/W, heads, head_dim] on each rank, rank order); an all-to-all turns them
  into [batch, tokens, heads/W, head_dim], the rank attends (and appends) as on one GPU,
  and the inverse all-to-all returns the output sharded by sequence. Every mask works,
  and PerToken codes are per (token, head), so a shard holds exactly the codes of the
  unsharded cache.
* **By tokens (ring-style)**, ``sequence_parallel_attention``: every rank holds all heads
  of its own share of the cached tokens (it appends its share of each chunk). Queries
  are all-gathered, every rank attends them to its span of the cache and its share of
  the chunk with ``return_lse``, an all-to-all sends each partial (O, LSE) to the rank
  that owns those queries, and kvq.merge_states combines the W parts. The order of cached
  tokens does not matter to attention over the cache (no mask inside it); with PerToken
  keys the result equals the unsharded cache's up to floating-point order. A causal mask
  (bottom-right aligned over the chunk) needs the whole chunk in one call: the chunk's
  keys and values are then all-gathered and rank 0 attends to them.

Token counts (queries and chunk) must divide by W; heads too for head parallelism.

The collectives are torch.distributed's (all_to_all_single, all_gather_into_tensor), so
they run on the current stream's NCCL communicator on GPUs and on gloo on CPUs; the
functions are written against a generic ``attend`` so that the same code paths serve
tests on CPUs (``_head_parallel``, ``_sequence_parallel``).
"""
import torch
import torch.distributed as dist


def _world(group):
    return dist.get_world_size(group), dist.get_rank(group)


def seq_to_heads(x, group=None):
    """[batch, n, H, D] (this rank's n tokens of a sequence sharded in rank order) ->
    [batch, W*n, H/W, D] (every token of this rank's H/W heads): one all-to-all."""
    w, _ = _world(group)
    if w == 1:
        return x
    b, n, h, d = x.shape
    if h % w != 0:
        raise ValueError("kvq.distributed: %d heads do not divide among %d ranks" % (h, w))
    send = x.reshape(b, n, w, h // w, d).permute(2, 0, 1, 3, 4).contiguous()  # [dest rank, b, n, h/w, d]
    recv = torch.empty_like(send)  # [source rank, b, n, h/w, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, w * n, h // w, d)


def heads_to_seq(x, group=None):
    """The inverse of seq_to_heads: [batch, N, h, D] (this rank's h heads of every token) ->
    [batch, N/W, W*h, D] (this rank's tokens, every head)."""
    w, _ = _world(group)
    if w == 1:
        return x
    b, N, h, d = x.shape
    if N % w != 0:
        raise ValueError("kvq.distributed: %d tokens do not divide among %d ranks" % (N, w))
    n = N // w
    send = x.reshape(b, w, n, h, d).transpose(0, 1).contiguous()  # [dest rank, b, n, h, d]
    recv = torch.empty_like(send)  # [source rank (its heads), b, n, h, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, n, w * h, d)


def all_gather_tokens(x, group=None):
    """[batch, n, H, D] on every rank -> [batch, W*n, H, D] (rank order)."""
    w, _ = _world(group)
    if w == 1:
        return x
    x = x.contiguous()
    out = torch.empty((w * x.numel(),), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.reshape(-1), group=group)
    b, n, h, d = x.shape
    return out.view(w, b, n, h, d).transpose(0, 1).reshape(b, w * n, h, d)


def _head_parallel(attend, q, k_chunk, v_chunk, group):
    qh, kh, vh = seq_to_heads(q, group), seq_to_heads(k_chunk, group), seq_to_heads(v_chunk, group)
    return heads_to_seq(attend(qh, kh, vh), group), kh, vh


def _sequence_parallel(attend, merge, q, k_chunk, v_chunk, group, causal):
    """attend(q, k, v, chunk_mask) -> (o [b, Nq, H, D], lse [b, H, Nq] float32) over this rank's keys;
    merge(o_parts [W, b, n, H, D], lse_parts [W, b, H, n]) -> o [b, n, H, D]."""
    w, rank = _world(group)
    b, n, hq, d = q.shape
    q_all = all_gather_tokens(q, group)
    if causal:
        kc, vc = all_gather_tokens(k_chunk, group), all_gather_tokens(v_chunk, group)
        if rank != 0:
            kc, vc = kc[:, :0], vc[:, :0]
        o, lse = attend(q_all, kc, vc, "causal")
    else:
        o, lse = attend(q_all, k_chunk, v_chunk, "none")
    if w == 1:
        return merge(o[None], lse[None])
    # Partial results for rank s's queries go to rank s.
    o_send = o.reshape(b, w, n, hq, d).transpose(0, 1).contiguous()  # [dest, b, n, hq, d]
    lse_send = lse.reshape(b, hq, w, n).permute(2, 0, 1, 3).contiguous()  # [dest, b, hq, n]
    o_parts, lse_parts = torch.empty_like(o_send), torch.empty_like(lse_send)
    dist.all_to_all_single(o_parts, o_send, group=group)
    dist.all_to_all_single(lse_parts, lse_send, group=group)
    return merge(o_parts, lse_parts)


def _check_kwargs(kw):
    """The keyword arguments passed on to KVCache.attention: not those the sharding sets."""
    for k in ("return_lse", "return_mass", "mask"):
        if k in kw:
            raise TypeError("kvq.distributed: %r is set by the sharding (pass mask= as the function's own argument)" % k)


def head_parallel_attention(cache, q, k_chunk, v_chunk, *, group=None, append=False, mask="none", **kw):
    """Attention of sequence-sharded q [batch, nq/W, Hq, D] over [this rank's head shard of the
    cache ; the chunk k_chunk/v_chunk [batch, nc/W, Hkv, D] (sequence-sharded)], returned
    sequence-sharded like q. `cache` holds Hkv/W kv heads. With append=True the chunk's
    keys and values of this rank's heads are appended after the attention. Other keyword
    arguments go to KVCache.attention (correction, scale)."""
    _check_kwargs(kw)
    o, kh, vh = _head_parallel(lambda a, b_, c: cache.attention(a, b_, c, mask=mask, **kw), q, k_chunk, v_chunk,
                               group)
    if append:
        cache.append(kh, vh)
    return o


def sequence_parallel_attention(cache, q, k_chunk, v_chunk, *, group=None, append=False, mask="none", **kw):
    """Attention of sequence-sharded q [batch, nq/W, Hq, D] over [every rank's span of the
    cache ; the chunk, of which this rank holds k_chunk/v_chunk [batch, nc/W, Hkv, D]],
    returned sequence-sharded like q. `cache` holds all heads of this rank's cached tokens;
    with append=True this rank's share of the chunk is appended to it after the attention.
    Other keyword arguments go to KVCache.attention (correction, scale)."""
    from .states import merge_states

    _check_kwargs(kw)
    if mask not in ("none", "causal"):
        raise ValueError("kvq: mask must be 'none' or 'causal', got %r" % (mask,))

    def attend(q_all, kc, vc, m):
        return cache.attention(q_all, kc, vc, mask=m, return_lse=True, **kw)

    o = _sequence_parallel(attend, lambda op, lp: merge_states(op, lp, return_lse=False), q, k_chunk, v_chunk,
                           group, mask == "causal")
    if append:
        cache.append(k_chunk, v_chunk)
    return o
