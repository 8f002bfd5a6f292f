"""kvq's torch ops on the GPU: attention against torch SDPA over the dequantized cache,
append, torch.compile(fullgraph=True), CUDA graph capture and replay, bad inputs."""
import math

import pytest

from _gpu import require_gpu

torch = require_gpu()

import kvq  # noqa: E402
from kvq import testing  # noqa: E402

DEV = "cuda"

# (bits, key_granularity, group_size, rotation, head_dim, correction)
VARIANTS = [
    (2, "per_token", 128, "none", 128, "taylor2"),
    (2, "per_token", 128, "none", 128, "none"),
    (4, "per_token", 128, "none", 128, "taylor4"),
    (2, "per_channel", 32, "none", 128, "exact"),
    (4, "per_channel", 32, "none", 128, "taylor2"),
    (2, "per_token", 128, "hadamard", 128, "taylor2"),
    (2, "per_token", 128, "hadamard_centered", 128, "taylor2"),
    (4, "per_token", 128, "hadamard_centered", 128, "none"),
    (2, "per_token", 64, "none", 64, "taylor2"),
    (4, "per_channel", 32, "none", 64, "taylor2"),
]


def make_cache(bits, gran, group, rot, d, corr, batch=2, kv_heads=2, capacity=128, dtype=torch.bfloat16, **kw):
    return kvq.KVCache(batch, kv_heads, capacity, head_dim=d, bits=bits, key_granularity=gran, group_size=group,
                       rotation=rot, dtype=dtype, device=DEV, correction=corr, **kw)


def rand(*shape, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, device=DEV) * scale).to(dtype)


def strided_qkv(b, n, h, d, dtype):
    """q, k, v as views of one [b, n, 3, h, d] projection (token stride 3·h·d)."""
    qkv = rand(b, n, 3, h, d, dtype=dtype)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def assert_close_attention(cache, q, kc, vc, corr, mask="none"):
    o, lse, mass = cache.attention(q, kc, vc, correction=corr, mask=mask, return_lse=True, return_mass=True)
    torch.cuda.synchronize()
    ro, rlse, rmass = testing.reference_attention(cache, q, kc, vc, corr, mask)
    o = o.double().cpu()
    vmax = max(float(vc.abs().max()), 1.0)
    err = (o - ro).abs()
    tol = 1e-2 * vmax + 1e-2 * ro.abs()
    assert bool((err <= tol).all()), "max |o - ref| %.3g" % float(err.max())
    assert float((lse.double().cpu() - rlse).abs().max()) <= 1e-2
    assert float((mass.double().cpu() - rmass).abs().max()) <= 1e-2
    return mass


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "int%d_%s%d_%s_d%d_%s" % v)
def test_attention_matches_sdpa_over_dequantized_cache(variant):
    torch.manual_seed(0)
    bits, gran, group, rot, d, corr = variant
    cache = make_cache(*variant)
    # Two appends (the PerChannel key tail ends partial: 70 % 32 = 6 tokens), then a chunk.
    for n in (40, 30):
        k, v = rand(2, n, 2, d), rand(2, n, 2, d)
        cache.append(k, v)
    assert cache.lengths.tolist() == [70, 70]
    q, kc, vc = rand(2, 24, 4, d), rand(2, 24, 2, d), rand(2, 24, 2, d)  # GQA: 4 q heads on 2 kv heads
    mass = assert_close_attention(cache, q, kc, vc, corr)
    if gran == "per_channel":
        assert float(mass[..., 1].max()) > 0.0  # the tail is attended


def test_attention_causal_fp16_and_strided_inputs():
    torch.manual_seed(1)
    cache = make_cache(2, "per_channel", 32, "none", 128, "taylor2", dtype=torch.float16)
    k, v, _ = strided_qkv(2, 50, 2, 128, torch.float16)
    cache.append(k, v)
    q, _, _ = strided_qkv(2, 20, 4, 128, torch.float16)
    _, kc, vc = strided_qkv(2, 20, 2, 128, torch.float16)
    assert q.stride(1) == 3 * 4 * 128
    assert_close_attention(cache, q, kc, vc, "taylor2", mask="causal")
    assert_close_attention(cache, q, kc, vc, "none", mask="none")


def test_attention_empty_cache_and_no_chunk():
    torch.manual_seed(2)
    cache = make_cache(2, "per_token", 128, "none", 128, "taylor2")
    q, kc, vc = rand(2, 8, 2, 128), rand(2, 8, 2, 128), rand(2, 8, 2, 128)
    assert_close_attention(cache, q, kc, vc, "taylor2")  # chunk only
    cache.append(kc, vc)
    o = cache.attention(q)  # cache only
    ro, _, _ = testing.reference_attention(cache, q, kc[:, :0], vc[:, :0], "taylor2")
    assert float((o.double().cpu() - ro).abs().max()) <= 2e-2


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[3], VARIANTS[6]], ids=["pt", "pc", "rotcen"])
def test_append_dequantizes_close_to_its_input(variant):
    torch.manual_seed(3)
    bits, gran, group, rot, d, corr = variant
    cache = make_cache(*variant)
    k, v = rand(2, 70, 2, d), rand(2, 70, 2, d)
    cache.append(k[:, :40], v[:, :40])
    cache.append(k[:, 40:], v[:, 40:])
    keys, values, steps, lengths = testing.dequantize(cache)
    assert lengths.tolist() == [70, 70]
    kin = k.float().cpu().permute(0, 2, 1, 3)  # [B, H, N, D]
    vin = v.float().cpu().permute(0, 2, 1, 3)
    ql = 70 - 70 % cache.meta.key_tokens_per_group
    # Quantization error of a key is at most half a step per element (in the rotated space for
    # rotated keys: compared as norms, which the rotation keeps).
    kerr = (keys[:, :, :ql] - kin[:, :, :ql]).norm(dim=-1)
    kbound = 0.5 * steps[:, :, :ql].norm(dim=-1) * 1.02 + 1e-2
    assert bool((kerr <= kbound).all())
    assert bool((steps[:, :, :ql] > 0).all())
    assert torch.equal(keys[:, :, ql:70], kin[:, :, ql:70])  # the tail holds the keys as given
    # Uniform noise of step/sqrt(12) per value, step = range/(2^bits - 1) of 128 Gaussian
    # values (~5.2): ~0.5 (INT2) and ~0.1 (INT4) of their norm; a misplaced token gives ~1.4.
    rel = float((values[:, :, :70] - vin).norm() / vin.norm())
    assert rel < (0.65 if bits == 2 else 0.15)


def test_append_overflow_is_flagged_and_leaves_the_cache():
    cache = make_cache(2, "per_token", 128, "none", 128, "taylor2", capacity=64)
    cache.append(rand(2, 40, 2, 128), rand(2, 40, 2, 128))
    before = cache.buffer.clone()
    cache.append(rand(2, 40, 2, 128), rand(2, 40, 2, 128))
    assert cache.lengths.tolist() == [40, 40]
    assert torch.equal(cache.buffer, before)
    with pytest.raises(kvq.KvqError, match="capacity"):
        cache.check_errors()


class Block(torch.nn.Module):
    """A small attention block: qkv projection, kvq attention over [cache ; chunk], output
    projection; append=True appends the chunk (the clean pass)."""

    def __init__(self, cache, heads, d):
        super().__init__()
        self.cache, self.h, self.d = cache, heads, d
        self.qkv = torch.nn.Linear(heads * d, 3 * heads * d, bias=False)
        self.out = torch.nn.Linear(heads * d, heads * d, bias=False)

    def forward(self, x, append: bool):
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.h, self.d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        o, mass = self.cache.attention(q, k, v, return_mass=True)
        if append:
            self.cache.append(k, v)
        return self.out(o.reshape(b, n, self.h * self.d)), mass


def _backend():
    """Inductor where Triton is installed, else AOTAutograd with eager kernels (both
    functionalize the append)."""
    try:
        from torch.utils._triton import has_triton
        return "inductor" if has_triton() else "aot_eager"
    except ImportError:
        return "aot_eager"


@torch.no_grad()
def test_torch_compile_fullgraph():
    torch.manual_seed(4)
    h, d = 2, 128
    caches = [make_cache(2, "per_token", 128, "none", d, "taylor2", kv_heads=h, capacity=256) for _ in range(2)]
    eager = Block(caches[0], h, d).to(DEV, torch.bfloat16)
    block = Block(caches[1], h, d).to(DEV, torch.bfloat16)
    block.load_state_dict(eager.state_dict())
    compiled = torch.compile(block, fullgraph=True, backend=_backend())
    for step in range(3):
        x = rand(2, 32, h * d)
        for append in (False, True):
            ye, me = eager(x, append)
            yc, mc = compiled(x, append)
            torch.cuda.synchronize()
            assert float((ye.float() - yc.float()).abs().max()) <= 2e-2 * max(float(ye.abs().max()), 1.0)
            assert float((me - mc).abs().max()) <= 5e-3
    assert torch.equal(caches[0].lengths, caches[1].lengths)
    assert caches[1].lengths.tolist() == [96, 96]


def test_torch_compile_traces_the_ops_once():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    cache = make_cache(2, "per_token", 128, "none", 128, "taylor2", capacity=256)
    counter = CompileCounter()

    def step(q, k, v):
        o = cache.attention(q, k, v)
        cache.append(k, v)
        return o * 2

    f = torch.compile(step, backend=counter, fullgraph=True)
    for _ in range(3):
        f(rand(2, 16, 2, 128), rand(2, 16, 2, 128), rand(2, 16, 2, 128))
    assert counter.frame_count == 1
    assert cache.lengths.tolist() == [48, 48]


@pytest.mark.parametrize("rot", ["none", "hadamard_centered"])
def test_cuda_graph_capture_and_replay(rot):
    torch.manual_seed(5)
    d, n = 128, 32
    graph_cache = make_cache(2, "per_token", 128, rot, d, "taylor2", capacity=256)
    eager_cache = make_cache(2, "per_token", 128, rot, d, "taylor2", capacity=256)
    q, k, v = rand(2, n, 2, d), rand(2, n, 2, d), rand(2, n, 2, d)
    # Warm up on a side stream (the plans are made; torch's allocator settles), then reset.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        graph_cache.attention(q, k, v)
        graph_cache.append(k, v)
    torch.cuda.current_stream().wait_stream(s)
    graph_cache.reset()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        o_static = graph_cache.attention(q, k, v)
        graph_cache.append(k, v)
    # Capture launched nothing: the cache is still empty.
    torch.cuda.synchronize()
    assert graph_cache.lengths.tolist() == [0, 0]
    for step in range(4):
        q.copy_(rand(2, n, 2, d))
        k.copy_(rand(2, n, 2, d))
        v.copy_(rand(2, n, 2, d))
        g.replay()
        o_eager = eager_cache.attention(q, k, v)
        eager_cache.append(k, v)
        torch.cuda.synchronize()
        assert graph_cache.lengths.tolist() == [(step + 1) * n] * 2
        assert torch.equal(graph_cache.lengths, eager_cache.lengths)
        assert torch.equal(graph_cache.buffer, eager_cache.buffer)
        # Same kernels on the same data: equal up to the order of floating-point reductions.
        assert float((o_static.float() - o_eager.float()).abs().max()) <= 1e-3 * max(float(o_eager.abs().max()), 1.0)


# ---- bad inputs: a clear exception, and nothing launched -------------------------------

@pytest.fixture
def cache():
    return make_cache(2, "per_token", 128, "none", 128, "taylor2")


def _untouched(c):
    torch.cuda.synchronize()
    return c.lengths.tolist() == [0, 0] and int(c.buffer.count_nonzero()) == 0


def test_bad_attention_inputs(cache):
    q, k, v = rand(2, 8, 2, 128), rand(2, 8, 2, 128), rand(2, 8, 2, 128)
    cases = [
        (ValueError, "q is on cpu", lambda: cache.attention(q.cpu(), k, v)),
        (TypeError, "float32", lambda: cache.attention(q.float(), k, v)),
        (TypeError, "cache was made for bfloat16", lambda: cache.attention(q.half(), k.half(), v.half())),
        (ValueError, "head_dim 64", lambda: cache.attention(q[..., :64], k, v)),
        (ValueError, "not a multiple of the cache's 2 kv heads", lambda: cache.attention(rand(2, 8, 3, 128), k, v)),
        (ValueError, "k_chunk has 4 heads", lambda: cache.attention(rand(2, 8, 4, 128), rand(2, 8, 4, 128), v)),
        (ValueError, "batch 1", lambda: cache.attention(q[:1], k[:1], v[:1])),
        (ValueError, "4-D", lambda: cache.attention(q.flatten(2), k, v)),
        (ValueError, "unit stride along head_dim", lambda: cache.attention(q.transpose(1, 3).contiguous().transpose(1, 3),
                                                                          k, v)),
        (ValueError, "not a multiple of 8", lambda: cache.attention(rand(2, 8, 2, 132)[..., :128], k, v)),
        (ValueError, "not 16-byte aligned", lambda: cache.attention(rand(2 * 8 * 2 * 128 + 4).narrow(0, 4, 4096)
                                                                    .view(2, 8, 2, 128), k, v)),
        (ValueError, "'exact' is not compiled", lambda: cache.attention(q, k, v, correction="exact")),
        (ValueError, "mask must be", lambda: cache.attention(q, k, v, mask="window")),
        (ValueError, "scale", lambda: cache.attention(q, k, v, scale=-1.0)),
        (ValueError, "pass both", lambda: cache.attention(q, k)),
    ]
    for exc, msg, call in cases:
        with pytest.raises(exc, match=msg):
            call()
    assert _untouched(cache)


def test_bad_append_inputs(cache):
    k = rand(2, 8, 2, 128)
    cases = [
        (ValueError, "k is on cpu", lambda: cache.append(k.cpu(), k)),
        (TypeError, "float16", lambda: cache.append(k.half(), k.half())),
        (ValueError, "k has 4 heads", lambda: cache.append(rand(2, 8, 4, 128), rand(2, 8, 4, 128))),
        (ValueError, "v has 7 tokens", lambda: cache.append(k, k[:, :7])),
        (ValueError, "capacity 128", lambda: cache.append(rand(2, 200, 2, 128), rand(2, 200, 2, 128))),
        (ValueError, "unit stride", lambda: cache.append(k.transpose(1, 3).contiguous().transpose(1, 3), k)),
    ]
    for exc, msg, call in cases:
        with pytest.raises(exc, match=msg):
            call()
    assert _untouched(cache)


def test_bad_cache_arguments():
    with pytest.raises(ValueError, match="no compiled cache variant"):
        make_cache(8, "per_token", 128, "none", 128, "taylor2")
    with pytest.raises(ValueError, match="no compiled cache variant"):
        make_cache(2, "per_token", 96, "none", 96, "taylor2")
    with pytest.raises(ValueError, match="no compiled cache variant"):
        make_cache(2, "per_channel", 32, "hadamard", 128, "taylor2")
    with pytest.raises(ValueError, match="correction 'exact' is not compiled"):
        make_cache(2, "per_token", 128, "none", 128, "exact")
    with pytest.raises(ValueError, match="runs on a CUDA device"):
        kvq.KVCache(1, 2, 64, device="meta")
    with pytest.raises(TypeError, match="dtype"):
        kvq.KVCache(1, 2, 64, dtype=torch.float32)
    with pytest.raises(kvq.KvqError, match="multiple of the key group"):
        make_cache(2, "per_channel", 32, "none", 128, "taylor2", capacity=100)


def test_raw_op_rejects_foreign_cache_tensors(cache):
    q = rand(2, 8, 2, 128)
    with pytest.raises(ValueError, match="uint8"):
        torch.ops.kvq.attention(cache.buffer[:-256], cache.lengths, None, cache.error, q, q, q, cache.cache_id, 1, 0, 0.08, False, False, -1)
    with pytest.raises(ValueError, match="names no live kvq cache"):
        torch.ops.kvq.attention(cache.buffer, cache.lengths, None, cache.error, q, q, q, 10 ** 6, 1, 0, 0.08, False, False, -1)
    assert _untouched(cache)


def test_attention_outputs_carry_no_gradient():
    """The op's Autograd keys are a fallthrough: with grad enabled and q requiring grad, the
    outputs (op or method) are non-differentiable, eagerly and in a graph traced by AOTAutograd."""
    torch.manual_seed(6)
    cache = make_cache(2, "per_token", 128, "none", 128, "taylor2")
    k, v = rand(2, 8, 2, 128), rand(2, 8, 2, 128)
    cache.append(k, v)
    q = rand(2, 8, 2, 128).requires_grad_()
    outs = torch.ops.kvq.attention(cache.buffer, cache.lengths, None, cache.error, q, k, v, cache.cache_id, 1, 0, 1.0 / math.sqrt(128),
                                   True, True, -1)
    outs += cache.attention(q, k, v, return_lse=True, return_mass=True)
    assert all(not t.requires_grad and t.grad_fn is None for t in outs)
    torch.cuda.synchronize()
    assert float((outs[0].float() - outs[3].float()).abs().max()) <= 1e-3 * max(float(outs[3].abs().max()), 1.0)

    proj = torch.nn.Linear(256, 256, bias=False).to(DEV, torch.bfloat16)  # weights require grad

    def f(x):
        qq = proj(x).view(2, 8, 2, 128)
        return proj(cache.attention(qq, k, v).reshape(2, 8, 256))

    x = rand(2, 8, 256)
    ye, yc = f(x), torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    assert yc.requires_grad  # through the second projection only
    yc.float().sum().backward()
    assert proj.weight.grad is not None
    assert float((ye.float() - yc.float()).abs().max()) <= 2e-2 * max(float(ye.abs().max()), 1.0)


def test_attention_checks_are_remembered_and_alignment_is_not():
    """The Python kernel: a repeated signature skips the argument checks but not the alignment
    check (the C++ kernel, where libkvq_torch is loaded, checks everything on every call)."""
    from kvq import ops
    cache = make_cache(2, "per_token", 128, "none", 128, "taylor2")
    q, k, v = rand(2, 8, 2, 128), rand(2, 8, 2, 128), rand(2, 8, 2, 128)
    scale = 1.0 / math.sqrt(128)
    b = cache._binding
    for _ in range(2):
        ops.attention_launch(b, cache.buffer, cache.lengths, cache.error, q, k, v, 1, 0, scale, False, False, -1)
    ops._attention_cuda(cache.buffer, cache.lengths, None, cache.error, q, k, v, cache.cache_id, 1, 0, scale, False,
                        False, -1)
    assert len(b.attention_checks) == 1  # the op kernel's key is the method's
    odd = rand(2 * 8 * 2 * 128 + 4).narrow(0, 4, 4096).view(2, 8, 2, 128)
    assert odd.shape == q.shape and odd.stride() == q.stride()
    with pytest.raises(ValueError, match="not 16-byte aligned"):
        cache.attention(odd, k, v)
    with pytest.raises(ValueError, match="not 16-byte aligned"):
        torch.ops.kvq.attention(cache.buffer, cache.lengths, None, cache.error, odd, k, v, cache.cache_id, 1, 0, scale,
                                False, False, -1)
    with pytest.raises(ValueError, match="not 16-byte aligned"):
        ops.attention_launch(b, cache.buffer, cache.lengths, cache.error, odd, k, v, 1, 0, scale, False, False, -1)
    assert _untouched(cache)
