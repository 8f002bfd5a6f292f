"""The package on the CPU (device="cpu": kvq's C reference behind the same ops): KVCache and
PagedKVCache against the SDPA reference, a rolling window with sinks by table edits equal to a
contiguous cache of the listed chunks, torch.compile of the ops, and kvq.distributed's public
functions in 2 gloo processes over real kvq caches, equal to one unsharded cache. Needs torch
and libkvq_c; no GPU."""
import os
import tempfile

import pytest

torch = pytest.importorskip("torch")
try:
    from kvq import _lib
    _lib.lib()
except ImportError as e:
    pytest.skip(str(e), allow_module_level=True)
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import kvq  # noqa: E402
from kvq import testing  # noqa: E402

CPU = "cpu"


def rand(*shape, scale=1.0, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.randn(*shape, generator=g) * scale).bfloat16()


def close(a, b):
    return float((a.float() - b.float()).abs().max()) / max(float(b.float().abs().max()), 1e-3)


@pytest.mark.parametrize("rot", ["none", "hadamard_centered"])
def test_cpu_cache_matches_the_sdpa_reference(rot):
    c = kvq.KVCache(2, 2, 128, rotation=rot, device=CPU, q_heads=4)
    assert c.device.type == "cpu" and c.buffer.device.type == "cpu"
    c.append(rand(2, 40, 2, 128, scale=2.0, seed=1), rand(2, 40, 2, 128, seed=2))
    q, kc, vc = rand(2, 24, 4, 128, seed=3), rand(2, 24, 2, 128, seed=4), rand(2, 24, 2, 128, seed=5)
    o, lse, mass = c.attention(q, kc, vc, mask="causal", return_lse=True, return_mass=True)
    ro, rlse, rmass = testing.reference_attention(c, q, kc, vc, "taylor2", "causal")
    assert o.dtype == torch.bfloat16 and lse.dtype == torch.float32 and mass.shape == (2, 4, 24, 3)
    assert close(o, ro) < 1e-2 and float((lse - rlse).abs().max()) < 1e-4
    assert float((mass - rmass).abs().max()) < 1e-5
    assert c.lengths.tolist() == [40, 40]


def test_cpu_append_that_does_not_fit_raises_and_flags():
    c = kvq.KVCache(1, 2, 64, device=CPU)
    c.append(rand(1, 40, 2, 128), rand(1, 40, 2, 128))
    with pytest.raises(kvq.KvqError, match="no entry was appended"):
        c.append(rand(1, 40, 2, 128), rand(1, 40, 2, 128))
    assert c.lengths.tolist() == [40]
    with pytest.raises(kvq.KvqError, match="exceeded the capacity"):
        c.check_errors()
    with pytest.raises(ValueError, match="q is on meta but the cache is on cpu"):
        c.attention(torch.empty(1, 8, 2, 128, dtype=torch.bfloat16, device="meta"), None, None)


def test_rolling_window_equals_a_contiguous_cache_of_the_listed_chunks():
    pt, sinks, window = 64, 1, 2
    pages = sinks + window + 1
    c = kvq.PagedKVCache(1, 2, num_pages=pages, page_tokens=pt, max_pages_per_entry=pages, rotation="hadamard",
                         device=CPU, q_heads=4)
    free, listed, chunks = list(range(pages)), [], []
    for step in range(7):
        q, k, v = rand(1, pt, 4, 128, seed=10 * step), rand(1, pt, 2, 128, scale=2.0, seed=10 * step + 1), \
            rand(1, pt, 2, 128, seed=10 * step + 2)
        o = c.attention(q, k, v)
        # The same chunks, in table order, in a contiguous cache.
        flat = kvq.KVCache(1, 2, pages * pt, rotation="hadamard", device=CPU, q_heads=4)
        for kk, vv in chunks:
            flat.append(kk, vv)
        assert torch.equal(o, flat.attention(q, k, v))
        if len(listed) == sinks + window:
            free.append(listed.pop(sinks))
            chunks.pop(sinks)
        listed.append(free.pop(0))
        chunks.append((k, v))
        c.block_table[0, :len(listed)] = torch.tensor(listed, dtype=torch.int32)
        c.lengths.fill_((len(listed) - 1) * pt)
        c.append(k, v)
        assert c.lengths.tolist() == [len(listed) * pt]
    c.check_errors()
    assert sorted(listed + free) == list(range(pages))


def test_torch_compile_of_the_ops_on_the_cpu():
    c = kvq.KVCache(1, 2, 128, device=CPU, q_heads=4)

    def step(q, k, v):
        o, lse = c.attention(q, k, v, return_lse=True)
        c.append(k, v)
        parts = torch.stack([o, o]).float()
        return kvq.merge_states(parts, torch.stack([lse, lse])), lse

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    q, k, v = rand(1, 16, 4, 128, seed=7), rand(1, 16, 2, 128, seed=8), rand(1, 16, 2, 128, seed=9)
    (o, lse2), lse = compiled(q, k, v)
    assert c.lengths.tolist() == [16]
    assert torch.allclose(lse2, lse + torch.log(torch.tensor(2.0)), atol=1e-5)
    ref = kvq.KVCache(1, 2, 128, device=CPU, q_heads=4).attention(q, k, v)
    assert close(o, ref) < 1e-2


def _rank(rank, world, init_file, mode, errors):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    from kvq import distributed as kd
    try:
        hkv, hq, n = 4, 8, 64
        if mode == "heads":
            shard = kvq.KVCache(1, hkv // world, 4 * n, device=CPU, q_heads=hq // world)
        else:
            shard = kvq.KVCache(1, hkv, 4 * n // world, device=CPU, q_heads=hq)
        whole = kvq.KVCache(1, hkv, 4 * n, device=CPU, q_heads=hq)
        mine = slice(rank * n // world, (rank + 1) * n // world)
        for chunk in range(3):
            q, k, v = rand(1, n, hq, 128, seed=chunk), rand(1, n, hkv, 128, scale=2.0, seed=100 + chunk), \
                rand(1, n, hkv, 128, seed=200 + chunk)
            f = kd.head_parallel_attention if mode == "heads" else kd.sequence_parallel_attention
            o = f(shard, q[:, mine], k[:, mine], v[:, mine], append=True)
            ref = whole.attention(q, k, v)
            whole.append(k, v)
            err = close(o, ref[:, mine])
            if not err < (1e-6 if mode == "heads" else 2e-2):
                errors.put("rank %d chunk %d (%s): relative error %g" % (rank, chunk, mode, err))
    except Exception as e:  # reported through the queue
        errors.put("rank %d: %r" % (rank, e))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["heads", "tokens"])
def test_distributed_over_cpu_caches_equals_one_cache(mode):
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_rank, args=(2, os.path.join(d, "store"), mode, errors), nprocs=2, join=True,
                           start_method="spawn")
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, "\n".join(found)


def test_op_kernel_equals_the_python_kernel_and_refuses_alike():
    """The registered kernel of the ops (libkvq_torch's C++ one where it is loaded, else the
    Python one) against the Python kernel called directly: equal outputs, and the same
    refusals (ValueError naming the argument)."""
    from kvq import ops
    c = kvq.KVCache(2, 2, 128, device=CPU, q_heads=4, rotation="hadamard")
    c.append(rand(2, 48, 2, 128, scale=2.0, seed=20), rand(2, 48, 2, 128, seed=21))
    q, k, v = rand(2, 16, 4, 128, seed=22), rand(2, 16, 2, 128, seed=23), rand(2, 16, 2, 128, seed=24)
    args = (c.buffer, c.lengths, None, c.error, q, k, v, c.cache_id, 1, 1, 0.08, True, True, -1)
    a = torch.ops.kvq.attention(*args)
    p = ops._attention_cuda(*args)
    assert all(torch.equal(x, y) for x, y in zip(a, p))
    for bad, match in ((q[:, :, :3], "not a multiple of the cache's 2 kv heads"),
                       (q.float(), "dtype"),
                       (q[..., :64], "head_dim 64")):
        for f in (torch.ops.kvq.attention, ops._attention_cuda):
            with pytest.raises((ValueError, TypeError), match=match):
                f(c.buffer, c.lengths, None, c.error, bad, k, v, c.cache_id, 1, 1, 0.08, True, True, -1)
    for f in (torch.ops.kvq.attention, ops._attention_cuda):
        with pytest.raises(ValueError, match="block_table must be None"):
            f(c.buffer, c.lengths, torch.zeros(2, 4, dtype=torch.int32), c.error, q, k, v, c.cache_id, 1, 1, 0.08,
              True, True, -1)
    o_parts, lse_parts = torch.randn(3, 2, 5, 4, 64), torch.randn(3, 2, 4, 5)
    m = torch.ops.kvq.merge_states(o_parts, lse_parts, True)
    mp_ = ops._merge_cuda(o_parts, lse_parts, True)
    assert torch.equal(m[0], mp_[0]) and torch.equal(m[1], mp_[1])
