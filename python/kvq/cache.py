"""KVCache: one attention layer's low-bit KV cache on a CUDA device, with append and fused
attention through the kvq torch ops."""
import contextlib
import ctypes
import math
import weakref

import torch

from . import _lib, ops

_DTYPES = {torch.bfloat16: _lib.BF16, torch.float16: _lib.FP16}


class CacheMeta:
    """What the argument checks need to know of a cache (kvq._validate)."""

    __slots__ = ("batch", "kv_heads", "head_dim", "capacity", "dtype_name", "device_index", "corrections",
                 "nbytes", "key_tokens_per_group")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class _Binding:
    """The C handle of a cache and what its op calls reuse (packed argument buffers, bound
    C functions); kept in kvq.ops._REGISTRY under cache_id."""

    def __init__(self, handle, meta, buffer, lengths, error, dtype, block_table=None):
        L = _lib.lib()
        self.handle = handle
        self.meta = meta
        self.buffer = buffer
        self.lengths = lengths
        self.error = error
        self.block_table = block_table
        self.dtype = dtype  # the activations' torch dtype
        self.dtype_code = _DTYPES[dtype]
        self.device = buffer.device  # torch.device("cuda", meta.device_index), or the CPU
        self.device_index = meta.device_index  # -1: a CPU cache (host-only handle, the C reference)
        self.host = meta.device_index < 0
        # Remembered attention argument checks (kvq.ops._attention_checks).
        self.attention_checks = {}
        self.append_buf = ctypes.create_string_buffer(_lib.APPEND_ARGS.size)
        self.attention_buf = ctypes.create_string_buffer(_lib.ATTENTION_ARGS.size)
        self.append_addr = ctypes.addressof(self.append_buf)
        self.attention_addr = ctypes.addressof(self.attention_buf)
        self.append_fn = L.kvq_c_append
        self.attention_fn = L.kvq_c_attention
        self.cache_id = -1


def _on(device):
    """torch.cuda.device(device) for a CUDA device; nothing for the CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _free(cache_id, handle):
    ops.unregister(cache_id)
    try:
        _lib.lib().kvq_c_cache_destroy(handle)
    except ImportError:  # interpreter shutdown
        pass


def _find_variant(head_dim, bits, key_granularity, group_size, rotation, v_bits, v_group, paged=False):
    want = dict(k_bits=bits, key_granularity=key_granularity, head_dim=head_dim, rotation=rotation,
                v_bits=v_bits if v_bits is not None else bits)
    if group_size is not None:
        want["k_group"] = group_size
    if v_group is not None:
        want["v_group"] = v_group
    compiled = _lib.compiled_variants(paged=paged)
    matches = [(keys, modes) for keys, modes in compiled if all(keys[k] == v for k, v in want.items())]
    if len(matches) != 1:
        listing = "\n  ".join(
            "bits=%(k_bits)d key_granularity=%(key_granularity)s group_size=%(k_group)d rotation=%(rotation)s "
            "head_dim=%(head_dim)d (values: bits=%(v_bits)d group=%(v_group)d)" % k + " corrections=" +
            ",".join(sorted(m)) for k, m in compiled)
        what = ("no compiled" if not matches else "several compiled") + (" paged" if paged else "")
        raise ValueError("kvq: %s cache variant matches %s; the library has:\n  %s" % (what, want, listing))
    return matches[0]


class KVCache:
    """One layer's quantized KV cache (batch entries of `kv_heads` heads, `capacity` tokens each).

    The variant is one of the library's compiled set (kvq.compiled_variants()): `bits` (2 or
    4), `key_granularity` ("per_token" or "per_channel"), `group_size` (key group: channels of
    a token, or tokens of a channel), `rotation` ("none", "hadamard", "hadamard_centered"),
    `head_dim` (64 or 128). `dtype` is the activations' dtype (bfloat16 or float16).

    It owns `buffer` (uint8, the packed cache) and `lengths` (int32 [batch], the cached tokens
    of each entry) on `device`. PagedKVCache is the paged form (a page pool and block tables);
    here `block_table` is None. With device="cpu" the ops run kvq's C reference (float64,
    slow; an append that does not fit raises instead of flagging the entry).
    """

    def __init__(self, batch, kv_heads, capacity, *, head_dim=128, bits=2, key_granularity="per_token",
                 group_size=None, rotation="none", dtype=torch.bfloat16, device="cuda", correction="taylor2",
                 q_heads=None, v_bits=None, v_group=None):
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError("kvq: capacity must be a non-negative int, got %r" % (capacity,))
        self._create(batch, kv_heads, head_dim, bits, key_granularity, group_size, rotation, dtype, device, correction,
                     q_heads, v_bits, v_group, capacity=capacity)

    def _create(self, batch, kv_heads, head_dim, bits, key_granularity, group_size, rotation, dtype, device,
                correction, q_heads, v_bits, v_group, capacity=None, paged=None):
        """Checks the arguments, creates the C handle (contiguous: `capacity`; paged: `paged` =
        (num_pages, page_tokens, max_pages_per_entry)) and the cache's tensors, plans."""
        device = torch.device(device)
        if device.type not in ("cuda", "cpu"):
            raise ValueError("kvq: %s runs on a CUDA device (or on the CPU reference), got %s"
                             % (type(self).__name__, device))
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        host = device.type == "cpu"
        index = -1 if host else device.index
        if dtype not in _DTYPES:
            raise TypeError("kvq: dtype must be torch.bfloat16 or torch.float16, got %s" % (dtype,))
        if rotation not in _lib.ROTATIONS:
            raise ValueError("kvq: rotation must be one of %s, got %r" % (sorted(_lib.ROTATIONS), rotation))
        if key_granularity not in ("per_token", "per_channel"):
            raise ValueError("kvq: key_granularity must be 'per_token' or 'per_channel', got %r" % (key_granularity,))
        for name, v in (("batch", batch), ("kv_heads", kv_heads)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError("kvq: %s must be a positive int, got %r" % (name, v))
        keys, corrections = _find_variant(head_dim, bits, key_granularity, group_size, rotation, v_bits, v_group,
                                          paged=paged is not None)
        if correction not in corrections:
            raise ValueError("kvq: correction %r is not compiled for this %svariant (compiled: %s)"
                             % (correction, "paged " if paged else "", ", ".join(sorted(corrections))))
        L = _lib.lib()
        v = _lib.Variant(keys["k_bits"], keys["k_group"],
                         _lib.PER_TOKEN if keys["key_granularity"] == "per_token" else _lib.PER_CHANNEL,
                         keys["v_bits"], keys["v_group"], keys["head_dim"], _lib.ROTATIONS[keys["rotation"]])
        handle = ctypes.c_void_p()
        block_table = None
        # The plans query the device: make it current while they are made.
        with _on(device):
            if paged is None:
                s = L.kvq_c_cache_create(ctypes.byref(v), batch, kv_heads, capacity, _DTYPES[dtype], index,
                                         ctypes.byref(handle))
                hint = ("capacity must be a multiple of the key group (%d tokens)" % keys["k_group"]
                        if s == _lib.ERROR_INVALID_ARGUMENT and key_granularity == "per_channel" else "")
            else:
                num_pages, page_tokens, max_pages = paged
                # Every column starts outside the pool (-1): an append through a column the engine
                # has not assigned leaves its entry untouched and flags it.
                block_table = torch.full((batch, max_pages), -1, dtype=torch.int32, device=device)
                s = L.kvq_c_paged_cache_create(ctypes.byref(v), batch, kv_heads, page_tokens, num_pages, max_pages,
                                               block_table.data_ptr(), max_pages, _DTYPES[dtype], index,
                                               ctypes.byref(handle))
                hint = ("page_tokens must be a multiple of 64 (or of 32 on sm_90) and of the key group"
                        if s in (_lib.ERROR_INVALID_ARGUMENT, _lib.ERROR_NOT_SUPPORTED) else "")
        _lib.check("kvq_c_paged_cache_create" if paged else "kvq_c_cache_create", s, hint)
        try:
            self._setup(L, handle, keys, corrections, correction, dtype, device, batch, kv_heads,
                        L.kvq_c_cache_capacity(handle), head_dim, block_table)
        except BaseException:
            if getattr(self, "_finalizer", None) is None:
                L.kvq_c_cache_destroy(handle)
            raise
        self.prepare(q_heads=q_heads or kv_heads, corrections=(correction,))

    def _setup(self, L, handle, keys, corrections, correction, dtype, device, batch, kv_heads, capacity, head_dim,
               block_table):
        self.variant = keys
        self._default_scale = 1.0 / math.sqrt(head_dim)
        self.corrections = frozenset(corrections)
        self.correction = correction
        self.dtype = dtype
        self.device = device
        nbytes = L.kvq_c_cache_bytes(handle)
        self.meta = CacheMeta(batch=batch, kv_heads=kv_heads, head_dim=head_dim, capacity=capacity,
                              dtype_name=str(dtype).replace("torch.", ""),
                              device_index=-1 if device.type == "cpu" else device.index,
                              corrections=self.corrections, nbytes=nbytes,
                              key_tokens_per_group=L.kvq_c_cache_key_tokens_per_group(handle))
        self.buffer = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.int32, device=device)
        self.error = torch.zeros(1, dtype=torch.int32, device=device)
        self._block_table = block_table
        self._binding = _Binding(handle, self.meta, self.buffer, self.lengths, self.error, dtype, block_table)
        self.cache_id = ops.register(self._binding)
        self._binding.cache_id = self.cache_id
        self._finalizer = weakref.finalize(self, _free, self.cache_id, handle.value)

    # ---- properties ------------------------------------------------------------------
    @property
    def batch(self):
        return self.meta.batch

    @property
    def kv_heads(self):
        return self.meta.kv_heads

    @property
    def head_dim(self):
        return self.meta.head_dim

    @property
    def capacity(self):
        return self.meta.capacity

    @property
    def block_table(self):
        """The paged cache's int32 [batch, max_pages_per_entry] block table on the device (None
        for a contiguous cache): edit it in place, never replace it."""
        return self._block_table

    @property
    def nbytes(self):
        """Bytes of the cache allocation."""
        return self.meta.nbytes

    def bf16_nbytes(self, tokens=None):
        """Bytes of a bf16 K and V cache of `tokens` tokens per entry (default: the capacity)."""
        t = self.capacity if tokens is None else tokens
        return 2 * 2 * self.batch * self.kv_heads * t * self.head_dim

    # ---- plans -----------------------------------------------------------------------
    def prepare(self, q_heads=None, corrections=None, masks=("none",)):
        """Plans the attention of these (q heads, correction, mask) combinations now (the first
        call of a combination plans it otherwise): do it before capturing a CUDA graph."""
        L = _lib.lib()
        for c in corrections or (self.correction,):
            for m in masks:
                if c not in self.corrections:
                    raise ValueError("kvq: correction %r is not compiled for this variant" % (c,))
                if self.device.type == "cpu":
                    continue  # the CPU reference has no plan
                with torch.cuda.device(self.device):
                    s = L.kvq_c_prepare_attention(self._binding.handle, _lib.CORRECTIONS[c], _lib.MASKS[m],
                                                  q_heads or self.kv_heads)
                _lib.check("kvq_c_prepare_attention", s)

    # ---- operations ------------------------------------------------------------------
    def append(self, k, v):
        """Quantizes k and v ([batch, tokens, kv_heads, head_dim]) and appends them to every entry,
        on torch's current stream. An entry that would overflow the capacity is left as it is
        and flagged in `error` (see check_errors)."""
        ops.run(lambda: ops.append_op(self.buffer, self.lengths, self._block_table, k, v, self.error, self.cache_id, -1),
                lambda: ops.append_launch(self._binding, self.buffer, self.lengths, k, v, self.error, -1), k)

    def attention(self, q, k_chunk=None, v_chunk=None, *, correction=None, mask="none", scale=None,
                  return_lse=False, return_mass=False):
        """Fused attention of q [batch, num_q, q_heads, head_dim] over [cache ; k_chunk/v_chunk]
        (the current chunk, [batch, num_chunk, kv_heads, head_dim], not appended).

        Returns o (like q), or a tuple (o, lse, mass) with lse [batch, q_heads, num_q] float32
        (natural log) when return_lse and mass [batch, q_heads, num_q, 3] float32 (softmax mass
        on the quantized cache, the unquantized tail, the chunk) when return_mass."""
        if k_chunk is None or v_chunk is None:
            if k_chunk is not None or v_chunk is not None:
                raise ValueError("kvq: pass both k_chunk and v_chunk or neither")
            k_chunk = v_chunk = q.new_empty((q.shape[0], 0, self.kv_heads, q.shape[3]))
        cc = _lib.CORRECTIONS.get(self.correction if correction is None else correction)
        if cc is None:
            raise ValueError("kvq: correction must be one of %s, got %r" % (sorted(_lib.CORRECTIONS), correction))
        mc = _lib.MASKS.get(mask)
        if mc is None:
            raise ValueError("kvq: mask must be 'none' or 'causal', got %r" % (mask,))
        s = self._default_scale if scale is None else float(scale)
        # ops.run's logic, inlined: this is the per-call host path.
        if ops.direct_call_ok(q):
            o, lse, mass = ops.attention_launch(self._binding, self.buffer, self.lengths, self.error, q, k_chunk, v_chunk,
                                                cc, mc, s, return_lse, return_mass, -1, op_outputs=False)
        else:
            o, lse, mass = ops.attention_op(self.buffer, self.lengths, self._block_table, self.error, q, k_chunk,
                                            v_chunk, self.cache_id, cc, mc, s, return_lse, return_mass, -1)
        if not return_lse and not return_mass:
            return o
        return (o,) + ((lse,) if return_lse else ()) + ((mass,) if return_mass else ())

    def reset(self):
        """Empties every entry (on the current stream)."""
        self.lengths.zero_()
        self.error.zero_()

    def check_errors(self):
        """Raises where an append left an entry untouched or, for a paged cache, an attention
        skipped an entry (reads the device: synchronizes), and clears the word."""
        e = int(self.error.item())
        if e:
            self.error.zero_()
            what = []
            if e & _lib.APPEND_ERROR_CAPACITY:
                what.append("an append exceeded the capacity (%d tokens)" % self.capacity)
            if e & _lib.APPEND_ERROR_NEGATIVE_LENGTH:
                what.append("a device length was negative")
            if e & _lib.APPEND_ERROR_PAGE:  # the same bit as ATTENTION_ERROR_PAGE
                what.append("a block-table column of an entry's tokens held no page of the pool (appends left "
                            "the entry unchanged, attention did not write its output rows)")
            raise _lib.KvqError("kvq", _lib.ERROR_CAPACITY_EXCEEDED if e & 1 else _lib.ERROR_INVALID_ARGUMENT,
                                "; ".join(what) + "; the entries concerned were left unchanged")

    def __repr__(self):
        return ("KVCache(batch=%d, kv_heads=%d, capacity=%d, head_dim=%d, bits=%d, key_granularity=%s, "
                "group_size=%d, rotation=%s, dtype=%s, device=%s, %.1f MiB)"
                % (self.batch, self.kv_heads, self.capacity, self.head_dim, self.variant["k_bits"],
                   self.variant["key_granularity"], self.variant["k_group"], self.variant["rotation"],
                   self.meta.dtype_name, self.device, self.nbytes / 2 ** 20))


class PagedKVCache(KVCache):
    """One layer's quantized KV cache as a pool of pages addressed through block tables.

    `num_pages` pages of `page_tokens` tokens each (every kv head of the layer); entry b's
    token t lives in page `block_table[b, t // page_tokens]`, and an entry holds at most
    `max_pages_per_entry` pages (capacity = max_pages_per_entry * page_tokens). The engine
    manages the pages: it edits `block_table` (int32 [batch, max_pages_per_entry] on the device,
    every column -1 at the start) and `lengths` in place between calls, in stream order. Pages
    may be listed in any order and shared by several entries' tables (attention only reads
    them); an append writes at each entry's length into the page its table lists there.

    Variants: those of kvq.compiled_variants(paged=True) (INT2/INT4 PerToken G128 and rotated
    INT2, head dim 128, corrections none and taylor2). page_tokens: a multiple of 64 (of 32
    on sm_90). A table column outside the pool for tokens an entry holds or appends is never
    read or written: the append leaves the entry unchanged, the attention skips it (its output
    rows are not written), and both flag `error` (check_errors raises).

    Rolling window with sinks (Self-Forcing, LongLive), per chunk of one page:
        page = free.pop(); cache.block_table[0, n] = page; append at length n * page_tokens ...
    see python/examples/self_forcing_like.py --window W --sinks S.
    """

    def __init__(self, batch, kv_heads, *, num_pages, page_tokens, max_pages_per_entry, head_dim=128, bits=2,
                 key_granularity="per_token", group_size=None, rotation="none", dtype=torch.bfloat16, device="cuda",
                 correction="taylor2", q_heads=None, v_bits=None, v_group=None):
        for name, v, lo in (("num_pages", num_pages, 0), ("page_tokens", page_tokens, 1),
                            ("max_pages_per_entry", max_pages_per_entry, 1)):
            if not isinstance(v, int) or v < lo:
                raise ValueError("kvq: %s must be an int >= %d, got %r" % (name, lo, v))
        self.num_pages = num_pages
        self.page_tokens = page_tokens
        self.max_pages_per_entry = max_pages_per_entry
        self._create(batch, kv_heads, head_dim, bits, key_granularity, group_size, rotation, dtype, device, correction,
                     q_heads, v_bits, v_group, paged=(num_pages, page_tokens, max_pages_per_entry))

    def __repr__(self):
        return ("PagedKVCache(batch=%d, kv_heads=%d, num_pages=%d, page_tokens=%d, max_pages_per_entry=%d, "
                "head_dim=%d, bits=%d, rotation=%s, dtype=%s, device=%s, %.1f MiB)"
                % (self.batch, self.kv_heads, self.num_pages, self.page_tokens, self.max_pages_per_entry,
                   self.head_dim, self.variant["k_bits"], self.variant["rotation"], self.meta.dtype_name,
                   self.device, self.nbytes / 2 ** 20))
