"""The schemas and fake implementations of kvq's cache ops, traced on fake CUDA tensors without
a GPU: a contiguous and a paged cache binding (host-only C handles) with attention and append
traced by make_fx (one node each, outputs shaped by the fake implementations), and the
block-table and cache-tensor checks raising at trace time. Needs torch and libkvq_c."""
import ctypes

import pytest

torch = pytest.importorskip("torch")
try:
    from kvq import _lib
    _lib.lib()
except ImportError as e:
    pytest.skip(str(e), allow_module_level=True)

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from kvq import cache as kc  # noqa: E402
from kvq import ops  # noqa: E402

B, HKV, HQ, D = 2, 2, 4, 128


def _binding(paged, host_tables):
    v = _lib.Variant(2, 128, _lib.PER_TOKEN, 2, 128, D, 0)
    h = ctypes.c_void_p()
    if paged:
        s = _lib.lib().kvq_c_paged_cache_create(ctypes.byref(v), B, HKV, 64, 8, 4, host_tables.data_ptr(), 4,
                                                 _lib.BF16, -1, ctypes.byref(h))
    else:
        s = _lib.lib().kvq_c_cache_create(ctypes.byref(v), B, HKV, 256, _lib.BF16, -1, ctypes.byref(h))
    _lib.check("create", s)
    nbytes = _lib.lib().kvq_c_cache_bytes(h)
    meta = kc.CacheMeta(batch=B, kv_heads=HKV, head_dim=D, capacity=_lib.lib().kvq_c_cache_capacity(h),
                        dtype_name="bfloat16", device_index=0, corrections=frozenset({"none", "taylor2"}),
                        nbytes=nbytes, key_tokens_per_group=1)
    return h, meta


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_cache_ops_trace_on_fake_tensors(paged):
    host_tables = torch.zeros(B, 4, dtype=torch.int32)
    h, meta = _binding(paged, host_tables)
    cid = None
    try:
        try:
            with FakeTensorMode():
                torch.empty(1, device="cuda:0")
        except (RuntimeError, AssertionError) as e:
            pytest.skip("this torch makes no fake CUDA tensors: %s" % e)
        with FakeTensorMode():
            buf = torch.empty(meta.nbytes, dtype=torch.uint8, device="cuda:0")
            lengths = torch.empty(B, dtype=torch.int32, device="cuda:0")
            error = torch.empty(1, dtype=torch.int32, device="cuda:0")
            bt = torch.empty(B, 4, dtype=torch.int32, device="cuda:0") if paged else None
            b = kc._Binding(h, meta, buf, lengths, error, torch.bfloat16, bt)
            cid = b.cache_id = ops.register(b)
            q = torch.empty(B, 32, HQ, D, dtype=torch.bfloat16, device="cuda:0")
            k = torch.empty(B, 32, HKV, D, dtype=torch.bfloat16, device="cuda:0")

            def step(buf, lengths, bt, error, q, k, v):
                o, lse, mass = torch.ops.kvq.attention(buf, lengths, bt, error, q, k, v, cid, 1, 0, 0.088, True, True,
                                                       -1)
                torch.ops.kvq.append(buf, lengths, bt, k, v, error, cid, -1)
                return o * 2.0, lse, mass

            gm = make_fx(step, tracing_mode="fake")(buf, lengths, bt, error, q, k, k)
            o, lse, mass = gm(buf, lengths, bt, error, q, k, k)
            assert tuple(o.shape) == (B, 32, HQ, D) and o.dtype == torch.bfloat16
            assert tuple(lse.shape) == (B, HQ, 32) and tuple(mass.shape) == (B, HQ, 32, 3)
            wrong_bt = None if paged else torch.empty(B, 4, dtype=torch.int32, device="cuda:0")
            with pytest.raises(ValueError, match="block_table must be"):
                make_fx(step, tracing_mode="fake")(buf, lengths, wrong_bt, error, q, k, k)
            with pytest.raises(ValueError, match="the cache tensor must be the uint8"):
                make_fx(step, tracing_mode="fake")(buf[:-256], lengths, bt, error, q, k, k)
            with pytest.raises(ValueError, match="k_chunk has 4 heads, expected 2"):
                make_fx(step, tracing_mode="fake")(buf, lengths, bt, error, q, q, q)
        code = gm.code
        assert code.count("torch.ops.kvq.attention.default") == 1 and code.count("torch.ops.kvq.append.default") == 1
    finally:
        if cid is not None:
            ops.unregister(cid)
        _lib.lib().kvq_c_cache_destroy(h)
