#!/usr/bin/env python3
"""Prints the benchmark table of one device run: quantize-and-append GB/s and ratio to
copy; attention TFLOP/s of each kvq variant with its ratio to torch flash and cuDNN on
the same shape (all measured in the same call). Usage: summarize_bench.py LOGDIR"""
import json
import os
import re
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(d):
    q = load(os.path.join(d, "bench_quantize_append.json"))
    if q:
        print("quantize_append: name | us | GB/s | ratio to copy")
        for b in q["benchmarks"]:
            if "ratio_to_copy" in b:
                print(f"  {b['name'].replace('/manual_time', '')} | {b.get('us_per_append', 0):.1f} | "
                      f"{b['GB/s']:.0f} | {b['ratio_to_copy']:.3f}")
    t = load(os.path.join(d, "torch_sdpa.json"))
    anchor, burst = {}, {}
    if t:
        for r in t["results"]:
            anchor[(r["nq"], r["cache"], r["hq"], r["hkv"], r["backend"])] = r.get("tflops", 0.0)
            burst[(r["nq"], r["cache"], r["hq"], r["hkv"], r["backend"])] = r.get("tflops_burst", 0.0)
    a = load(os.path.join(d, "bench_attention.json"))
    if a:
        print("attention: name | ms | TFLOP/s | x flash | x cudnn (ratios of speed; >1 is faster) | time / cudnn time"
              " | time / cudnn burst time (torch figures: steady state, and after 3 calls only)")
        for b in a["benchmarks"]:
            if "TFLOP/s" not in b:
                continue
            name = b["name"].replace("/manual_time", "")
            m = re.search(r"nq:(\d+)/cache:(\d+)/h:(\d+)(?:/hkv:(\d+))?", name)
            ratios = ""
            if m:
                nq, cache, hq = int(m[1]), int(m[2]), int(m[3])
                hkv = int(m[4]) if m[4] else hq
                fl = anchor.get((nq, cache, hq, hkv, "flash"))
                cu = anchor.get((nq, cache, hq, hkv, "cudnn"))
                cub = burst.get((nq, cache, hq, hkv, "cudnn"))
                ratios = (f" | {b['TFLOP/s'] / fl:.3f} | {b['TFLOP/s'] / cu:.3f} | {cu / b['TFLOP/s']:.3f}"
                          if fl and cu else "")
                if ratios and cub:
                    ratios += f" | {cub / b['TFLOP/s']:.3f}"
            print(f"  {name} | {b.get('ms', 0):.2f} | {b['TFLOP/s']:.1f}{ratios}")
        # Correction overhead: Taylor2 time over None time, same kernel and shape.
        ms = {b["name"].replace("/manual_time", ""): b.get("ms", 0) for b in a["benchmarks"] if "ms" in b}
        lines = []
        for name, t2 in ms.items():
            if "_taylor2_" in name:
                base = ms.get(name.replace("_taylor2_", "_none_"))
                if base:
                    lines.append(f"  {name}: {100.0 * (t2 / base - 1.0):+.1f} %")
        if lines:
            print("Taylor2 overhead vs None (time):")
            print("\n".join(lines))
    if t:
        print("torch sdpa bf16 (steady / burst TFLOP/s): " +
              "; ".join(f"{r['backend']} nq{r['nq']} cache{r['cache']} {r['hq']}/{r['hkv']}: "
                        f"{r.get('tflops', 0):.1f} / {r.get('tflops_burst', 0):.1f}" for r in t["results"]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
