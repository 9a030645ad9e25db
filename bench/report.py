#!/usr/bin/env python3
"""Markdown tables from the benches' JSON, as docs/benchmarks.md shows them,
plus the targets of the benchmark issue, met or missed and by how much.

    python3 bench/report.py bench_gpu.json [--peers bench_peers.json]
    python3 bench/report.py bench_cpu.json
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchjson  # noqa: E402


def ms(s):
    return f"{s * 1e3:.3f}" if s is not None else "-"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json")
    p.add_argument("--peers")
    p.add_argument("--only", default="rows,peers,targets", help="sections to print")
    a = p.parse_args()
    only = set(a.only.split(","))
    data = benchjson.load(a.json)
    ctx = data.get("context", {})
    rs = benchjson.rows(data)
    roof = benchjson.copy_gbps(rs)
    print(f"Device: {ctx.get('geopref.device', '?')}; commit {ctx.get('geopref.commit', '?')}; "
          f"date {ctx.get('date', '?')}; copy roof "
          f"{f'{roof:.0f} GB/s' if roof else 'not measured'}.\n")
    for r in rs if "rows" in only else []:
        if r is rs[0]:
            print("| row | time ms | GB moved | GB/s | of copy | extra MiB | note |")
            print("|---|---:|---:|---:|---:|---:|---|")
        frac = f"{100 * r['frac_copy']:.1f}%" if "frac_copy" in r else "-"
        extra = f"{r['extra_MiB']:.1f}" if "extra_MiB" in r else "-"
        gb = f"{r['bytes'] / 1e9:.3f}" if "bytes" in r else "-"
        gbps = f"{r['GBps']:.3g}" if "GBps" in r else "-"
        note = r.get("error", "")
        if r.get("check_mismatches", 0) > 0:
            note = f"check failed ({int(r['check_mismatches'])} mismatches) " + note
        print(f"| {r['name']} | {ms(r.get('seconds'))} | {gb} | {gbps} | {frac} | {extra} | {note} |")

    peers = []
    if a.peers and os.path.exists(a.peers):
        peers = benchjson.load(a.peers).get("rows", [])
    if peers and "peers" in only:
        print("\n| peer | dtype | V | fwd ms | step ms | step / geopref | peak MiB | extra MiB | note |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in peers:
            ratio = f"{r['step_vs_geopref']:.2f}x" if "step_vs_geopref" in r else "-"
            peak = f"{r['peak_MiB']:.0f}" if "peak_MiB" in r else "-"
            extra = f"{r['extra_MiB']:.0f}" if "extra_MiB" in r else "-"
            print(f"| {r['method']} | {r['dtype']} | {r['V']} | {ms(r.get('forward_s'))} | "
                  f"{ms(r.get('step_s'))} | {ratio} | {peak} | {extra} | {r.get('error', '')} |")

    if "targets" not in only:
        return 0
    # Targets (benchmark figures, not tests).
    print("\n| target | dtype | V | measured | met |")
    print("|---|---|---:|---:|---|")
    shapes = sorted({(r["dtype"], r["V"]) for r in rs if r["method"] == "fused"})
    for dt, v in shapes:
        for phase in ("forward", "backward"):
            r = benchjson.find(rs, "fused", phase, dt, v)
            if r and "frac_copy" in r and v >= 32000:
                f = r["frac_copy"]
                print(f"| fused {phase} >= 85% of copy | {dt} | {v} | {100 * f:.1f}% | "
                      f"{'yes' if f >= 0.85 else f'no, short by {100 * (0.85 - f):.1f} points'} |")
        fs = benchjson.find(rs, "fused", "step", dt, v)
        ns = benchjson.find(rs, "naive", "step", dt, v)
        if fs and ns and "seconds" in fs and "seconds" in ns:
            x = ns["seconds"] / fs["seconds"]
            print(f"| step >= 3x faster than naive | {dt} | {v} | {x:.2f}x | "
                  f"{'yes' if x >= 3 else f'no, {3 - x:.2f}x short'} |")
        for peer, want in (("eager", 3.0), ("compile", 1.5)):
            pr = next((p for p in peers if p["method"] == peer and p["dtype"] == dt and p["V"] == v), None)
            if pr and "step_vs_geopref" in pr:
                x = pr["step_vs_geopref"]
                print(f"| step >= {want}x faster than torch {peer} | {dt} | {v} | {x:.2f}x | "
                      f"{'yes' if x >= want else f'no, {want - x:.2f}x short'} |")
    # O(N), not O(N·V): the fused step's extra memory must not grow with V.
    for dt in sorted({d for d, _ in shapes}):
        ex = [(v, r["extra_MiB"]) for v in sorted({v for d, v in shapes if d == dt})
              for r in [benchjson.find(rs, "fused", "step", dt, v)] if r and "extra_MiB" in r]
        if len(ex) >= 1:
            lo, hi = min(e for _, e in ex), max(e for _, e in ex)
            n = next(r["N"] for r in rs if r["N"])
            grows = hi > 1.1 * lo + 1.0 / 16  # more than 10% + 64 KiB across V
            print(f"| extra memory O(N), not O(N·V) | {dt} | {', '.join(str(v) for v, _ in ex)} | "
                  f"{', '.join(f'{e:.2f}' for _, e in ex)} MiB ({hi * 2**20 / n:.0f} B per row) | "
                  f"{'no: grows with V' if grows else 'yes: flat in V'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
