"""The sharding logic of kvq.distributed on CPUs: W processes (gloo) run the head-parallel and
sequence-parallel code paths chunk after chunk, each attending with an exact float64
attention over its shard (in place of kvq's kernels, which need a GPU), and rank outputs
are compared with the unsharded attention of the same inputs. Also the test reference of
the merge against kvq's own CPU reference. Needs torch; no GPU, no NCCL."""
import os
import tempfile

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
import torch.multiprocessing as mp  # noqa: E402

from kvq import distributed as kd  # noqa: E402
from kvq import testing  # noqa: E402

B, HQ, HKV, D, NQ, NC, CHUNKS = 2, 8, 4, 32, 12, 12, 3


def _inputs(chunk):
    g = torch.Generator().manual_seed(1000 + chunk)
    q = torch.randn(B, NQ, HQ, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, NC, HKV, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, NC, HKV, D, generator=g, dtype=torch.float64)
    return q, k, v


def _shard_tokens(x, rank, w):
    n = x.shape[1] // w
    return x[:, rank * n:(rank + 1) * n]


def _worker(rank, world, init_file, mode, mask, errors):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    try:
        cache_k = cache_v = None  # this rank's shard: [B, tokens, heads, D]
        full_k = full_v = None  # the unsharded cache, for the expected output
        for chunk in range(CHUNKS):
            q, k, v = _inputs(chunk)
            ql, kl, vl = (_shard_tokens(t, rank, world) for t in (q, k, v))

            def keys(ck, kc):
                return kc if ck is None else torch.cat([ck, kc], 1)

            if mode == "heads":
                def attend(qh, kh, vh):
                    o, _ = testing.exact_attention(qh, keys(cache_k, kh), keys(cache_v, vh), chunk_mask=mask,
                                                   num_chunk=kh.shape[1])
                    return o
                o, kh, vh = kd._head_parallel(attend, ql, kl, vl, None)
                cache_k, cache_v = keys(cache_k, kh), keys(cache_v, vh)
                assert kh.shape == (B, NC, HKV // world, D)
            else:
                def attend(qa, kc, vc, m):
                    return testing.exact_attention(qa, keys(cache_k, kc), keys(cache_v, vc), chunk_mask=m,
                                                   num_chunk=kc.shape[1])

                def merge(op, lp):
                    return testing.merge_states_reference(op, lp)[0]
                o = kd._sequence_parallel(attend, merge, ql, kl, vl, None, mask == "causal")
                cache_k, cache_v = keys(cache_k, kl), keys(cache_v, vl)
            ref, _ = testing.exact_attention(q, keys(full_k, k), keys(full_v, v), chunk_mask=mask, num_chunk=NC)
            full_k, full_v = keys(full_k, k), keys(full_v, v)
            want = _shard_tokens(ref, rank, world)
            err = float((o - want).abs().max())
            if o.shape != want.shape or not err < 1e-10:
                errors.put("rank %d chunk %d (%s, %s): shape %s vs %s, max error %g"
                           % (rank, chunk, mode, mask, tuple(o.shape), tuple(want.shape), err))
    except Exception as e:  # reported to the test through the queue
        errors.put("rank %d: %r" % (rank, e))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("mode", ["heads", "tokens"])
@pytest.mark.parametrize("mask", ["none", "causal"])
def test_sharded_attention_equals_unsharded(world, mode, mask):
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(world, os.path.join(d, "store"), mode, mask, errors), nprocs=world,
                           join=True, start_method="spawn")
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, "\n".join(found)


def test_merge_reference_against_kvq_cpu_reference():
    try:
        from kvq import _lib
        _lib.lib()
    except ImportError as e:
        pytest.skip(str(e))
    g = torch.Generator().manual_seed(7)
    P, b, n, h, d = 3, 2, 5, 4, 64
    o_parts = torch.randn(P, b, n, h, d, generator=g).to(torch.bfloat16)
    lse_parts = torch.randn(P, b, h, n, generator=g) * 4
    lse_parts[1, 0, 2, :] = float("-inf")  # an empty part
    lse_parts[:, 1, 3, 4] = float("-inf")  # a row with no key anywhere
    ro, rl = testing.merge_states_reference(o_parts, lse_parts)
    ko, kl = testing.merge_states_host(o_parts, lse_parts)
    assert float((ro - ko).abs().max()) < 1e-6
    finite = torch.isfinite(rl)
    assert bool(torch.equal(finite, torch.isfinite(kl)))
    assert float((rl[finite] - kl[finite]).abs().max()) < 1e-6
    assert float(rl[1, 3, 4]) == float("-inf") and float(ro[1, 4, 3].abs().max()) == 0.0


def test_merge_states_traces_on_fake_cuda_tensors():
    """The op's schema and fake implementation: traced without running (no GPU needed), one
    kvq.merge_states node, output shapes from the fake implementation, bad inputs refused."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    import kvq

    def f(op, lp):
        o, lse = kvq.merge_states(op * 1.0, lp)
        return o.float() * 2.0, lse

    try:
        with FakeTensorMode():
            o = torch.empty(3, 2, 16, 4, 128, dtype=torch.bfloat16, device="cuda")
            lse = torch.empty(3, 2, 4, 16, device="cuda")
    except (RuntimeError, AssertionError) as e:
        pytest.skip("this torch makes no fake CUDA tensors: %s" % e)
    with FakeTensorMode():
        o = torch.empty(3, 2, 16, 4, 128, dtype=torch.bfloat16, device="cuda")
        lse = torch.empty(3, 2, 4, 16, device="cuda")
        gm = make_fx(f, tracing_mode="fake")(o, lse)
        ro, rl = gm(o, lse)
        assert tuple(ro.shape) == (2, 16, 4, 128) and ro.dtype == torch.float32
        assert tuple(rl.shape) == (2, 4, 16) and rl.dtype == torch.float32
        with pytest.raises(ValueError, match="lse_parts must be"):
            make_fx(f, tracing_mode="fake")(o, lse.transpose(2, 3))
    assert gm.code.count("torch.ops.kvq.merge_states.default") == 1
