#!/usr/bin/env python3
"""Independent check of kvq's fused attention with PyTorch.

Usage: torch_check.py DUMP_DIR   (DUMP_DIR written by the attention_dump executable)

For every case and batch entry it recomputes attention with
torch.nn.functional.scaled_dot_product_attention (float64, math backend) on the
dequantized keys/values that kvq saw, with the Jensen correction of the quantized keys
as an additive float attn_mask bias computed here from the stored steps:
    a_j = scale * q_j * step_j / 2,
    taylor2: sum_j a_j^2 / 6,  taylor4: sum_j (a_j^2 / 6 - a_j^4 / 180),
    exact:   sum_j log(sinh(a_j) / a_j),
and compares kvq's output and LSE. Prints max abs/rel errors and PASS/FAIL; exits 1 on
failure. Tolerance as the C++ tests: |o - ref| <= 1e-2 max|V| + 1e-2 |ref| (bf16 inputs).
"""
import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def correction(q, step, scale, mode):
    # q: [Hq, nq, D], step: [Hq, nquant, D] -> [Hq, nq, nquant]
    if mode == "none" or step.shape[1] == 0:
        return torch.zeros(q.shape[0], q.shape[1], step.shape[1], dtype=q.dtype, device=q.device)
    if mode in ("taylor2", "taylor4"):
        c = (scale * scale / 24.0) * torch.einsum("hid,htd->hit", q * q, step * step)
        if mode == "taylor4":
            c = c - (scale ** 4 / 2880.0) * torch.einsum("hid,htd->hit", q ** 4, step ** 4)
        return c
    # exact: elementwise, chunked over keys
    out = torch.empty(q.shape[0], q.shape[1], step.shape[1], dtype=q.dtype, device=q.device)
    for t0 in range(0, step.shape[1], 64):
        a = 0.5 * scale * q[:, :, None, :] * step[:, None, t0:t0 + 64, :]
        x = a.abs()
        small = x < 1e-3
        x_safe = torch.where(small, torch.ones_like(x), x)
        big = x_safe + torch.log1p(-torch.exp(-2 * x_safe)) - torch.log(2 * x_safe)
        ser = x * x / 6 - x ** 4 / 180
        out[:, :, t0:t0 + 64] = torch.where(small, ser, big).sum(-1)
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    d = sys.argv[1]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    man = json.load(open(f"{d}/manifest.json"))
    ok = True
    for case in man["cases"]:
        name, scale, causal, mode = case["name"], float(case["scale"]), case["causal"], case["mode"]
        worst_abs, worst_rel, worst_lse = 0.0, 0.0, 0.0
        case_ok = True
        for e in case["entries"]:
            b = e["b"]
            ld = lambda s: torch.from_numpy(np.load(f"{d}/{name}_b{b}_{s}.npy")).to(dev, torch.float64)
            q, k, v, step, o, lse = ld("q"), ld("k"), ld("v"), ld("step"), ld("o"), ld("lse")
            hq, hkv = q.shape[1], k.shape[0]
            r = hq // hkv
            qh = q.permute(1, 0, 2)                      # [Hq, nq, D]
            kh = k.repeat_interleave(r, dim=0)           # [Hq, nk, D]
            vh = v.repeat_interleave(r, dim=0)
            sh = step.repeat_interleave(r, dim=0)        # [Hq, nquant, D]
            nq, nk, nquant = qh.shape[1], kh.shape[1], sh.shape[1]
            bias = torch.zeros(hq, nq, nk, dtype=torch.float64, device=dev)
            bias[:, :, :nquant] = -correction(qh, sh, scale, mode)
            if causal:
                nc = e["chunk"]
                first_chunk = nk - nc
                i = torch.arange(nq, device=dev)[:, None]
                j = torch.arange(nc, device=dev)[None, :]
                bias[:, :, first_chunk:] = bias[:, :, first_chunk:].masked_fill(j > i + (nc - nq), float("-inf"))
            with sdpa_kernel([SDPBackend.MATH]):
                ref = F.scaled_dot_product_attention(qh[None], kh[None], vh[None], attn_mask=bias[None], scale=scale)[0]
            logits = scale * torch.einsum("hid,htd->hit", qh, kh) + bias
            ref_lse = torch.logsumexp(logits, dim=-1)     # [Hq, nq]
            ref = ref.permute(1, 0, 2)                   # [nq, Hq, D]
            no_key = torch.isinf(ref_lse).permute(1, 0)  # rows that see nothing: output 0
            ref = torch.where(no_key[:, :, None], torch.zeros_like(ref), ref)
            vmax = max(1.0, v.abs().max().item())
            err = (o - ref).abs()
            tol = 1e-2 * vmax + 1e-2 * ref.abs()
            lse_err = torch.where(torch.isinf(ref_lse), torch.zeros_like(ref_lse), (lse - ref_lse).abs())
            lse_inf_ok = bool(torch.equal(torch.isinf(ref_lse), torch.isinf(lse)))
            worst_abs = max(worst_abs, err.max().item())
            worst_rel = max(worst_rel, (err / (ref.abs() + 1e-3)).max().item())
            worst_lse = max(worst_lse, lse_err.max().item())
            if not (bool((err <= tol).all()) and lse_err.max().item() <= 2e-2 and lse_inf_ok and bool(torch.isfinite(o).all())):
                case_ok = False
        print(f"{name:28s} mode={mode:8s} max_abs_err={worst_abs:.3e} max_rel_err={worst_rel:.3e} "
              f"max_lse_err={worst_lse:.3e} {'PASS' if case_ok else 'FAIL'}")
        ok = ok and case_ok
    print("torch_check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
