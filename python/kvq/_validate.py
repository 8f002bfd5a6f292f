"""Argument checks of the kvq ops, on anything with ``shape``, ``dtype``, ``device`` and
``stride()`` (torch tensors, fake tensors under torch.compile, or test doubles): they
raise before anything is launched. Nothing here imports torch.
"""

ACTIVATION_DTYPES = ("bfloat16", "float16")
# q, k_chunk, v_chunk and o are read and written 16 bytes at a time: strides in elements
# must be multiples of 8 (the head_dim stride is 1).
_ATTENTION_STRIDE_MULTIPLE = 8


_DTYPE_NAMES = {}


def dtype_name(dtype):
    """'bfloat16' for torch.bfloat16 (memoized: this runs on every call)."""
    n = _DTYPE_NAMES.get(dtype)
    if n is None:
        n = _DTYPE_NAMES[dtype] = str(dtype).replace("torch.", "")
    return n


def _where(t):
    d = t.device
    return "%s:%s" % (d.type, d.index) if d.index is not None else d.type


def check_tensor(name, t, meta, heads, tokens=None, what="[batch, tokens, heads, head_dim]"):
    """Checks one [batch, tokens, heads, head_dim] activation against the cache `meta`
    (batch, head_dim, dtype name, device index: -1 for a CPU cache). Returns (shape, strides): the 4 sizes and
    the (batch, token, head) strides, 0 for a dimension of size 1 (never stepped over)."""
    try:
        shape, dev, dt, st = t.shape, t.device, t.dtype, t.stride()
    except (AttributeError, TypeError):
        raise TypeError("kvq: %s must be a torch.Tensor, got %s" % (name, type(t).__name__)) from None
    if meta.device_index < 0:  # a CPU cache (the reference backend)
        if dev.type != "cpu":
            raise ValueError("kvq: %s is on %s but the cache is on cpu" % (name, _where(t)))
    elif dev.type != "cuda":
        raise ValueError("kvq: %s is on %s; kvq runs on CUDA tensors (the cache is on cuda:%d)"
                         % (name, _where(t), meta.device_index))
    elif dev.index is not None and dev.index != meta.device_index:
        raise ValueError("kvq: %s is on %s but the cache is on cuda:%d" % (name, _where(t), meta.device_index))
    dn = dtype_name(dt)
    if dn != meta.dtype_name:
        if dn not in ACTIVATION_DTYPES:
            raise TypeError("kvq: %s has dtype %s; kvq takes bfloat16 or float16" % (name, dn))
        raise TypeError("kvq: %s has dtype %s but the cache was made for %s" % (name, dn, meta.dtype_name))
    if len(shape) != 4:
        raise ValueError("kvq: %s must be 4-D %s, got shape %s" % (name, what, list(shape)))
    b, n, h, d = shape
    if b != meta.batch:
        raise ValueError("kvq: %s has batch %d but the cache has batch %d" % (name, b, meta.batch))
    if d != meta.head_dim:
        raise ValueError("kvq: %s has head_dim %d but the cache has head_dim %d" % (name, d, meta.head_dim))
    if heads is not None and h != heads:
        raise ValueError("kvq: %s has %d heads, expected %d" % (name, h, heads))
    if tokens is not None and n != tokens:
        raise ValueError("kvq: %s has %d tokens, expected %d" % (name, n, tokens))
    sb, sn, sh, sd = st
    if d > 1 and sd != 1:
        raise ValueError("kvq: %s must have a unit stride along head_dim (strides %s); call .contiguous()"
                         % (name, list(st)))
    if sb < 0 or sn < 0 or sh < 0 or sd < 0:
        raise ValueError("kvq: %s has a negative stride (strides %s)" % (name, list(st)))
    return shape, (sb if b > 1 else 0, sn if n > 1 else 0, sh if h > 1 else 0)


def effective_strides(t):
    """(batch, token, head) strides with 0 for dimensions of size 1 (never stepped over)."""
    sh, st = t.shape, t.stride()
    return (st[0] if sh[0] > 1 else 0, st[1] if sh[1] > 1 else 0, st[2] if sh[2] > 1 else 0)


def check_append(meta, k, v):
    """Checks append(k, v); returns (tokens, k strides, v strides)."""
    (_, kn, _, _), ks = check_tensor("k", k, meta, meta.kv_heads)
    _, vs = check_tensor("v", v, meta, meta.kv_heads, tokens=kn)
    if kn > meta.capacity:
        raise ValueError("kvq: appending %d tokens to a cache of capacity %d" % (kn, meta.capacity))
    return kn, ks, vs


def _check_attention_strides(name, strides):
    for s, dim in zip(strides, ("batch", "token", "head")):
        if s % _ATTENTION_STRIDE_MULTIPLE != 0:
            raise ValueError("kvq: %s's %s stride %d is not a multiple of %d elements (16 bytes); "
                             "call .contiguous()" % (name, dim, s, _ATTENTION_STRIDE_MULTIPLE))


def check_attention(meta, q, k_chunk, v_chunk, correction, mask, scale):
    """Checks attention(q, k_chunk, v_chunk); returns (batch, num_q, q_heads, num_chunk,
    q strides, k_chunk strides, v_chunk strides)."""
    (b, nq, hq, _), qs = check_tensor("q", q, meta, None)
    if hq < meta.kv_heads or hq % meta.kv_heads != 0:
        raise ValueError("kvq: q has %d heads, which is not a multiple of the cache's %d kv heads"
                         % (hq, meta.kv_heads))
    if hq > 65535:
        raise ValueError("kvq: q has %d heads; at most 65535 are supported" % hq)
    (_, nc, _, _), ks = check_tensor("k_chunk", k_chunk, meta, meta.kv_heads)
    _, vs = check_tensor("v_chunk", v_chunk, meta, meta.kv_heads, tokens=nc)
    _check_attention_strides("q", qs)
    _check_attention_strides("k_chunk", ks)
    _check_attention_strides("v_chunk", vs)
    if correction not in meta.corrections:
        raise ValueError("kvq: correction %r is not compiled for this cache variant (compiled: %s)"
                         % (correction, ", ".join(sorted(meta.corrections))))
    if mask != "none" and mask != "causal":
        raise ValueError("kvq: mask must be 'none' or 'causal', got %r" % (mask,))
    if not (scale > 0.0 and scale < float("inf")):
        raise ValueError("kvq: scale must be positive and finite, got %r" % (scale,))
    return b, nq, hq, nc, qs, ks, vs


def check_alignment(name, t):
    """The 16-byte alignment of a real tensor's data (not checkable on fake tensors)."""
    p = t.data_ptr()
    if p % 16 != 0 and t.numel() > 0:
        raise ValueError("kvq: %s's data is not 16-byte aligned (a view at an odd offset?); call .contiguous()"
                         % name)


MERGE_DTYPES = ("bfloat16", "float16", "float32")


def check_merge(o_parts, lse_parts):
    """Checks merge_states(o_parts, lse_parts): o_parts [parts, batch, num_q, heads, head_dim]
    (bfloat16, float16 or float32; unit head_dim stride), lse_parts [parts, batch, heads,
    num_q] float32 with every part dense (as kvq's attention writes LSE), both on one CUDA
    device (or both on the CPU: the reference backend). Returns ((parts, batch, num_q, heads, head_dim), the (part, batch, token, head)
    strides of o_parts, the part stride of lse_parts), strides 0 along dimensions of size 1."""
    for name, t in (("o_parts", o_parts), ("lse_parts", lse_parts)):
        if not all(hasattr(t, a) for a in ("shape", "dtype", "device", "stride")):
            raise TypeError("kvq: %s must be a torch.Tensor, got %s" % (name, type(t).__name__))
        if t.device.type not in ("cuda", "cpu"):
            raise ValueError("kvq: %s is on %s; merge_states runs on CUDA (or CPU) tensors" % (name, _where(t)))
    if _where(o_parts) != _where(lse_parts):
        raise ValueError("kvq: o_parts is on %s but lse_parts on %s" % (_where(o_parts), _where(lse_parts)))
    if len(o_parts.shape) != 5:
        raise ValueError("kvq: o_parts must be 5-D [parts, batch, num_q, heads, head_dim], got shape %s"
                         % list(o_parts.shape))
    p, b, n, h, d = o_parts.shape
    if dtype_name(o_parts.dtype) not in MERGE_DTYPES:
        raise TypeError("kvq: o_parts has dtype %s; merge_states takes bfloat16, float16 or float32"
                        % dtype_name(o_parts.dtype))
    if dtype_name(lse_parts.dtype) != "float32":
        raise TypeError("kvq: lse_parts has dtype %s; it must be float32" % dtype_name(lse_parts.dtype))
    if tuple(lse_parts.shape) != (p, b, h, n):
        raise ValueError("kvq: lse_parts must be [parts, batch, heads, num_q] = %s to match o_parts %s, got %s"
                         % ([p, b, h, n], list(o_parts.shape), list(lse_parts.shape)))
    if p < 1:
        raise ValueError("kvq: merge_states needs at least one part")
    if d < 32 or d > 512 or d % 32 != 0:
        raise ValueError("kvq: head_dim %d is not supported by merge_states (a multiple of 32 in [32, 512])" % d)
    os_ = o_parts.stride()
    if os_[4] != 1:
        raise ValueError("kvq: o_parts must have a unit stride along head_dim (strides %s); call .contiguous()"
                         % list(os_))
    if min(os_) < 0 or min(lse_parts.stride()) < 0:
        raise ValueError("kvq: merge_states takes no negative strides")
    ls = lse_parts.stride()
    want = (h * n, n, 1)
    for size, got, need in zip((b, h, n), ls[1:], want):
        if size > 1 and got != need:
            raise ValueError("kvq: every part of lse_parts must be dense [batch, heads, num_q] (strides %s, "
                             "expected [*, %d, %d, 1]); call .contiguous()" % (list(ls), h * n, n))
    o_strides = tuple(s if size > 1 else 0 for s, size in zip(os_[:4], (p, b, n, h)))
    return (p, b, n, h, d), o_strides, (ls[0] if p > 1 else 0)
