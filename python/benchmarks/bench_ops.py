#!/usr/bin/env python3
"""Host overhead and GPU time of kvq's torch attention op.

Host time: the GPU is kept busy (torch.cuda._sleep) while `--calls` calls are enqueued, so
the wall time per call is the host's alone; reported for the layers of the call:
  KVCache.attention        the user-facing method in eager mode (argument defaults, then the
                           op, or with the Python kernels their checks, allocation and C call
                           without the dispatcher)
  torch.ops.kvq.attention  the registered op through torch's dispatcher (what torch.compile
                           graphs call): libkvq_torch's C++ kernel where it is loaded, else
                           the Python kernel (KVQ_TORCH_OPS=0 forces the latter)
  C ABI call               packing the argument struct and the ctypes call (outputs preallocated)

GPU time: CUDA events around one call, after a short sleep kernel that hides the host time
(as bench_attention does), at the Wan 1.3B chunk shape by default: one batch entry, 12
heads, head dim 128, Nq = chunk = 4680 tokens (3 frames of 1560), 18720 cached tokens,
INT2 PerToken G128 keys and values, Taylor2. With --cpp-bench BUILD/benchmarks/bench_attention
the C++ benchmark of the same kernel configuration runs in between two Python rounds and the
ratio is printed (bench_attention fills its cache with synthetic codes, this script with
quantized random keys and values; the kernel does the same work for any data).

    python3 python/benchmarks/bench_ops.py [--cpp-bench build/benchmarks/bench_attention]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import kvq  # noqa: E402
from kvq import _lib, ops  # noqa: E402
from kvq._validate import effective_strides  # noqa: E402


def host_us(fn, calls, rounds):
    per = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        torch.cuda._sleep(int(2e9))  # ~1 s of GPU time: the calls below only enqueue
        s = time.perf_counter()
        for _ in range(calls):
            fn()
        per.append((time.perf_counter() - s) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(per), min(per)


def gpu_ms(fn, iters):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        torch.cuda._sleep(200000)  # covers the host time of the call
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.mean(times), statistics.median(times)


def cpp_ms(path, nq, cache_len, heads, reps):
    name = "BM_attention/rot_pair/int2_pt128_taylor2_d128_sm90ov/nq:%d/cache:%d/h:%d" % (nq, cache_len, heads)
    # (UseManualTime benchmarks carry a "/manual_time" suffix: the filter ends at the "/".)
    out = subprocess.run([path, "--benchmark_filter=^%s/" % name, "--benchmark_format=json",
                          "--benchmark_repetitions=%d" % reps], check=True, capture_output=True, text=True).stdout
    runs = [b for b in json.loads(out)["benchmarks"] if b.get("run_type") == "iteration"]
    if not runs:
        raise SystemExit("the C++ benchmark %s did not run (filter %s)" % (path, name))
    return statistics.mean(b["ms"] for b in runs), name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nq", type=int, default=4680)
    ap.add_argument("--cache", type=int, default=18720)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--cpp-bench", default=None, help="path of bench_attention, for the comparison")
    ap.add_argument("--cpp-reps", type=int, default=5)
    a = ap.parse_args()

    torch.manual_seed(0)
    dev = torch.device("cuda")
    h, d = a.heads, 128
    cache = kvq.KVCache(1, h, a.cache, head_dim=d, bits=2, key_granularity="per_token", group_size=128,
                        correction="taylor2", device=dev)
    for t0 in range(0, a.cache, a.nq):
        n = min(a.nq, a.cache - t0)
        cache.append(torch.randn(1, n, h, d, device=dev, dtype=torch.bfloat16),
                     torch.randn(1, n, h, d, device=dev, dtype=torch.bfloat16))
    torch.cuda.synchronize()
    assert cache.lengths.tolist() == [a.cache]
    q = torch.randn(1, a.nq, h, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, a.nq, h, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, a.nq, h, d, device=dev, dtype=torch.bfloat16)
    scale = d ** -0.5

    # The layers of one call.
    b = ops._binding(cache.cache_id)
    o = torch.empty_like(q)
    qs = effective_strides(q)

    def c_abi():
        _lib.ATTENTION_ARGS.pack_into(
            b.attention_buf, 0, cache.buffer.data_ptr(), cache.lengths.data_ptr(), q.data_ptr(), k.data_ptr(),
            v.data_ptr(), o.data_ptr(), 0, 0, 0, ops._raw_stream(dev.index or 0), *qs, *qs, *qs, *qs, a.nq, a.nq, -1,
            scale, 1, 0, b.dtype_code, 1, h, h, d)
        s = b.attention_fn(b.handle, b.attention_addr)
        assert s == 0, s

    layers = [
        ("KVCache.attention", lambda: cache.attention(q, k, v)),
        ("torch.ops.kvq.attention", lambda: ops.attention_op(cache.buffer, cache.lengths, None, cache.error, q, k, v,
                                                             cache.cache_id, 1, 0, scale, False, False, -1)),
        ("C ABI call", c_abi),
    ]
    print("device: %s, torch %s, libkvq_c: %s" % (torch.cuda.get_device_name(), torch.__version__, _lib.library_path()))
    print("op kernels: %s" % ("C++ (libkvq_torch)" if ops.CPP is not None else "Python (KVQ_TORCH_OPS=0 or no libkvq_torch)"))
    print("shape: batch 1, Nq %d, chunk %d, cache %d, %d heads, D %d, INT2 PerToken G128, Taylor2, bf16"
          % (a.nq, a.nq, a.cache, h, d))
    print("\nhost time per call (GPU busy; %d calls x %d rounds):" % (a.calls, a.rounds))
    for name, fn in layers:
        fn()
        med, best = host_us(fn, a.calls, a.rounds)
        print("  %-26s median %6.2f us, best %6.2f us" % (name, med, best))

    print("\nGPU time per call (%d calls):" % a.iters)
    op = layers[1][1]
    m1, md1 = gpu_ms(op, a.iters)
    print("  torch op, round 1: mean %.4f ms, median %.4f ms" % (m1, md1))
    me, mde = gpu_ms(layers[0][1], a.iters)
    print("  KVCache.attention (eager): mean %.4f ms, median %.4f ms" % (me, mde))
    if a.cpp_bench:
        c, name = cpp_ms(a.cpp_bench, a.nq, a.cache, h, a.cpp_reps)
        print("  C++ %s: mean %.4f ms" % (name, c))
    m2, md2 = gpu_ms(op, a.iters)
    print("  torch op, round 2: mean %.4f ms, median %.4f ms" % (m2, md2))
    if a.cpp_bench:
        print("  torch op / C++: %.3f" % (((m1 + m2) / 2) / c))
    # The same through a CUDA graph (no host time at all).
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        op()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        op()
    mg, _ = gpu_ms(g.replay, a.iters)
    print("  torch op in a CUDA graph: mean %.4f ms" % mg)


if __name__ == "__main__":
    main()
