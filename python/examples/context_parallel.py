#!/usr/bin/env python3
"""Context-parallel attention over kvq caches across GPUs, in the shape of a Self-Forcing loop.

Launched with torchrun, one process per GPU (NCCL):

    torchrun --nproc-per-node 2 python/examples/context_parallel.py --mode heads --check

Each rank holds a shard of every layer's kvq cache and the activations arrive sharded by
sequence (each rank has tokens/W of the chunk's q, k, v), as in Ulysses / ring attention
engines:

* --mode heads (Ulysses-style, kvq.distributed.head_parallel_attention): rank r owns kv
  heads [r*H/W, (r+1)*H/W); all-to-alls exchange tokens for heads before and after the
  attention.
* --mode tokens (ring-style, kvq.distributed.sequence_parallel_attention): rank r owns
  every head of its share of the cached tokens; queries are all-gathered, every rank
  attends to its span, and the partial (O, LSE) are merged by kvq.merge_states on the
  queries' owner.

Per chunk: --steps denoising passes over the layers (attention to [cache ; chunk]), then a
clean pass that attends and appends each rank's shard of the chunk. Printed: each rank's
cache bytes (against bf16 K/V), and per chunk the attention time per layer call (the
slowest rank, all-to-alls included). With --check, rank 0 also runs every call on one GPU
over unsharded caches of the same inputs, times it, and prints the largest difference of
the outputs relative to the largest output element (exit status 1 beyond --tol).

The default shape is Wan 2.1 14B's attention (40 heads, D 128, 1560 tokens per latent
frame, 5-frame chunks of 7800 tokens); --heads, --frame-tokens and --frames-per-chunk
change it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import kvq  # noqa: E402
from kvq import distributed as kd  # noqa: E402


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="heads", choices=("heads", "tokens"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=7, help="chunks (the cache holds chunks-1 before the last)")
    ap.add_argument("--steps", type=int, default=2, help="denoising passes per chunk before the clean pass")
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--frame-tokens", type=int, default=1560)
    ap.add_argument("--frames-per-chunk", type=int, default=5)
    ap.add_argument("--bits", type=int, default=2, choices=(2, 4))
    ap.add_argument("--rotation", default="none", choices=("none", "hadamard", "hadamard_centered"))
    ap.add_argument("--correction", default="taylor2")
    ap.add_argument("--mask", default="none", choices=("none", "causal"))
    ap.add_argument("--check", action="store_true", help="compare with one GPU on rank 0 (and time it)")
    ap.add_argument("--tol", type=float, default=0.02,
                    help="largest |difference| / max |output| accepted by --check")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main():
    a = parse()
    if not torch.cuda.is_available():
        raise SystemExit("this example needs CUDA devices (one per rank)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    w, rank = dist.get_world_size(), dist.get_rank()
    chunk = a.frame_tokens * a.frames_per_chunk
    if chunk % w or a.heads % w:
        raise SystemExit("the chunk's tokens (%d) and the heads (%d) must divide among %d ranks" % (chunk, a.heads, w))
    n = chunk // w  # this rank's tokens of each chunk
    capacity = chunk * a.chunks
    kw = dict(head_dim=128, bits=a.bits, group_size=128, rotation=a.rotation, correction=a.correction)
    if a.mode == "heads":
        shards = [kvq.KVCache(1, a.heads // w, capacity, q_heads=a.heads // w, **kw) for _ in range(a.layers)]
        attend = kd.head_parallel_attention
    else:
        shards = [kvq.KVCache(1, a.heads, capacity // w, q_heads=a.heads, **kw) for _ in range(a.layers)]
        attend = kd.sequence_parallel_attention
    whole = ([kvq.KVCache(1, a.heads, capacity, q_heads=a.heads, **kw) for _ in range(a.layers)]
             if a.check and rank == 0 else [])
    for c in shards + whole:
        c.prepare(masks=(a.mask,))
    shard_bytes = sum(c.nbytes for c in shards)
    bf16 = 2 * 2 * a.layers * a.heads * capacity * 128
    print("rank %d of %d (%s): cache shard %.1f MiB for %d layers (bf16 K/V of the whole cache: %.1f MiB)"
          % (rank, w, torch.cuda.get_device_name(local), shard_bytes / 2 ** 20, a.layers, bf16 / 2 ** 20), flush=True)
    dist.barrier()

    # Every rank draws the same full activations (same seed) and keeps its tokens.
    gen = torch.Generator(device="cuda").manual_seed(a.seed)
    key_shift = torch.randn(a.heads, 128, device="cuda", generator=gen) * 2.0
    mine = slice(rank * n, (rank + 1) * n)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    if rank == 0:
        print("%5s %8s %14s %14s %12s" % ("chunk", "cached", "cp ms/call", "1-GPU ms/call", "rel. diff"))
    worst = 0.0
    for ci in range(a.chunks):
        cp_ms = one_ms = 0.0
        calls = 0
        diff = 0.0
        for step in range(a.steps + 1):
            clean = step == a.steps
            for layer in range(a.layers):
                q = torch.randn(1, chunk, a.heads, 128, device="cuda", generator=gen).bfloat16()
                k = (torch.randn(1, chunk, a.heads, 128, device="cuda", generator=gen) + key_shift).bfloat16()
                v = torch.randn(1, chunk, a.heads, 128, device="cuda", generator=gen).bfloat16()
                dist.barrier()  # every rank starts together: the timing is the call's, not a wait for rank 0
                ev[0].record()
                o = attend(shards[layer], q[:, mine], k[:, mine], v[:, mine], append=clean, mask=a.mask)
                ev[1].record()
                if whole:
                    ev[2].record()
                    ref = whole[layer].attention(q, k, v, mask=a.mask)
                    ev[3].record()
                    if clean:
                        whole[layer].append(k, v)
                o_all = kd.all_gather_tokens(o)
                torch.cuda.synchronize()
                cp_ms += ev[0].elapsed_time(ev[1])
                calls += 1
                if whole:
                    one_ms += ev[2].elapsed_time(ev[3])
                    scale = max(float(ref.float().abs().max()), 1e-6)
                    diff = max(diff, float((o_all.float() - ref.float()).abs().max()) / scale)
        t = torch.tensor([cp_ms / calls], device="cuda")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if rank == 0:
            worst = max(worst, diff)
            print("%5d %8d %14.3f %14s %12s" % (ci, ci * chunk, float(t), "%.3f" % (one_ms / calls) if whole else "-",
                                                "%.2e" % diff if whole else "-"), flush=True)
    for c in shards + whole:
        c.check_errors()
    ok = torch.tensor([1 if worst <= a.tol else 0], device="cuda")
    dist.broadcast(ok, 0)
    if rank == 0 and a.check:
        print("check against one GPU: max |diff| / max |o| %.3e (tolerance %.1e): %s"
              % (worst, a.tol, "ok" if int(ok) else "FAILED"), flush=True)
    dist.destroy_process_group()
    sys.exit(0 if int(ok) else 1)


if __name__ == "__main__":
    main()
