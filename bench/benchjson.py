"""Reading the benches' Google Benchmark JSON (bench_cpu, bench_gpu) and the
peers' JSON; shared by bench/report.py and bench/plot_bandwidth.py."""
import json

UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def load(path):
    with open(path) as f:
        return json.load(f)


def rows(data):
    """Benchmark rows as dicts: where (cpu/gpu), method, phase, dtype, N, V,
    seconds, and the counters; copy rows have phase None. Repetition
    aggregates (mean/median/stddev) are skipped, errors kept with 'error'."""
    out = []
    for b in data.get("benchmarks", []):
        if b.get("run_type") == "aggregate":
            continue
        name = b["name"]
        for suffix in ("/manual_time", "/real_time"):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        parts = name.split("/")
        r = {"name": name, "where": parts[0], "method": parts[1]}
        if parts[1] == "copy":
            r.update(phase=None, dtype=None, N=None, V=None)
        else:
            r.update(phase=parts[2], dtype=parts[3],
                     N=int(parts[4].split(":")[1]), V=int(parts[5].split(":")[1]))
        if b.get("error_occurred"):
            r["error"] = b.get("error_message", "error")
        else:
            r["seconds"] = b["real_time"] * UNIT[b.get("time_unit", "ns")]
        for k in ("bytes", "GBps", "frac_copy", "extra_MiB", "check_mismatches", "check_max_rel_err"):
            if k in b:
                r[k] = b[k]
        out.append(r)
    return out


def copy_gbps(rs):
    for r in rs:
        if r["method"] == "copy" and "GBps" in r:
            return r["GBps"]
    return None


def find(rs, method, phase, dtype, v):
    for r in rs:
        if (r["method"], r["phase"], r["dtype"], r["V"]) == (method, phase, dtype, v):
            return r
    return None
