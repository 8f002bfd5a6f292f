"""The test reference of kvq.testing (torch SDPA over the dequantized cache, correction as an
additive bias) against kvq's own CPU reference (kvq/reference, through the C ABI's host
functions), on host memory: no GPU needed, only torch and libkvq_c."""
import ctypes

import pytest

torch = pytest.importorskip("torch")
try:
    from kvq import _lib, testing
    _lib.lib()
except ImportError as e:
    pytest.skip(str(e), allow_module_level=True)

from kvq._validate import effective_strides  # noqa: E402

CASES = [
    # (bits, granularity, key group, rotation, head dim, correction, mask, q heads, kv heads, dtype)
    (2, "per_token", 128, "none", 128, "taylor2", "none", 4, 2, torch.bfloat16),
    (4, "per_token", 128, "none", 128, "taylor4", "causal", 2, 2, torch.float16),
    (2, "per_channel", 32, "none", 128, "exact", "none", 4, 2, torch.bfloat16),
    (4, "per_channel", 32, "none", 128, "none", "causal", 2, 1, torch.bfloat16),
    (2, "per_token", 128, "hadamard", 128, "taylor2", "none", 4, 2, torch.bfloat16),
    (2, "per_token", 128, "hadamard_centered", 128, "taylor2", "causal", 2, 2, torch.bfloat16),
    (2, "per_token", 64, "none", 64, "taylor2", "none", 4, 2, torch.float16),
    (4, "per_channel", 32, "none", 64, "taylor2", "none", 2, 2, torch.bfloat16),
]


def host_handle(bits, gran, group, rot, d, batch, kv_heads, capacity, dtype):
    v = _lib.Variant(bits, group, _lib.PER_TOKEN if gran == "per_token" else _lib.PER_CHANNEL, bits, d, d,
                     _lib.ROTATIONS[rot])
    h = ctypes.c_void_p()
    code = _lib.BF16 if dtype == torch.bfloat16 else _lib.FP16
    _lib.check("create", _lib.lib().kvq_c_cache_create(ctypes.byref(v), batch, kv_heads, capacity, code, -1,
                                                        ctypes.byref(h)))
    return h, code


def append_host(h, code, buf, lengths, k, v, tables=None):
    b, n, hk, d = k.shape
    args = ctypes.create_string_buffer(_lib.APPEND_ARGS.size)
    _lib.APPEND_ARGS.pack_into(args, 0, 0, 0, k.data_ptr(), v.data_ptr(), 0, 0, *effective_strides(k),
                               *effective_strides(v), n, -1, code, b, hk, d)
    _lib.check("append", _lib.lib().kvq_c_quantize_append_host(h, buf.data_ptr(), lengths.data_ptr(), tables, args))


def attention_host(h, code, buf, lengths, q, kc, vc, corr, mask, scale, tables=None):
    b, nq, hq, d = q.shape
    nc, hk = kc.shape[1], kc.shape[2]
    args = ctypes.create_string_buffer(_lib.ATTENTION_ARGS.size)
    _lib.ATTENTION_ARGS.pack_into(args, 0, buf.data_ptr(), lengths.data_ptr(), q.data_ptr(), kc.data_ptr(),
                                  vc.data_ptr(), 0, 0, 0, 0, 0, *effective_strides(q), *effective_strides(kc),
                                  *effective_strides(vc), 0, 0, 0, nq, nc, -1, scale, _lib.CORRECTIONS[corr],
                                  _lib.MASKS[mask], code, b, hq, hk, d)
    out = torch.zeros(b, nq, hq, d, dtype=torch.float64)
    lse = torch.zeros(b, hq, nq, dtype=torch.float64)
    mass = torch.zeros(b, hq, nq, 3, dtype=torch.float64)
    _lib.check("attention", _lib.lib().kvq_c_attention_host(h, tables, args, out.data_ptr(), lse.data_ptr(), mass.data_ptr()))
    return out, lse, mass


@pytest.mark.parametrize("case", CASES, ids=lambda c: "int%d_%s%d_%s_d%d_%s_%s_hq%d_hkv%d" % c[:9])
def test_sdpa_reference_equals_kvq_reference(case):
    bits, gran, group, rot, d, corr, mask, hq, hk, dtype = case
    torch.manual_seed(0)
    batch, capacity = 2, 128
    h, code = host_handle(bits, gran, group, rot, d, batch, hk, capacity, dtype)
    try:
        nbytes = _lib.lib().kvq_c_cache_bytes(h)
        buf = torch.zeros(nbytes, dtype=torch.uint8)
        lengths = torch.zeros(batch, dtype=torch.int32)
        shift = torch.randn(hk, d) * 2  # a key mean, so that centering matters
        for n in (40, 30):  # the PerChannel key tail ends partial (70 % 32 = 6 tokens)
            kv = torch.randn(batch, n, 2, hk, d)
            k = (kv[:, :, 0] + shift).to(dtype)  # strided views of one buffer
            v = kv[:, :, 1].to(dtype)
            append_host(h, code, buf, lengths, k, v)
        assert lengths.tolist() == [70, 70]
        qkv = torch.randn(batch, 24, hq + 2 * hk, d).to(dtype)
        q, kc, vc = qkv[:, :, :hq], qkv[:, :, hq:hq + hk], qkv[:, :, hq + hk:]
        scale = d ** -0.5
        ro, rlse, rmass = attention_host(h, code, buf, lengths, q, kc, vc, corr, mask, scale)
        keys, values, steps = testing.dequantize_host(h, (batch, hk, capacity, d), buf, lengths)
        tpg = _lib.lib().kvq_c_cache_key_tokens_per_group(h)
        o, lse, mass = testing.sdpa_reference(keys, values, steps, lengths, tpg, rot != "none", q, kc, vc, corr, mask,
                                              scale)
        assert float((o - ro).abs().max()) <= 1e-5
        assert float((lse - rlse).abs().max()) <= 1e-5
        assert float((mass - rmass).abs().max()) <= 1e-6
        if gran == "per_channel":
            assert float(mass[..., 1].min()) > 0.0
        if corr != "none":  # the correction moves the result (the test would see a missing bias)
            o0, _, _ = testing.sdpa_reference(keys, values, steps, lengths, tpg, rot != "none", q, kc, vc, "none",
                                              mask, scale)
            assert float((o0 - ro).abs().max()) > 1e-4
    finally:
        _lib.lib().kvq_c_cache_destroy(h)


def test_host_only_handle_refuses_device_calls():
    h, code = host_handle(2, "per_token", 128, "none", 128, 1, 2, 64, torch.bfloat16)
    try:
        assert _lib.lib().kvq_c_prepare_attention(h, 1, 0, 2) == _lib.ERROR_INVALID_ARGUMENT
        args = ctypes.create_string_buffer(_lib.ATTENTION_ARGS.size)
        assert _lib.lib().kvq_c_attention(h, args) == _lib.ERROR_INVALID_ARGUMENT
        assert _lib.lib().kvq_c_append(h, ctypes.create_string_buffer(_lib.APPEND_ARGS.size)) == \
            _lib.ERROR_INVALID_ARGUMENT
    finally:
        _lib.lib().kvq_c_cache_destroy(h)


def test_variant_listing_and_status_strings():
    listed = _lib.compiled_variants()
    assert len(listed) == 10
    assert ({"k_bits": 2, "k_group": 128, "key_granularity": "per_token", "v_bits": 2, "v_group": 128,
             "head_dim": 128, "rotation": "none"}, {"none", "taylor2", "taylor4"}) in listed
    assert _lib.status_string(4) == "variant not supported"
    v = _lib.Variant(8, 128, 0, 8, 128, 128, 0)
    h = ctypes.c_void_p()
    assert _lib.lib().kvq_c_cache_create(ctypes.byref(v), 1, 1, 64, 1, -1, ctypes.byref(h)) == \
        _lib.ERROR_NOT_SUPPORTED


PAGED_CASES = [  # (bits, rotation, correction, mask, page tokens)
    (2, "none", "taylor2", "none", 64),
    (2, "hadamard", "taylor2", "causal", 32),
    (4, "none", "none", "none", 64),
]


@pytest.mark.parametrize("case", PAGED_CASES, ids=lambda c: "int%d_%s_%s_%s_pt%d" % c)
def test_paged_reference_through_permuted_and_shared_pages(case):
    """A paged host-only handle: appends through permuted tables, entry 1 listing entry 0's first
    page as a shared prefix; the C reference's attention equals the SDPA reference over the
    cache dequantized through the same tables, and the pages hold the contiguous cache's codes
    (same dequantized keys and values)."""
    bits, rot, corr, mask, pt = case
    torch.manual_seed(1)
    batch, hk, hq, d, num_pages, max_pages = 2, 2, 4, 128, 8, 4
    dtype = torch.bfloat16
    v = _lib.Variant(bits, 128, _lib.PER_TOKEN, bits, 128, d, _lib.ROTATIONS[rot])
    tables = torch.tensor([[6, 1, 4, -1], [6, 3, 0, 7]], dtype=torch.int32)  # page 6 shared by both entries
    h = ctypes.c_void_p()
    _lib.check("paged create", _lib.lib().kvq_c_paged_cache_create(ctypes.byref(v), batch, hk, pt, num_pages, max_pages,
                                                                     tables.data_ptr(), max_pages, _lib.BF16, -1,
                                                                     ctypes.byref(h)))
    hc, code = host_handle(bits, "per_token", 128, rot, d, batch, hk, max_pages * pt, dtype)
    try:
        assert _lib.lib().kvq_c_cache_capacity(h) == max_pages * pt
        pool = torch.zeros(_lib.lib().kvq_c_cache_bytes(h), dtype=torch.uint8)
        buf = torch.zeros(_lib.lib().kvq_c_cache_bytes(hc), dtype=torch.uint8)
        plen = torch.zeros(batch, dtype=torch.int32)
        clen = torch.zeros(batch, dtype=torch.int32)
        # The shared prefix: one page of the same tokens for both entries, which both write into
        # their first column, page 6 (identical codes).
        prefix = torch.randn(1, pt, 2, hk, d).expand(batch, pt, 2, hk, d).to(dtype)
        append_host(h, code, pool, plen, prefix[:, :, 0], prefix[:, :, 1], tables.data_ptr())
        append_host(hc, code, buf, clen, prefix[:, :, 0], prefix[:, :, 1])
        n = pt + pt // 2  # the next page and half of the one after
        kv = torch.randn(batch, n, 2, hk, d).to(dtype)
        # Entry 1's appends must not write page 6 again: it already holds the prefix.
        append_host(h, code, pool, plen, kv[:, :, 0], kv[:, :, 1], tables.data_ptr())
        append_host(hc, code, buf, clen, kv[:, :, 0], kv[:, :, 1])
        assert plen.tolist() == [pt + n] * 2
        qkv = torch.randn(batch, 16, hq + 2 * hk, d).to(dtype)
        q, kc, vc = qkv[:, :, :hq], qkv[:, :, hq:hq + hk], qkv[:, :, hq + hk:]
        scale = d ** -0.5
        ro, rlse, rmass = attention_host(h, code, pool, plen, q, kc, vc, corr, mask, scale, tables.data_ptr())
        shape = (batch, hk, max_pages * pt, d)
        keys, values, steps = testing.dequantize_host(h, shape, pool, plen, tables)
        ck, cv, cs = testing.dequantize_host(hc, shape, buf, clen)
        assert torch.equal(keys, ck) and torch.equal(values, cv) and torch.equal(steps, cs)
        o, lse, mass = testing.sdpa_reference(keys, values, steps, plen, 1, rot != "none", q, kc, vc, corr, mask, scale)
        assert float((o - ro).abs().max()) <= 1e-5
        assert float((lse - rlse).abs().max()) <= 1e-5
        assert float((mass - rmass).abs().max()) <= 1e-6
        # A table listing a page outside the pool for held tokens is refused by the reference.
        bad = tables.clone()
        bad[1, 1] = num_pages
        with pytest.raises(_lib.KvqError):
            attention_host(h, code, pool, plen, q, kc, vc, corr, mask, scale, bad.data_ptr())
    finally:
        _lib.lib().kvq_c_cache_destroy(h)
        _lib.lib().kvq_c_cache_destroy(hc)


def test_paged_variant_listing():
    paged = _lib.compiled_variants(paged=True)
    assert len(paged) == 3 and all(m == {"none", "taylor2"} for _, m in paged)
    assert {(k["k_bits"], k["rotation"]) for k, _ in paged} == {(2, "none"), (4, "none"), (2, "hadamard")}
