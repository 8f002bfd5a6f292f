#!/usr/bin/env python3
"""Times torch's scaled_dot_product_attention (bf16) with the flash and cuDNN backends on
the shapes of bench_attention.cu (Nkv = cache + chunk, chunk = Nq, bidirectional, head
dim 128; batch 1 unless a shape names it: the short-query shapes of BM_attention/short/)
and prints JSON: one record per (shape, backend) with ms and TFLOP/s
(4 * B * Hq * Nq * Nkv * D / time). CUDA events, median of 10 timed calls, two ways:
  steady (ms, tflops): after 1 s of back-to-back calls of the same shape, when the GPU
    runs at the clock its 700 W power cap allows under this load (the state of an engine
    that runs attention continuously, and of kvq's Google Benchmark figures, which
    average >= 0.3 s of back-to-back launches after a warm-up);
  burst (ms_burst, tflops_burst): after 3 warm-up calls only (the clock may not have
    dropped yet).
Usage: torch_sdpa.py [short]   (short: only the shapes of BM_attention/short/)
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [  # (Nq, cache, Hq, Hkv[, batch])
    (8192, 65536, 24, 24),
    (4096, 16384, 24, 24),
    (8192, 65536, 48, 8),
    (4680, 18720, 12, 12),  # Wan 1.3B chunk (3 frames of 1560 tokens, 12 heads)
]
SHORT_SHAPES = [  # the shapes of BM_attention/short/...
    (1, 32768, 32, 8, 8),  # decode
    (16, 32768, 32, 8, 8),  # 16 queries
    (1560, 31200, 12, 12),  # frame-level video: one 1560-token frame
]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
D = 128


def time_call(fn, reps=10, warmup=3, soak_s=0.0):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.time()
    while time.time() - t0 < soak_s:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def main():
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": []}
    shapes = SHORT_SHAPES if sys.argv[1:] == ["short"] else SHAPES + SHORT_SHAPES
    for shape in shapes:
        nq, cache, hq, hkv = shape[:4]
        batch = shape[4] if len(shape) > 4 else 1
        nkv = cache + nq
        q = torch.randn(batch, hq, nq, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, hkv, nkv, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(batch, hkv, nkv, D, device="cuda", dtype=torch.bfloat16)
        flops = 4.0 * batch * hq * nq * nkv * D
        for name, backend in BACKENDS.items():
            rec = {"nq": nq, "cache": cache, "nkv": nkv, "hq": hq, "hkv": hkv, "d": D, "backend": name}
            if batch != 1:
                rec["batch"] = batch
            try:
                gqa = hq != hkv
                with sdpa_kernel([backend]):
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
                    burst = time_call(fn)
                    ms = time_call(fn, soak_s=1.0)
                rec.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12, ms_burst=burst,
                           tflops_burst=flops / (burst * 1e-3) / 1e12)
            except Exception as ex:  # a backend may refuse a shape (e.g. GQA)
                if hq != hkv:
                    try:  # fall back to repeated K/V heads (what a GQA-less backend needs)
                        kr = k.repeat_interleave(hq // hkv, dim=1)
                        vr = v.repeat_interleave(hq // hkv, dim=1)
                        with sdpa_kernel([backend]):
                            fn = lambda: F.scaled_dot_product_attention(q, kr, vr)
                            burst = time_call(fn)
                            ms = time_call(fn, soak_s=1.0)
                        rec.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12, ms_burst=burst,
                                   tflops_burst=flops / (burst * 1e-3) / 1e12, note="K/V heads repeated")
                    except Exception as ex2:
                        rec["error"] = f"{type(ex2).__name__}: {ex2}"[:300]
                else:
                    rec["error"] = f"{type(ex).__name__}: {ex}"[:300]
            out["results"].append(rec)
        del q, k, v
        torch.cuda.empty_cache()
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
