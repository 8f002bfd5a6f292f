#!/usr/bin/env python3
"""Plots of the fidelity study (tools/fidelity_study.cpp) for docs/fidelity.md.

    python3 tools/plot_fidelity.py [DIR]    # DIR holds fidelity.csv and value_configs.csv (default docs/fidelity)

Writes into DIR:
  mass_bias_vs_bytes.png     current-chunk mass bias (quantized - full precision) against key bytes
                             per token, one panel per outlier profile, query std 1.5;
  output_error_vs_bytes.png  output error against K+V bytes per token with Taylor2, one panel per
                             profile, query std 1.5, every value configuration;
  bias_removed_vs_query_std.png  share of the mass bias Taylor2 removes against the query std, for
                             the INT2 key configurations at G128 (PerChannel G32), per profile;
and tables.md, the Markdown tables of the numbers docs/fidelity.md quotes.
"""
import contextlib
import csv
import io
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROFILES = ["mild", "strong", "extreme", "spread"]
MODES = ["none", "taylor2", "taylor4", "exact"]
MODE_COLORS = {"none": "tab:gray", "taylor2": "tab:blue", "taylor4": "tab:green", "exact": "tab:red"}


def load(d):
    with open(os.path.join(d, "fidelity.csv")) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("query_std", "k_bytes_per_token", "mass_fp", "mass_bias", "mass_mae"):
            r[k] = float(r[k])
        for k in ("bias_removed", "mass_bias_seed_sd", "noise_mean", "noise_var_ratio", "noise_score_corr"):
            r[k] = float(r[k]) if r[k] else float("nan")
        for k in list(r):
            if k.startswith("out_err_"):
                r[k] = float(r[k])
        for k in ("k_bits", "k_group", "k_centered"):
            r[k] = int(r[k])
    with open(os.path.join(d, "value_configs.csv")) as f:
        values = list(csv.DictReader(f))
    for v in values:
        v["v_bytes_per_token"] = float(v["v_bytes_per_token"])
    return rows, values


def family(r):
    """A short name of the key configuration's family (everything but bits and group)."""
    if r["k_bits"] == 16:
        return "fp16 keys"
    if r["k_granularity"] == "per_channel":
        return "PerChannel"
    name = "PerToken"
    if r["k_rotation"] == "hadamard":
        name += " rotated"
    if r["k_centered"]:
        name += " centred"
    return name


FAMILY_MARKERS = {
    "PerToken": "o",
    "PerToken rotated": "D",
    "PerChannel": "s",
    "PerToken centred": "v",
    "PerToken rotated centred": "^",
    "fp16 keys": "*",
}


def key_label(r):
    if r["k_bits"] == 16:
        return "fp16"
    g = "PC" if r["k_granularity"] == "per_channel" else "PT"
    extra = (" rot" if r["k_rotation"] == "hadamard" else "") + (" ctr" if r["k_centered"] else "")
    return f"INT{r['k_bits']} {g} G{r['k_group']}{extra}"


def plot_mass(rows, d):
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True)
    for ax, prof in zip(axes.flat, PROFILES):
        sel = [r for r in rows if r["profile"] == prof and r["query_std"] == 1.5 and r["k_bits"] != 16]
        for r in sel:
            jitter = {"none": -1.5, "taylor2": -0.5, "taylor4": 0.5, "exact": 1.5}[r["correction"]]
            ax.scatter(r["k_bytes_per_token"] + jitter, r["mass_bias"], color=MODE_COLORS[r["correction"]],
                       marker=FAMILY_MARKERS[family(r)], s=28, alpha=0.85, edgecolors="none")
        ax.axhline(0.0, color="black", lw=0.8)
        fp = [r for r in rows if r["profile"] == prof and r["query_std"] == 1.5 and r["k_bits"] == 16][0]
        ax.set_title(f"{prof} outliers (chunk mass at full precision {fp['mass_fp']:.3f})", fontsize=10)
        ax.set_ylabel("chunk mass bias (quantized - full precision)")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("key bytes per token (codes + metadata; values not counted)")
    handles = [plt.Line2D([], [], color=MODE_COLORS[m], marker="o", ls="", label=f"correction {m}") for m in MODES]
    handles += [plt.Line2D([], [], color="black", marker=mk, ls="", label=fam) for fam, mk in FAMILY_MARKERS.items()
                if fam != "fp16 keys"]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.suptitle("Current-chunk softmax mass bias vs key bytes per token (D 128, query std 1.5; 2-bit left, 4-bit right)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(os.path.join(d, "mass_bias_vs_bytes.png"), dpi=72)
    plt.close(fig)


def plot_output(rows, values, d):
    vcolors = {"fp": "black", "v2_g128": "tab:orange", "v4_g128": "tab:blue", "v2_g32": "tab:purple",
               "v2_g128_rot": "tab:green"}
    hollow = {"v2_g128_rot"}  # drawn hollow and shifted right: it lies on v2_g128
    vbytes = {v["name"]: v["v_bytes_per_token"] for v in values}
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True)
    for ax, prof in zip(axes.flat, PROFILES):
        sel = [r for r in rows if r["profile"] == prof and r["query_std"] == 1.5 and r["correction"] in ("taylor2",)
               or (r["profile"] == prof and r["query_std"] == 1.5 and r["k_bits"] == 16)]
        for r in sel:
            for v in values:
                name = v["name"]
                if r["k_bits"] == 16 and name == "fp":
                    continue
                x = (r["k_bytes_per_token"] + vbytes[name]) * (1.03 if name in hollow else 1.0)
                if name in hollow:
                    ax.scatter(x, r["out_err_" + name], facecolors="none", edgecolors=vcolors[name],
                               marker=FAMILY_MARKERS[family(r)], s=30, linewidths=1.0)
                else:
                    ax.scatter(x, r["out_err_" + name], color=vcolors[name], marker=FAMILY_MARKERS[family(r)], s=26,
                               alpha=0.85, edgecolors="none")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_title(f"{prof} outliers", fontsize=10)
        ax.set_ylabel("output relative error vs full precision")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[1]:
        ax.set_xlabel("K + V bytes per token (log)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=f"values {n}",
                          markerfacecolor="none" if n in hollow else c) for n, c in vcolors.items()]
    handles += [plt.Line2D([], [], color="gray", marker=mk, ls="", markerfacecolor="none", label=f"keys {fam}")
                for fam, mk in FAMILY_MARKERS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8.5, frameon=False)
    fig.suptitle("Output error vs K+V bytes per token, keys corrected with Taylor2 (fp16 keys uncorrected; D 128, "
                 "query std 1.5)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(os.path.join(d, "output_error_vs_bytes.png"), dpi=72)
    plt.close(fig)


def plot_query_std(rows, d):
    picks = [("PerToken", 128, "tab:orange"), ("PerToken rotated", 128, "tab:green"), ("PerChannel", 32, "tab:blue"),
             ("PerToken rotated centred", 128, "tab:red"), ("PerToken rotated", 32, "tab:olive")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 4.2), sharey=True)
    for ax, prof in zip(axes, PROFILES):
        for fam, g, color in picks:
            sel = sorted([r for r in rows if r["profile"] == prof and r["k_bits"] == 2 and r["correction"] == "taylor2"
                          and family(r) == fam and r["k_group"] == g], key=lambda r: r["query_std"])
            ax.plot([r["query_std"] for r in sel], [100 * r["bias_removed"] for r in sel], marker=FAMILY_MARKERS[fam],
                    color=color, label=f"INT2 {fam} G{g}")
        ax.axhline(100, color="black", lw=0.8)
        ax.axhline(90, color="black", lw=0.5, ls=":")
        ax.set_title(f"{prof} outliers", fontsize=10)
        ax.set_xlabel("query std")
        ax.set_ylim(-230, 125)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of the mass bias removed by Taylor2")
    axes[0].legend(fontsize=7.5, loc="lower left")
    fig.suptitle("Share of the current-chunk mass bias that Taylor2 removes, INT2 keys: 1 - |bias T2| / |bias none| "
                 "(below 0: overshoots by more than the bias)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(os.path.join(d, "bias_removed_vs_query_std.png"), dpi=72)
    plt.close(fig)


def tables(rows, values):
    vbytes = {v["name"]: v["v_bytes_per_token"] for v in values}
    for qs in (1.5,):
        for prof in PROFILES:
            print(f"\n### {prof}, query std {qs}\n")
            print("| keys | K B/tok | bias none | bias T2 | T2 removed | T4 removed | exact removed | err v2 none | err v2 T2 "
                  "| err v4 none | err v4 T2 | err fp-V T2 | err v2g32 T2 | err v2rot T2 |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            keys = {}
            for r in rows:
                if r["profile"] == prof and r["query_std"] == qs:
                    keys.setdefault(key_label(r), {})[r["correction"]] = r
            for label, by in keys.items():
                n = by["none"]
                if "taylor2" not in by:
                    print(f"| {label} | {n['k_bytes_per_token']:.0f} | | | | | | {n['out_err_v2_g128']:.3f} | "
                          f"| {n['out_err_v4_g128']:.3f} | | | | |")
                    continue
                t2, t4, ex = by["taylor2"], by["taylor4"], by["exact"]
                print(f"| {label} | {n['k_bytes_per_token']:.0f} | {n['mass_bias']:+.4f} | {t2['mass_bias']:+.4f} | "
                      f"{100 * t2['bias_removed']:.0f}% | {100 * t4['bias_removed']:.0f}% | {100 * ex['bias_removed']:.0f}% | "
                      f"{n['out_err_v2_g128']:.3f} | {t2['out_err_v2_g128']:.3f} | {n['out_err_v4_g128']:.3f} | "
                      f"{t2['out_err_v4_g128']:.3f} | {t2['out_err_fp']:.3f} | {t2['out_err_v2_g32']:.3f} | "
                      f"{t2['out_err_v2_g128_rot']:.3f} |")
    print("\nvalue bytes per token:", ", ".join(f"{k} {v:.0f}" for k, v in vbytes.items()))
    print("\n### noise diagnostics (query std 1.5): mean (nats), E[n^2] / model variance, corr(n, s); "
          "Taylor2 bias and its seed sd\n")
    print("| profile | keys | noise mean | var ratio | corr(n, s) | bias none | bias T2 | sd(T2 bias) over seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for prof in PROFILES:
        for r in rows:
            if r["profile"] == prof and r["query_std"] == 1.5 and r["correction"] == "taylor2":
                n = [x for x in rows if x["profile"] == prof and x["query_std"] == 1.5 and x["correction"] == "none"
                     and key_label(x) == key_label(r)][0]
                print(f"| {prof} | {key_label(r)} | {r['noise_mean']:+.3f} | {r['noise_var_ratio']:.2f} | "
                      f"{r['noise_score_corr']:+.3f} | {n['mass_bias']:+.4f} | {r['mass_bias']:+.4f} | {r['mass_bias_seed_sd']:.4f} |")
    print("\n### Taylor2 share removed by query std (INT2 keys)\n")
    print("| profile | keys | q std 1.0 | 1.5 | 2.0 | mass_fp at 1.0 / 1.5 / 2.0 |")
    print("|---|---|---|---|---|---|")
    for prof in PROFILES:
        labels = []
        for r in rows:
            if r["profile"] == prof and r["k_bits"] == 2 and r["correction"] == "taylor2" and key_label(r) not in labels:
                labels.append(key_label(r))
        for lab in labels:
            sel = sorted([r for r in rows if r["profile"] == prof and r["correction"] == "taylor2" and key_label(r) == lab],
                         key=lambda r: r["query_std"])
            print(f"| {prof} | {lab} | " + " | ".join(f"{100 * r['bias_removed']:.0f}%" for r in sel) + " | "
                  + " / ".join(f"{r['mass_fp']:.3f}" for r in sel) + " |")




def compare_int2_int4(rows, values):
    """INT2 keys with Taylor2 against INT4 keys without correction (query std 1.5): |mass bias| and
    output error, at the bytes per token of K + V."""
    vbytes = {v["name"]: v["v_bytes_per_token"] for v in values}
    out = []
    for prof in PROFILES:
        sel = [r for r in rows if r["profile"] == prof and r["query_std"] == 1.5]
        int4 = [r for r in sel if r["k_bits"] == 4 and r["correction"] == "none" and not r["k_centered"]]
        int2 = [r for r in sel if r["k_bits"] == 2 and r["correction"] == "taylor2"]
        print(f"\n### {prof}: INT4 keys uncorrected (INT4 G128 values) vs INT2 keys + Taylor2, query std 1.5\n")
        print("| keys | values | K+V B/tok | abs(mass bias) | output error |")
        print("|---|---|---|---|---|")
        for r in sorted(int4, key=lambda r: abs(r["mass_bias"])):
            print(f"| {key_label(r)} none | v4_g128 | {r['k_bytes_per_token'] + vbytes['v4_g128']:.0f} | "
                  f"{abs(r['mass_bias']):.4f} | {r['out_err_v4_g128']:.3f} |")
        best_bias = min(abs(r["mass_bias"]) for r in int4)
        best_err = min(r["out_err_v4_g128"] for r in int4)
        ref = [r for r in int4 if r["k_granularity"] == "per_token" and r["k_group"] == 128 and r["k_rotation"] == "none"][0]
        for r in sorted(int2, key=lambda r: abs(r["mass_bias"])):
            for v in ("v2_g128", "v2_g32", "v4_g128"):
                tag = []
                if abs(r["mass_bias"]) <= abs(ref["mass_bias"]) and r["out_err_" + v] <= ref["out_err_v4_g128"]:
                    tag.append("beats INT4 PT G128 in both")
                if abs(r["mass_bias"]) <= best_bias:
                    tag.append("bias <= best INT4")
                if r["out_err_" + v] <= best_err:
                    tag.append("error <= best INT4")
                if tag:
                    print(f"| {key_label(r)} T2 | {v} | {r['k_bytes_per_token'] + vbytes[v]:.0f} | {abs(r['mass_bias']):.4f} | "
                          f"{r['out_err_' + v]:.3f} ({', '.join(tag)}) |")
                    out.append((prof, key_label(r), v))
    return out



def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs", "fidelity")
    rows, values = load(d)
    plot_mass(rows, d)
    plot_output(rows, values, d)
    plot_query_std(rows, d)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print("# Fidelity study tables\n\nGenerated by tools/plot_fidelity.py from fidelity.csv (means over 3 seeds; "
              "T2 = Taylor2, T4 = Taylor4; `err v2` = output error with INT2 G128 values, `fp-V` full-precision values).")
        tables(rows, values)
        print("\n## INT2 keys with Taylor2 against INT4 keys without correction")
        print("\nEvery INT4 key configuration (no correction, INT4 G128 values), then the INT2 key configurations "
              "(Taylor2) with a value configuration that beats INT4 PT G128 in both metrics, or the best INT4 "
              "configuration in one.")
        compare_int2_int4(rows, values)
    with open(os.path.join(d, "tables.md"), "w") as f:
        f.write(text.getvalue())
    print(text.getvalue())
    print(f"wrote plots and tables.md to {d}")


if __name__ == "__main__":
    main()
