"""kvq.merge_states and sharded kvq caches on the GPU: the merge op against kvq's CPU reference,
under torch.compile and CUDA graphs; a cache split by tokens (merged partial states) or by heads
equal to the unsplit cache; and, where two GPUs are present, the torchrun example with NCCL."""
import os
import subprocess
import sys

import pytest

from _gpu import require_gpu

torch = require_gpu()

import kvq  # noqa: E402
from kvq import testing  # noqa: E402

DEV = "cuda"
HERE = os.path.dirname(os.path.abspath(__file__))
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def parts(P, b, n, h, d, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    o = torch.randn(P, b, n, h, d, device=DEV, generator=g).to(dtype)
    lse = torch.randn(P, b, h, n, device=DEV, generator=g) * 3
    return o, lse


def check_merge(o, lse, o_parts, lse_parts):
    ro, rl = testing.merge_states_host(o_parts, lse_parts)
    tol = TOL[o.dtype] * max(1.0, float(ro.abs().max()))
    assert o.dtype == o_parts.dtype and o.shape == ro.shape
    assert float((o.double().cpu() - ro).abs().max()) <= tol
    finite = torch.isfinite(rl)
    assert torch.equal(torch.isfinite(lse.cpu()), finite)
    assert float((lse.double().cpu()[finite] - rl[finite]).abs().max()) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("P", [1, 3])
def test_merge_states_matches_reference(dtype, P):
    o_parts, lse_parts = parts(P, 2, 7, 4, 128, dtype)
    lse_parts[0, 1, 2] = float("-inf")  # an empty part for (batch 1, head 2)
    lse_parts[:, 0, 3, 5] = float("-inf")  # a row with no key in any part
    o_parts[0, 1, :, 2] = float("nan")  # an empty part's O is never read
    o, lse = kvq.merge_states(o_parts, lse_parts)
    check_merge(o, lse, o_parts, lse_parts)
    assert float(o[0, 5, 3].abs().max()) == 0.0 and float(lse[0, 3, 5]) == float("-inf")


def test_merge_states_strided_parts_lists_and_no_lse():
    big, lse_parts = parts(2, 1, 9, 8, 64, torch.bfloat16, seed=1)
    o_parts = big[:, :, :, 2:6]  # heads 2..5 of a wider tensor: strided along tokens and parts
    lse_parts = lse_parts[:, :, 2:6].contiguous()
    o, lse = kvq.merge_states(o_parts, lse_parts)
    check_merge(o, lse, o_parts, lse_parts)
    o2 = kvq.merge_states(list(o_parts), list(lse_parts), return_lse=False)
    assert torch.equal(o, o2)


def test_merge_states_bad_inputs():
    o_parts, lse_parts = parts(2, 1, 4, 2, 64, torch.bfloat16)
    with pytest.raises(ValueError, match="o_parts is on cpu"):
        kvq.merge_states(o_parts.cpu(), lse_parts)
    with pytest.raises(TypeError, match="lse_parts has dtype"):
        kvq.merge_states(o_parts, lse_parts.half())
    with pytest.raises(ValueError, match=r"lse_parts must be \[parts, batch, heads, num_q\]"):
        kvq.merge_states(o_parts, lse_parts.transpose(2, 3))
    with pytest.raises(ValueError, match="head_dim 48"):
        kvq.merge_states(o_parts[..., :48], lse_parts)
    with pytest.raises(ValueError, match="dense"):
        kvq.merge_states(o_parts, torch.randn(2, 1, 4, 2, device=DEV).transpose(2, 3))


def test_merge_states_compiles_and_captures():
    o_parts, lse_parts = parts(3, 1, 16, 4, 128, torch.bfloat16, seed=2)

    def f(op, lp):
        o, lse = kvq.merge_states(op * 1.0, lp)
        return o * 2.0, lse  # exact in bf16

    cf = torch.compile(f, fullgraph=True)
    o, lse = cf(o_parts, lse_parts)
    check_merge(o / 2.0, lse, o_parts, lse_parts)

    kvq.merge_states(o_parts, lse_parts)  # warm up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        go, gl = kvq.merge_states(o_parts, lse_parts)
    o_parts.copy_(parts(3, 1, 16, 4, 128, torch.bfloat16, seed=3)[0])
    g.replay()
    torch.cuda.synchronize()
    check_merge(go, gl, o_parts, lse_parts)


# (bits, rotation, correction): PerToken keys, whose codes do not depend on a split by tokens
# (centered keys do: μ is each cache's first-append mean) nor by heads.
TOKEN_SPLIT = [(2, "none", "taylor2"), (2, "hadamard", "taylor2"), (4, "none", "none")]
HEAD_SPLIT = TOKEN_SPLIT + [(2, "hadamard_centered", "taylor2")]


def rand(*shape):
    return torch.randn(*shape, device=DEV).bfloat16()


def close(a, b):
    scale = max(float(b.float().abs().max()), 1e-3)
    return float((a.float() - b.float()).abs().max()) / scale


@pytest.mark.parametrize("variant", TOKEN_SPLIT, ids=lambda v: "int%d_%s_%s" % v)
@pytest.mark.parametrize("mask", ["none", "causal"])
def test_cache_split_by_tokens_merges_to_the_whole(variant, mask):
    bits, rot, corr = variant
    b, hq, hkv, W, chunks, nc, nq = 2, 8, 2, 3, 3, 192, 96
    kw = dict(head_dim=128, bits=bits, group_size=128, rotation=rot, correction=corr, q_heads=hq)
    whole = kvq.KVCache(b, hkv, chunks * nc, **kw)
    shards = [kvq.KVCache(b, hkv, chunks * nc // W, **kw) for _ in range(W)]
    per = nc // W
    for _ in range(chunks):
        k, v = rand(b, nc, hkv, 128) + 1.0, rand(b, nc, hkv, 128)
        whole.append(k, v)
        for r, s in enumerate(shards):
            s.append(k[:, r * per:(r + 1) * per], v[:, r * per:(r + 1) * per])
    q, kc, vc = rand(b, nq, hq, 128), rand(b, nc, hkv, 128), rand(b, nc, hkv, 128)
    o_whole, lse_whole = whole.attention(q, kc, vc, mask=mask, return_lse=True)
    outs = []
    for r, s in enumerate(shards):
        if mask == "causal":  # the chunk in one call (the mask is aligned to its end)
            kr, vr = (kc, vc) if r == 0 else (kc[:, :0], vc[:, :0])
        else:
            kr, vr = kc[:, r * per:(r + 1) * per], vc[:, r * per:(r + 1) * per]
        outs.append(s.attention(q, kr, vr, mask=mask, return_lse=True))
    o, lse = kvq.merge_states(torch.stack([x[0] for x in outs]), torch.stack([x[1] for x in outs]))
    assert close(o, o_whole) < 1e-2
    assert float((lse - lse_whole).abs().max()) < 1e-2


@pytest.mark.parametrize("variant", HEAD_SPLIT, ids=lambda v: "int%d_%s_%s" % v)
def test_cache_split_by_heads_equals_the_whole(variant):
    bits, rot, corr = variant
    b, hq, hkv, W, nc, nq = 1, 8, 4, 2, 256, 64
    kw = dict(head_dim=128, bits=bits, group_size=128, rotation=rot, correction=corr)
    whole = kvq.KVCache(b, hkv, 2 * nc, q_heads=hq, **kw)
    shards = [kvq.KVCache(b, hkv // W, 2 * nc, q_heads=hq // W, **kw) for _ in range(W)]
    hs, qs = hkv // W, hq // W
    for _ in range(2):
        k, v = rand(b, nc, hkv, 128) + 1.0, rand(b, nc, hkv, 128)
        whole.append(k, v)
        for r, s in enumerate(shards):
            s.append(k[:, :, r * hs:(r + 1) * hs], v[:, :, r * hs:(r + 1) * hs])
    q, kc, vc = rand(b, nq, hq, 128), rand(b, nc, hkv, 128), rand(b, nc, hkv, 128)
    o_whole = whole.attention(q, kc, vc)
    o = torch.cat([s.attention(q[:, :, r * qs:(r + 1) * qs], kc[:, :, r * hs:(r + 1) * hs],
                               vc[:, :, r * hs:(r + 1) * hs]) for r, s in enumerate(shards)], 2)
    assert close(o, o_whole) < 1e-2


@pytest.mark.parametrize("mode", ["heads", "tokens"])
def test_torchrun_two_gpus(mode):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices (torchrun, NCCL); this machine has %d" % torch.cuda.device_count())
    if not torch.distributed.is_nccl_available():
        pytest.skip("torch.distributed has no NCCL")
    example = os.path.join(os.path.dirname(HERE), "examples", "context_parallel.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", example,
           "--mode", mode, "--check", "--layers", "1", "--chunks", "3", "--steps", "1", "--heads", "8",
           "--frame-tokens", "256", "--frames-per-chunk", "2"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "check against one GPU" in r.stdout and ": ok" in r.stdout

