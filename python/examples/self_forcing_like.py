#!/usr/bin/env python3
"""A Self-Forcing-shaped autoregressive video loop on kvq caches, with random activations.

Wan 1.3B attention shapes: 30 layers (--layers), 12 heads, head dim 128, 1560 tokens per
latent frame, chunks of 3 frames (4680 tokens). Each chunk is denoised in --steps steps; in
every step each layer's queries attend to [the layer's kvq cache ; the chunk's own keys and
values] (torch.ops.kvq.attention). After the last step a clean pass runs the layers once
more and appends the chunk's keys and values to the caches (torch.ops.kvq.append).

Printed per chunk: the caches' memory against bf16 K/V of the same tokens, the attention
GPU time, and the softmax mass on the current chunk with the configured correction and
without one (same queries; the uncorrected call is extra, outside the timing).

By default the caches hold every chunk (capacity = chunks x 4680). With --window W the
caches are paged (kvq.PagedKVCache, one page per chunk) and roll as in Self-Forcing and
LongLive: the first --sinks S chunks stay, the W newest others form the window, and once the
window is full the oldest window page is dropped from the block table and recycled for the
next chunk: no copy, memory fixed at S + W + 1 pages whatever --chunks is. Pages hold a
multiple of 64 tokens, so this mode takes --frame-tokens (1536 by default in this mode: a
Wan frame's 1560 tokens are not a whole number of pages).

    python3 python/examples/self_forcing_like.py --layers 30 --chunks 7 --steps 4
    python3 python/examples/self_forcing_like.py --layers 4 --chunks 40 --steps 2 --window 3 --sinks 1
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import kvq  # noqa: E402

HEADS, HEAD_DIM, FRAME_TOKENS, FRAMES_PER_CHUNK = 12, 128, 1560, 3


def activations(n, gen, key_shift):
    """Random q, k, v [1, n, heads, D] in bf16; keys share a per-channel offset (as real keys do)."""
    shape = (1, n, HEADS, HEAD_DIM)
    q = torch.randn(shape, device="cuda", generator=gen)
    k = torch.randn(shape, device="cuda", generator=gen) + key_shift
    v = torch.randn(shape, device="cuda", generator=gen)
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def roll(cache, listed, chunk):
    """Points the paged cache's table at `listed` (the last page the one to fill) and its length
    at the pages before it: the next append quantizes into the last page."""
    n = len(listed)
    cache.block_table[0, :n].copy_(torch.tensor(listed, dtype=torch.int32), non_blocking=True)
    cache.lengths.fill_((n - 1) * chunk)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--chunks", type=int, default=7, help="chunks of 3 frames (7 = 21 latent frames)")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per chunk")
    ap.add_argument("--bits", type=int, default=2, choices=(2, 4))
    ap.add_argument("--key-granularity", default="per_token", choices=("per_token", "per_channel"))
    ap.add_argument("--rotation", default="none", choices=("none", "hadamard", "hadamard_centered"))
    ap.add_argument("--correction", default="taylor2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=0, help="W > 0: paged caches rolling over the W newest chunks")
    ap.add_argument("--sinks", type=int, default=1, help="with --window: the first S chunks stay (attention sinks)")
    ap.add_argument("--frame-tokens", type=int, default=None,
                    help="tokens per latent frame (%d; with --window 1536, a multiple of 64)" % FRAME_TOKENS)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this example needs a CUDA device")

    frame = a.frame_tokens or (1536 if a.window else FRAME_TOKENS)
    chunk = frame * FRAMES_PER_CHUNK
    group = 128 if a.key_granularity == "per_token" else 32
    kw = dict(head_dim=HEAD_DIM, bits=a.bits, key_granularity=a.key_granularity, group_size=group,
              rotation=a.rotation, correction=a.correction)
    if a.window:
        if a.window < 1 or a.sinks < 0 or chunk % 64:
            raise SystemExit("--window needs W >= 1, S >= 0 and chunks of a multiple of 64 tokens (got %d)" % chunk)
        pages = a.sinks + a.window + 1
        caches = [kvq.PagedKVCache(1, HEADS, num_pages=pages, page_tokens=chunk, max_pages_per_entry=pages, **kw)
                  for _ in range(a.layers)]
        capacity = pages * chunk
    else:
        capacity = chunk * a.chunks
        caches = [kvq.KVCache(1, HEADS, capacity, **kw) for _ in range(a.layers)]
    for c in caches:
        c.prepare(corrections=(a.correction, "none"))
    print(caches[0])
    free = list(range(a.sinks + a.window + 1)) if a.window else []
    listed = []  # paged: the table's pages, sinks first, then the window
    gen = torch.Generator(device="cuda").manual_seed(a.seed)
    key_shift = torch.randn(HEADS, HEAD_DIM, device="cuda", generator=gen) * 2.0
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    bytes_per_token = sum(c.nbytes for c in caches) / capacity  # all layers, K and V, metadata included
    bf16_per_token = sum(c.bf16_nbytes(1) for c in caches)

    print("%5s %8s %12s %12s %7s %10s %9s %14s %14s" % ("chunk", "tokens", "kvq MiB", "bf16 MiB", "ratio",
                                                          "attn ms", "calls", "mass(corr)", "mass(none)"))
    for ci in range(a.chunks):
        cached = len(listed) * chunk if a.window else ci * chunk
        attn_ms, calls = 0.0, 0
        mass_c, mass_n = [], []
        if a.window:
            # The clean pass appends this chunk into a free page; once the window is full its
            # oldest page is dropped from the table and recycled.
            if len(listed) == a.sinks + a.window:
                free.append(listed.pop(a.sinks))
            listed.append(free.pop(0))
        for step in range(a.steps + 1):  # the denoising steps, then the clean pass
            clean = step == a.steps
            for layer, cache in enumerate(caches):
                q, k, v = activations(chunk, gen, key_shift)
                start.record()
                o, mass = cache.attention(q, k, v, return_mass=True)
                stop.record()
                if clean:
                    if a.window:
                        roll(cache, listed, chunk)
                    cache.append(k, v)
                stop.synchronize()
                attn_ms += start.elapsed_time(stop)
                calls += 1
                if step == 0:
                    _, mass0 = cache.attention(q, k, v, correction="none", return_mass=True)
                    mass_c.append(mass[..., 2].mean())
                    mass_n.append(mass0[..., 2].mean())
        mc = float(torch.stack(mass_c).mean())
        mn = float(torch.stack(mass_n).mean())
        kvq_mib = bytes_per_token * cached / 2 ** 20
        bf_mib = bf16_per_token * cached / 2 ** 20
        print("%5d %8d %12.1f %12.1f %7s %10.2f %9d %14.4f %14.4f" % (
            ci, cached, kvq_mib, bf_mib, "%.3f" % (kvq_mib / bf_mib) if cached else "-", attn_ms, calls, mc, mn))
    for c in caches:
        c.check_errors()
    print("allocated: %.1f MiB for %d layers x %d tokens (bf16 K/V: %.1f MiB)"
          % (sum(c.nbytes for c in caches) / 2 ** 20, a.layers, capacity,
             sum(c.bf16_nbytes() for c in caches) / 2 ** 20))


if __name__ == "__main__":
    main()
