"""kvq.PagedKVCache on the GPU: attention through permuted and shared pages against torch SDPA
over the cache dequantized through the same tables, the codes equal to a contiguous cache's,
a rolling window with sinks by table edits only, bad table columns flagged and nothing
written outside the listed pages, torch.compile and CUDA graphs with table edits between
replays."""
import pytest

from _gpu import require_gpu

torch = require_gpu()

import kvq  # noqa: E402
from kvq import testing  # noqa: E402

DEV = "cuda"
PAGED = [(2, "none", "taylor2", 64), (2, "hadamard", "taylor2", 64), (4, "none", "none", 128)]


def rand(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEV) * scale).bfloat16()


def paged(bits, rot, corr, pt, batch=2, kv_heads=2, num_pages=8, max_pages=4, q_heads=4):
    return kvq.PagedKVCache(batch, kv_heads, num_pages=num_pages, page_tokens=pt, max_pages_per_entry=max_pages,
                            bits=bits, group_size=128, rotation=rot, correction=corr, q_heads=q_heads)


def check_against_reference(cache, q, kc, vc, corr, mask="none"):
    o, lse, mass = cache.attention(q, kc, vc, correction=corr, mask=mask, return_lse=True, return_mass=True)
    torch.cuda.synchronize()
    ro, rlse, rmass = testing.reference_attention(cache, q, kc, vc, corr, mask)
    vmax = max(float(vc.abs().max()), 1.0)
    err = (o.double().cpu() - ro).abs()
    assert bool((err <= 1e-2 * vmax + 1e-2 * ro.abs()).all()), "max |o - ref| %.3g" % float(err.max())
    # Scores from bf16 operands (keys of scale 2 here): LSE within 0.5 % of its value.
    assert float(((lse.double().cpu() - rlse).abs() / rlse.abs().clamp(min=1.0)).max()) <= 5e-3
    assert float((mass.double().cpu() - rmass).abs().max()) <= 1e-2
    return o


@pytest.mark.parametrize("variant", PAGED, ids=lambda v: "int%d_%s_%s_pt%d" % v)
@pytest.mark.parametrize("mask", ["none", "causal"])
def test_permuted_and_shared_pages_match_the_reference_and_the_contiguous_codes(variant, mask):
    bits, rot, corr, pt = variant
    torch.manual_seed(0)
    c = paged(bits, rot, corr, pt)
    flat = kvq.KVCache(2, 2, 4 * pt, bits=bits, group_size=128, rotation=rot, correction=corr, q_heads=4)
    c.block_table.copy_(torch.tensor([[6, 1, 4, -1], [6, 3, 0, 7]], dtype=torch.int32))  # page 6 shared
    prefix = rand(1, pt, 2, 128).expand(2, pt, 2, 128)
    pv = rand(1, pt, 2, 128).expand(2, pt, 2, 128)
    for cache in (c, flat):
        cache.append(prefix, pv)
    k, v = rand(2, pt + pt // 2, 2, 128, scale=2.0), rand(2, pt + pt // 2, 2, 128)
    for cache in (c, flat):
        cache.append(k, v)
    q, kc, vc = rand(2, 40, 4, 128), rand(2, 48, 2, 128), rand(2, 48, 2, 128)
    o = check_against_reference(c, q, kc, vc, corr, mask)
    c.check_errors()
    keys, values, steps, _ = testing.dequantize(c)
    fk, fv, fs, _ = testing.dequantize(flat)
    assert torch.equal(keys, fk) and torch.equal(values, fv) and torch.equal(steps, fs)
    of = flat.attention(q, kc, vc, correction=corr, mask=mask)
    assert float((o.float() - of.float()).abs().max()) <= 1e-2 * max(float(of.abs().max()), 1.0)


def test_rolling_window_with_sinks_by_table_edits():
    """One page per chunk; the table lists the sink page and the newest W pages; the oldest other
    page goes back to the free list. Memory stays at S + W + 1 pages; every step matches the
    reference over exactly the listed pages."""
    torch.manual_seed(1)
    pt, sinks, window = 64, 1, 2
    c = kvq.PagedKVCache(1, 2, num_pages=sinks + window + 1, page_tokens=pt, max_pages_per_entry=sinks + window + 1,
                         rotation="hadamard", q_heads=4)
    free = list(range(sinks + window + 1))
    listed = []  # pages in table order: sinks first, then the window
    for chunk in range(7):
        q, k, v = rand(1, pt, 4, 128), rand(1, pt, 2, 128, scale=2.0), rand(1, pt, 2, 128)
        check_against_reference(c, q, k, v, "taylor2")
        # The clean pass: quantize the chunk into a free page at the end of the table.
        if len(listed) == sinks + window:
            old = listed.pop(sinks)
            free.append(old)
        page = free.pop(0)
        listed.append(page)
        n = len(listed)
        c.block_table[0, :n] = torch.tensor(listed, dtype=torch.int32, device=DEV)
        c.lengths.fill_((n - 1) * pt)
        c.append(k, v)
        torch.cuda.synchronize()
        assert c.lengths.tolist() == [n * pt]
    c.check_errors()
    # The memory is the S + W + 1 pages whatever the chunk count: under a quarter of bf16 K/V of them.
    assert c.nbytes <= c.bf16_nbytes((sinks + window + 1) * pt) // 4


def test_bad_table_column_is_flagged_and_nothing_outside_the_listed_pages_is_written():
    torch.manual_seed(2)
    num_pages = 4
    c = paged(2, "none", "taylor2", 64, batch=2, num_pages=num_pages, max_pages=2)
    # INT2 PerToken, not centered: the allocation is the pool alone, num_pages equal pages.
    assert c.nbytes % num_pages == 0
    page_bytes = c.nbytes // num_pages
    c.buffer.fill_(0xA5)  # sentinel everywhere
    c.block_table.copy_(torch.tensor([[2, -1], [4, 0]], dtype=torch.int32))  # entry 1: page 4 is outside the pool
    k, v = rand(2, 64, 2, 128), rand(2, 64, 2, 128)
    c.append(k, v)
    torch.cuda.synchronize()
    assert c.lengths.tolist() == [64, 0]
    with pytest.raises(kvq.KvqError, match="held no page of the pool"):
        c.check_errors()
    host = c.buffer.cpu()
    outside = torch.cat([host[:2 * page_bytes], host[3 * page_bytes:]])
    assert bool((outside == 0xA5).all())  # pages 0, 1, 3 untouched
    assert bool((host[2 * page_bytes:3 * page_bytes] != 0xA5).any())  # page 2 written
    # Attention over held tokens whose column leaves the pool skips the entry and flags it;
    # the other entry's rows are computed.
    c.lengths.copy_(torch.tensor([64, 64], dtype=torch.int32))
    q = rand(2, 8, 4, 128)
    o = c.attention(q, k[:, :8], v[:, :8])
    torch.cuda.synchronize()
    with pytest.raises(kvq.KvqError, match="held no page of the pool"):
        c.check_errors()
    assert bool(torch.isfinite(o[0].float()).all())
    assert torch.equal(c.buffer.cpu(), host)  # attention writes no byte of the cache


def test_compile_and_graph_with_table_edits_between_replays():
    torch.manual_seed(3)
    pt = 64
    c = paged(2, "none", "taylor2", pt, batch=1, num_pages=4, max_pages=4)
    c.block_table[0, :2] = torch.tensor([3, 1], dtype=torch.int32, device=DEV)
    c.append(rand(1, 2 * pt, 2, 128, scale=2.0), rand(1, 2 * pt, 2, 128))

    def step(q, k, v):
        return c.attention(q, k, v) * 2.0

    q, k, v = rand(1, 32, 4, 128), rand(1, 32, 2, 128), rand(1, 32, 2, 128)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert float((compiled(q, k, v).float() - step(q, k, v).float()).abs().max()) <= 1e-2
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        c.attention(q, k, v)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        o_static = c.attention(q, k, v)
    for table, length in (([3, 1], 2 * pt), ([1], pt), ([3], pt)):  # the graph reads the edited table
        c.block_table[0, :len(table)] = torch.tensor(table, dtype=torch.int32, device=DEV)
        c.lengths.fill_(length)
        g.replay()
        torch.cuda.synchronize()
        ref = check_against_reference(c, q, k, v, "taylor2")
        assert float((o_static.float() - ref.float()).abs().max()) <= 1e-3 * max(float(ref.abs().max()), 1.0)


def test_paged_argument_errors():
    with pytest.raises(ValueError, match="no compiled paged cache variant"):
        kvq.PagedKVCache(1, 2, num_pages=4, page_tokens=64, max_pages_per_entry=2, key_granularity="per_channel",
                         group_size=32)
    with pytest.raises(ValueError, match="page_tokens must be an int >= 1"):
        kvq.PagedKVCache(1, 2, num_pages=4, page_tokens=0, max_pages_per_entry=2)
    with pytest.raises(ValueError, match="correction 'taylor4' is not compiled for this paged variant"):
        kvq.PagedKVCache(1, 2, num_pages=4, page_tokens=64, max_pages_per_entry=2, correction="taylor4")
    c = paged(2, "none", "taylor2", 64, batch=1)
    q = rand(1, 8, 4, 128)
    with pytest.raises(ValueError, match="block_table must be its int32"):
        torch.ops.kvq.attention(c.buffer, c.lengths, None, c.error, q, q[:, :, :2], q[:, :, :2], c.cache_id, 1, 0, 0.08,
                                False, False, -1)
