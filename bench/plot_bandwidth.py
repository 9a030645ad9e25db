#!/usr/bin/env python3
"""Achieved bandwidth against V, fused and naive, from bench_gpu's (or
bench_cpu's) Google Benchmark JSON. Needs matplotlib; run it wherever that is
installed (the JSON travels):

    python3 bench/plot_bandwidth.py bench_gpu.json -o docs/figures/bandwidth.png
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchjson  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json")
    p.add_argument("-o", "--output", default="bandwidth.png")
    a = p.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_bandwidth: matplotlib is not installed; no plot (the JSON is enough to make it later)")
        return 0
    data = benchjson.load(a.json)
    rs = [r for r in benchjson.rows(data) if "GBps" in r]
    roof = benchjson.copy_gbps(rs)
    dtypes = sorted({r["dtype"] for r in rs if r["dtype"]})
    if not dtypes:
        print("plot_bandwidth: no rows with bandwidth in", a.json)
        return 1
    ctx = data.get("context", {})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.2), squeeze=False, sharey=True)
    styles = {"fused": "-", "naive": "--", "reference": ":"}
    markers = {"forward": "o", "backward": "s", "step": "^"}
    for ax, dt in zip(axes[0], dtypes):
        for method in ("fused", "naive", "reference"):
            for phase in ("forward", "backward", "step"):
                pts = sorted((r["V"], r["GBps"]) for r in rs
                             if r["method"] == method and r["phase"] == phase and r["dtype"] == dt)
                if pts:
                    ax.plot([v for v, _ in pts], [g for _, g in pts], styles[method],
                            marker=markers[phase], label=f"{method} {phase}")
        if roof:
            ax.axhline(roof, color="k", lw=0.8)
            ax.axhline(0.85 * roof, color="k", lw=0.8, ls=":")
            tr = ax.get_yaxis_transform()  # x in axes fraction, y in data
            ax.text(0.01, roof, "copy (measured roof)", va="bottom", fontsize=8, transform=tr)
            ax.text(0.01, 0.85 * roof, "85% of copy", va="bottom", fontsize=8, transform=tr)
        ax.set_xscale("log")
        vs = sorted({r["V"] for r in rs if r["dtype"] == dt})
        ax.set_xticks(vs)
        ax.set_xticklabels([str(v) for v in vs])
        ax.minorticks_off()
        ax.set_ylim(bottom=0, top=1.12 * roof if roof else None)
        ax.set_xlabel("vocabulary V")
        ax.set_title(f"{dt}, N = {next(r['N'] for r in rs if r['N'])}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("achieved GB/s (bytes moved / time)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{ctx.get('geopref.device', '?')}  commit {ctx.get('geopref.commit', '?')[:10]}  "
                 f"{ctx.get('date', '')[:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.output, dpi=120)
    print("plot_bandwidth: wrote", a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
