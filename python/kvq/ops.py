"""kvq's torch ops: ``torch.ops.kvq.append``, ``torch.ops.kvq.attention`` and
``torch.ops.kvq.merge_states``.

They are defined with torch.library schemas (the mutated cache, lengths and error word
annotated ``Tensor(a!)``), given CUDA implementations that call libkvq_c through ctypes,
and fake implementations (torch.library.register_fake) that only check the arguments and
describe the outputs, so that torch.compile(fullgraph=True) traces them without a graph
break. The CUDA implementations allocate their outputs with torch (inside a CUDA graph
capture they come from the graph's pool) and call C functions that only check and enqueue
on torch's current stream: no allocation, synchronization or host read of device data,
so append and attention can be captured in a CUDA graph.

Host time per call: attention registers a fallthrough at the Autograd keys (its outputs
carry no gradient), so the dispatcher goes from the call to the CUDA kernel in C++, with
no Python autograd layer in between (append, which returns nothing, keeps torch's default
autograd fallback, in C++); the kernels pass the cache's own buffer and lengths by
identity, and attention remembers its argument checks per cache and argument signature
(shapes, strides, dtypes, devices and the other arguments), so that a repeated call
checks only the data alignment.

The ops identify their cache by a small integer (``cache_id``) that indexes the registry
of live caches (kvq.cache.KVCache registers itself); the cache tensors travel as
arguments so that torch sees every read and write.
"""
import ctypes
import os
import warnings

import torch

from . import _lib
from ._validate import check_alignment, check_append, check_attention, check_merge, dtype_name

# cache_id -> the live cache's binding (kvq.cache._Binding); None once freed.
_REGISTRY = []

_CORRECTION_NAMES = {v: k for k, v in _lib.CORRECTIONS.items()}
_MASK_NAMES = {v: k for k, v in _lib.MASKS.items()}

try:
    _is_compiling = torch.compiler.is_compiling
except AttributeError:  # pragma: no cover
    def _is_compiling():
        return True  # always through the op
try:
    _dispatch_stack_len = torch._C._len_torch_dispatch_stack
except AttributeError:  # pragma: no cover
    def _dispatch_stack_len():
        return 1  # always through the op
try:
    _raw_stream = torch._C._cuda_getCurrentRawStream  # the current stream's cudaStream_t as an int
except AttributeError:  # pragma: no cover
    def _raw_stream(index):
        return torch.cuda.current_stream(index).cuda_stream

_lib_def = torch.library.Library("kvq", "DEF")
# block_table: the paged cache's int32 [batch, max_pages_per_entry] tables (None for a
# contiguous cache); the C side reads the tables bound at the cache's creation, the argument
# tells torch that the op reads them (so that an engine's edits are ordered before it).
_lib_def.define(
    "append(Tensor(a!) cache, Tensor(b!) lengths, Tensor? block_table, Tensor k, Tensor v, Tensor(c!) error, "
    "int cache_id, int max_cache_length) -> ()")
_lib_def.define(
    "attention(Tensor cache, Tensor lengths, Tensor? block_table, Tensor(c!) error, Tensor q, Tensor k_chunk, "
    "Tensor v_chunk, int cache_id, int correction, int mask, float scale, bool return_lse, bool return_mass, "
    "int max_cache_length) -> (Tensor, Tensor, Tensor)")
_lib_def.define("merge_states(Tensor o_parts, Tensor lse_parts, bool return_lse) -> (Tensor, Tensor)")


def _load_cpp_kernels():
    """libkvq_torch (csrc/torch_ops.cpp: the ops' kernels in C++ over torch's stable ABI), looked
    for at $KVQ_TORCH_LIBRARY or next to libkvq_c; None where it is absent, does not load into
    this torch, or KVQ_TORCH_OPS=0. Its kernels are registered for the CUDA and CPU keys; the
    Python kernels below are registered instead where it is None."""
    if os.environ.get("KVQ_TORCH_OPS", "1") == "0":
        return None
    path = os.environ.get("KVQ_TORCH_LIBRARY")
    if not path:
        c_path = _lib.library_path()
        path = os.path.join(os.path.dirname(c_path), "libkvq_torch.so") if c_path else None
    if not path or not os.path.isfile(path):
        return None
    try:
        L = _lib.lib()
        cpp = ctypes.CDLL(path)
        if cpp.kvq_torch_abi_version() != 1000 + _lib.ABI_VERSION:
            return None
        fns = [ctypes.cast(getattr(L, n), ctypes.c_void_p) for n in (
            "kvq_c_append", "kvq_c_attention", "kvq_c_merge_states", "kvq_c_quantize_append_host",
            "kvq_c_attention_host", "kvq_c_merge_states_host", "kvq_c_status_string", "kvq_c_last_cuda_error_string")]
        cpp.kvq_torch_set_functions.argtypes = [ctypes.c_void_p] * 8
        if cpp.kvq_torch_set_functions(*fns) != 0:
            return None
        torch.ops.load_library(path)  # registers the kernels
    except (ImportError, OSError, AttributeError, RuntimeError) as e:
        warnings.warn("kvq: libkvq_torch at %s not used (%s); the ops run their Python kernels" % (path, e))
        return None
    i32, i64 = ctypes.c_int32, ctypes.c_int64
    cpp.kvq_torch_bind.argtypes = [i64, ctypes.c_void_p, i32, i32, i32, i32, i64, i64, i32, ctypes.c_uint32, i32]
    cpp.kvq_torch_bind.restype = i32
    cpp.kvq_torch_unbind.argtypes = [i64]
    cpp.kvq_torch_unbind.restype = None
    return cpp


# The loaded libkvq_torch (ctypes handle), or None: the ops' kernels are then the Python ones.
CPP = _load_cpp_kernels()


def _binding(cache_id):
    try:
        b = _REGISTRY[cache_id]
    except (IndexError, TypeError):
        b = None
    if b is None:
        raise ValueError("kvq: cache_id %r names no live kvq cache" % (cache_id,))
    return b


def _check_cache_tensors(b, cache, lengths, error, block_table):
    """The cache buffer, lengths, error word and block table passed to an op must be those of
    the cache's layout (torch.compile may pass copies of them, so only their shape, dtype and
    device count). The cache's own tensors (those of binding `b`, the case of every eager call
    and of compiled graphs that read the cache's attributes) pass without a look."""
    if cache is b.buffer and lengths is b.lengths and error is b.error and block_table is b.block_table:
        return
    m = b.meta
    if tuple(cache.shape) != (m.nbytes,) or str(cache.dtype) != "torch.uint8" or cache.device != b.buffer.device:
        raise ValueError("kvq: the cache tensor must be the uint8 [%d] buffer on %s of cache_id %d, got %s %s on %s"
                         % (m.nbytes, b.buffer.device, b.cache_id, cache.dtype, list(cache.shape), cache.device))
    if tuple(lengths.shape) != (m.batch,) or str(lengths.dtype) != "torch.int32" or lengths.device != b.buffer.device:
        raise ValueError("kvq: the lengths tensor must be int32 [%d] on %s, got %s %s on %s"
                         % (m.batch, b.buffer.device, lengths.dtype, list(lengths.shape), lengths.device))
    if cache.numel() and cache.stride(0) != 1:
        raise ValueError("kvq: the cache tensor must be contiguous")
    if tuple(error.shape) != (1,) or str(error.dtype) != "torch.int32" or error.device != b.buffer.device:
        raise ValueError("kvq: the error tensor must be int32 [1] on %s" % b.buffer.device)
    bt = b.block_table
    if (block_table is None) != (bt is None):
        raise ValueError("kvq: cache_id %d is %s: block_table must be %s" % (
            b.cache_id, "paged" if bt is not None else "contiguous",
            "its int32 %s table" % list(bt.shape) if bt is not None else "None"))
    if bt is not None and (tuple(block_table.shape) != tuple(bt.shape) or str(block_table.dtype) != "torch.int32"
                           or block_table.device != bt.device):
        raise ValueError("kvq: the block_table tensor must be int32 %s on %s, got %s %s on %s" % (
            list(bt.shape), bt.device, block_table.dtype, list(block_table.shape), block_table.device))


# ---- append --------------------------------------------------------------------------

def append_launch(b, cache, lengths, k, v, error, max_cache_length):
    """Checks and enqueues one append of cache binding `b` on torch's current stream (a CPU
    cache: runs the C reference)."""
    n, ks, vs = check_append(b.meta, k, v)
    if b.host:
        return _host_append(b, cache, lengths, k, v, error, n, ks, vs, max_cache_length)
    _lib.APPEND_ARGS.pack_into(
        b.append_buf, 0, cache.data_ptr(), lengths.data_ptr(), k.data_ptr(), v.data_ptr(), error.data_ptr(),
        _raw_stream(b.meta.device_index), ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], n, max_cache_length,
        b.dtype_code, b.meta.batch, b.meta.kv_heads, b.meta.head_dim)
    s = b.append_fn(b.handle, b.append_addr)
    if s != 0:
        raise _lib.KvqError("kvq append", s)


def _host_append(b, cache, lengths, k, v, error, n, ks, vs, max_cache_length):
    """The CPU reference's append (kvq_c_quantize_append_host). Where an entry does not fit
    (capacity, a negative length, or a table column outside the pool), the GPU leaves that
    entry and appends the others; the reference refuses the call: the error bits are set for
    the entries concerned and KvqError is raised, nothing appended."""
    args = _lib.APPEND_ARGS.pack(
        0, 0, k.data_ptr(), v.data_ptr(), 0, 0, ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], n, max_cache_length,
        b.dtype_code, b.meta.batch, b.meta.kv_heads, b.meta.head_dim)
    tables = b.block_table
    s = _lib.lib().kvq_c_quantize_append_host(b.handle, cache.data_ptr(), lengths.data_ptr(),
                                               None if tables is None else tables.data_ptr(), args)
    if s != 0:
        bits = 0
        for length in lengths.tolist():
            if length < 0:
                bits |= _lib.APPEND_ERROR_NEGATIVE_LENGTH
            elif length + n > b.meta.capacity:
                bits |= _lib.APPEND_ERROR_CAPACITY
        error.bitwise_or_(bits or _lib.APPEND_ERROR_PAGE)
        raise _lib.KvqError("kvq append (CPU reference)", s, "no entry was appended")


def _append_cuda(cache, lengths, block_table, k, v, error, cache_id, max_cache_length):
    b = _binding(cache_id)
    _check_cache_tensors(b, cache, lengths, error, block_table)
    append_launch(b, cache, lengths, k, v, error, max_cache_length)


def _append_fake(cache, lengths, block_table, k, v, error, cache_id, max_cache_length):
    b = _binding(cache_id)
    check_append(b.meta, k, v)
    _check_cache_tensors(b, cache, lengths, error, block_table)


if CPP is None:
    _lib_def.impl("append", _append_cuda, "CUDA")
    _lib_def.impl("append", _append_cuda, "CPU")
torch.library.register_fake("kvq::append", _append_fake, lib=_lib_def)


# ---- attention -----------------------------------------------------------------------

def _outputs(q, b, nq, hq, return_lse, return_mass):
    d = q.shape[3]
    o = torch.empty((b, nq, hq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, nq) if return_lse else (0,), dtype=torch.float32, device=q.device)
    mass = torch.empty((b, hq, nq, 3) if return_mass else (0,), dtype=torch.float32, device=q.device)
    return o, lse, mass


# Per binding, at most this many remembered argument checks (kvq.cache._Binding.attention_checks).
_MAX_REMEMBERED_CHECKS = 256


def _attention_checks(b, q, k_chunk, v_chunk, correction, mask, scale, return_lse, return_mass, max_cache_length):
    """The argument checks of one attention of binding `b` and what they derive: (output
    shape, lse shape or None, mass shape or None, the argument struct's values after its
    pointers). They depend only on the tensors' shapes, strides, dtypes and devices and on
    the other arguments, so they are remembered per binding under those: a repeated call
    (the same shapes every step) checks nothing but the data alignment (kvq._validate does
    the same checks on a miss, and raises before anything is remembered)."""
    memo = b.attention_checks
    try:
        key = (q.shape, q.stride(), q.dtype, q.device, k_chunk.shape, k_chunk.stride(), k_chunk.dtype,
               k_chunk.device, v_chunk.shape, v_chunk.stride(), v_chunk.dtype, v_chunk.device,
               correction, mask, scale, return_lse, return_mass, max_cache_length)
        r = memo.get(key)
    except Exception:  # not tensors, or unhashable (symbolic) sizes: the checks below say what is wrong
        key = r = None
    if r is not None:
        return r
    meta = b.meta
    bsz, nq, hq, nc, qs, ks, vs = check_attention(meta, q, k_chunk, v_chunk, _CORRECTION_NAMES.get(correction),
                                                  _MASK_NAMES.get(mask), scale)
    d = meta.head_dim
    r = ((bsz, nq, hq, d), (bsz, hq, nq) if return_lse else None, (bsz, hq, nq, 3) if return_mass else None,
         (qs[0], qs[1], qs[2], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2],
          nq * hq * d if bsz > 1 else 0, hq * d if nq > 1 else 0, d if hq > 1 else 0,
          nq, nc, max_cache_length,
          scale, correction, mask, b.dtype_code, bsz, hq, meta.kv_heads, d))
    if key is not None:
        if len(memo) >= _MAX_REMEMBERED_CHECKS:
            memo.clear()
        memo[key] = r
    return r


_EMPTY = (0,)


def attention_launch(b, cache, lengths, error, q, k_chunk, v_chunk, correction, mask, scale, return_lse, return_mass,
                     max_cache_length, op_outputs=True):
    """Checks and enqueues one attention of cache binding `b` on torch's current stream;
    returns (o, lse, mass). With op_outputs=False an output not asked for is None instead of
    an empty tensor (the op's schema needs tensors)."""
    o_shape, lse_shape, mass_shape, tail = _attention_checks(b, q, k_chunk, v_chunk, correction, mask, scale,
                                                             return_lse, return_mass, max_cache_length)
    if b.host:
        return _host_attention(b, cache, lengths, q, k_chunk, v_chunk, o_shape, lse_shape, mass_shape, tail,
                               op_outputs)
    qp, kp, vp = q.data_ptr(), k_chunk.data_ptr(), v_chunk.data_ptr()
    if (qp | kp | vp) & 15:
        check_alignment("q", q)
        check_alignment("k_chunk", k_chunk)
        check_alignment("v_chunk", v_chunk)
    # The checks made q's dtype the cache's and its device the cache's (b.device).
    dev = b.device
    o = torch.empty(o_shape, dtype=b.dtype, device=dev)
    lse = mass = None
    if lse_shape is not None:
        lse = torch.empty(lse_shape, dtype=torch.float32, device=dev)
    elif op_outputs:
        lse = torch.empty(_EMPTY, dtype=torch.float32, device=dev)
    if mass_shape is not None:
        mass = torch.empty(mass_shape, dtype=torch.float32, device=dev)
    elif op_outputs:
        mass = torch.empty(_EMPTY, dtype=torch.float32, device=dev)
    _lib.ATTENTION_ARGS.pack_into(
        b.attention_buf, 0,
        cache.data_ptr(), lengths.data_ptr(), qp, kp, vp, o.data_ptr(),
        lse.data_ptr() if lse_shape is not None else 0, mass.data_ptr() if mass_shape is not None else 0,
        error.data_ptr(), _raw_stream(b.device_index), *tail)
    s = b.attention_fn(b.handle, b.attention_addr)
    if s != 0:
        raise _lib.KvqError("kvq attention", s)
    return o, lse, mass


def _host_attention(b, cache, lengths, q, k_chunk, v_chunk, o_shape, lse_shape, mass_shape, tail, op_outputs):
    """The CPU reference's attention (kvq_c_attention_host, float64), cast to the outputs'
    dtypes. A table column outside the pool for held tokens raises KvqError."""
    if o_shape[1] == 0:  # no query row: nothing to compute (the reference takes none)
        return (torch.empty(o_shape, dtype=b.dtype),
                torch.empty(lse_shape, dtype=torch.float32) if lse_shape else (torch.empty(_EMPTY) if op_outputs else None),
                torch.empty(mass_shape, dtype=torch.float32) if mass_shape else (torch.empty(_EMPTY) if op_outputs else None))
    out = torch.empty(o_shape, dtype=torch.float64)
    lse = torch.empty(lse_shape if lse_shape is not None else o_shape[:1] + (o_shape[2], o_shape[1]),
                      dtype=torch.float64)
    mass = torch.empty(mass_shape, dtype=torch.float64) if mass_shape is not None else None
    args = _lib.ATTENTION_ARGS.pack(cache.data_ptr(), lengths.data_ptr(), q.data_ptr(), k_chunk.data_ptr(),
                                    v_chunk.data_ptr(), 0, 0, 0, 0, 0, *tail)
    tables = b.block_table
    s = _lib.lib().kvq_c_attention_host(b.handle, None if tables is None else tables.data_ptr(), args,
                                         out.data_ptr(), lse.data_ptr(), None if mass is None else mass.data_ptr())
    if s != 0:
        raise _lib.KvqError("kvq attention (CPU reference)", s)
    o = out.to(b.dtype)
    lse = lse.float() if lse_shape is not None else (torch.empty(_EMPTY) if op_outputs else None)
    mass = mass.float() if mass is not None else (torch.empty(_EMPTY) if op_outputs else None)
    return o, lse, mass


def _attention_cuda(cache, lengths, block_table, error, q, k_chunk, v_chunk, cache_id, correction, mask, scale,
                    return_lse, return_mass, max_cache_length):
    b = _binding(cache_id)
    _check_cache_tensors(b, cache, lengths, error, block_table)
    return attention_launch(b, cache, lengths, error, q, k_chunk, v_chunk, correction, mask, scale, return_lse,
                            return_mass, max_cache_length)


def _attention_fake(cache, lengths, block_table, error, q, k_chunk, v_chunk, cache_id, correction, mask, scale,
                    return_lse, return_mass, max_cache_length):
    b = _binding(cache_id)
    bsz, nq, hq, _, _, _, _ = check_attention(b.meta, q, k_chunk, v_chunk, _CORRECTION_NAMES.get(correction),
                                              _MASK_NAMES.get(mask), scale)
    _check_cache_tensors(b, cache, lengths, error, block_table)
    return _outputs(q, bsz, nq, hq, return_lse, return_mass)


if CPP is None:
    _lib_def.impl("attention", _attention_cuda, "CUDA")
    _lib_def.impl("attention", _attention_cuda, "CPU")
torch.library.register_fake("kvq::attention", _attention_fake, lib=_lib_def)


# Inference only: the outputs carry no gradient (so that a model traced with grad enabled
# compiles, and backward never reaches the op). A fallthrough at the Autograd keys does that
# in the dispatcher itself: the CUDA kernel creates the outputs with torch.empty, outside any
# autograd graph, as under torch.library.register_autograd with mark_non_differentiable, but
# without that Python autograd kernel and its redispatch (two more crossings between C++ and
# Python and an autograd.Function layer on every call).
_lib_def.impl("attention", torch.library.fallthrough_kernel, "Autograd")


# ---- merge_states ----------------------------------------------------------------------

_MERGE_DTYPE_CODES = {"bfloat16": _lib.BF16, "float16": _lib.FP16, "float32": _lib.FP32}


def _merge_outputs(o_parts, shape, return_lse):
    p, b, n, h, d = shape
    o = torch.empty((b, n, h, d), dtype=o_parts.dtype, device=o_parts.device)
    lse = torch.empty((b, h, n) if return_lse else (0,), dtype=torch.float32, device=o_parts.device)
    return o, lse


def merge_launch(o_parts, lse_parts, return_lse):
    """Checks and enqueues one merge on torch's current stream; returns (o, lse), lse empty
    where not asked for."""
    shape, o_st, lse_part_stride = check_merge(o_parts, lse_parts)
    if o_parts.numel() and o_parts.data_ptr() % o_parts.element_size() or lse_parts.data_ptr() % 4:
        raise ValueError("kvq: o_parts or lse_parts is not aligned to its element size")
    o, lse = _merge_outputs(o_parts, shape, return_lse)
    p, b, n, h, d = shape
    code = _MERGE_DTYPE_CODES[dtype_name(o_parts.dtype)]
    if o_parts.device.type == "cpu":  # the C reference, float64
        args = _lib.MERGE_ARGS.pack(
            o_parts.data_ptr(), lse_parts.data_ptr(), 0, 0, 0, o_st[1], o_st[2], o_st[3], 0, 0, 0, o_st[0],
            lse_part_stride, n, p, b, h, d, code, code, 0, 0)
        out = torch.empty((b, n, h, d), dtype=torch.float64)
        out_lse = torch.empty((b, h, n), dtype=torch.float64)
        s = _lib.lib().kvq_c_merge_states_host(args, out.data_ptr(), out_lse.data_ptr())
        if s != 0:
            raise _lib.KvqError("kvq merge_states (CPU reference)", s)
        o.copy_(out)
        if return_lse:
            lse.copy_(out_lse)
        return o, lse
    dev = o_parts.device.index
    args = _lib.MERGE_ARGS.pack(
        o_parts.data_ptr(), lse_parts.data_ptr(), o.data_ptr(), lse.data_ptr() if return_lse else 0, _raw_stream(dev),
        o_st[1], o_st[2], o_st[3], n * h * d if b > 1 else 0, h * d if n > 1 else 0, d if h > 1 else 0,
        o_st[0], lse_part_stride, n, p, b, h, d, code, code, dev, 0)
    s = _lib.lib().kvq_c_merge_states(args)
    if s != 0:
        raise _lib.KvqError("kvq merge_states", s)
    return o, lse


def _merge_cuda(o_parts, lse_parts, return_lse):
    return merge_launch(o_parts, lse_parts, return_lse)


def _merge_fake(o_parts, lse_parts, return_lse):
    shape, _, _ = check_merge(o_parts, lse_parts)
    return _merge_outputs(o_parts, shape, return_lse)


if CPP is None:
    _lib_def.impl("merge_states", _merge_cuda, "CUDA")
    _lib_def.impl("merge_states", _merge_cuda, "CPU")
torch.library.register_fake("kvq::merge_states", _merge_fake, lib=_lib_def)
_lib_def.impl("merge_states", torch.library.fallthrough_kernel, "Autograd")


# The overloads themselves (calling them skips the packet's overload resolution).
append_op = torch.ops.kvq.append.default
attention_op = torch.ops.kvq.attention.default
merge_states_op = torch.ops.kvq.merge_states.default


def register(binding):
    """Adds a cache binding to the registry (and libkvq_torch's); returns its cache_id."""
    _REGISTRY.append(binding)
    cache_id = len(_REGISTRY) - 1
    if CPP is not None:
        m = binding.meta
        bits = sum(1 << _lib.CORRECTIONS[c] for c in m.corrections)
        table = binding.block_table
        s = CPP.kvq_torch_bind(cache_id, binding.handle, m.device_index, m.batch, m.kv_heads, m.head_dim,
                               m.capacity, m.nbytes, binding.dtype_code, bits,
                               0 if table is None else table.shape[1])
        if s != 0:
            _REGISTRY[cache_id] = None
            raise _lib.KvqError("kvq_torch_bind", s)
    return cache_id


def unregister(cache_id):
    if 0 <= cache_id < len(_REGISTRY):
        _REGISTRY[cache_id] = None
        if CPP is not None:
            CPP.kvq_torch_unbind(cache_id)


def run(op_call, python_call, t):
    """A KVCache method's or merge_states' call: in plain eager mode (direct_call_ok) the
    Python kernel directly (its checks, remembered per argument signature, and the C call:
    measured faster than the dispatcher's crossing into either kernel; it raises the typed
    errors), else the op (under tracing its fake kernel; in a compiled graph the C++ kernel
    where libkvq_torch is loaded)."""
    return python_call() if direct_call_ok(t) else op_call()


def direct_call_ok(t):
    """Whether a KVCache method may call the launch functions directly instead of through
    torch's dispatcher (same checks and launch, minus the dispatcher's microseconds): in
    eager mode with a plain tensor and no dispatch mode active. Under torch.compile, fake or
    functional tensors, or a tracing mode, the op is called."""
    return type(t) is torch.Tensor and not _is_compiling() and _dispatch_stack_len() == 0
