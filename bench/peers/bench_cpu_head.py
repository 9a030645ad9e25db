#!/usr/bin/env python3
"""TRL 1.16.0's fused LM head against geopref's on the CPU, in one process:
the per-token head from hidden states (log softmax(hidden·weightᵀ)[label]
and the entropy), forward + backward, float32 and bfloat16 (issue 22's CPU
rows: N = 2048, H = 1024, V = 32000, and a small case).

  geopref  geopref_torch.linear_token_logps(hidden, weight, labels,
           outputs=("log_probs", "entropy")) — its CPU path (csrc/cpu_linear.h): float32
           tiles of the logits by ATen's GEMM (16-bit inputs widened to
           float32), an online fold per row, the backward per tile
  trl      trl.kernels.chunked_logprob.ChunkedLogProbFunction (TRL 1.16.0)
           with outputs ("entropy",): on CPU tensors its _use_triton is
           false (Triton only for cuda/xpu devices), so each tile is folded by
           its torch ops (_forward_tile / _backward_tile); the tile is
           computed in the input dtype (bf16 logits for bf16 inputs); the
           chunk size its add_fused_lm_head passes
           (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE, 32768)

Both get the same upstream gradients, on the log-probs and on the entropy.
Every row is scored. Times are medians of --repeats wall-clock steps after
--warmup untimed ones, the two methods alternating within each repeat (so
that a shared machine's changing load falls on both alike); "x" is trl's
time over geopref's (> 1: geopref faster); "max|dlogp|" is the largest
difference of the two heads' log-probs, "geo f64" and "trl f64" each head's
largest difference from the float64 log-probs.
The thread count is torch.set_num_threads(--threads); the load average is
printed before and after (a shared machine's other work shows there).
"""
import argparse
import json
import os
import sys
import time

from peer_bench import median  # bench/peers/

import torch

CASES = {"large": (2048, 1024, 32000), "small": (256, 256, 4096)}
TRL_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16.0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="small,large", help=f"of {sorted(CASES)}")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="geopref,trl")
    p.add_argument("--json", help="write the rows here (after each one)")
    return p.parse_args()


def trl_head():
    from trl.kernels import chunked_logprob
    assert not chunked_logprob._use_triton(torch.device("cpu"))  # the torch fold
    try:
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as chunk
    except ImportError:
        chunk = TRL_CHUNK
    return chunked_logprob.ChunkedLogProbFunction, chunk


def inputs(case, dtype):
    n, h, v = CASES[case]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, h, generator=gen).to(dtype)
    w = (torch.randn(v, h, generator=gen) * h ** -0.5 * 2).to(dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    g = torch.randn(n, generator=gen)         # upstream of the log-probs
    e = torch.randn(n, generator=gen) * 0.1   # and of the entropy
    return x, w, labels, g, e


def head_fn(name, trl, x, w, labels):
    """fn(x, w) -> (log_probs, entropy)."""
    if name == "geopref":
        import geopref_torch as gp

        def fn(x, w):
            r = gp.linear_token_logps(x, w, labels, outputs=("log_probs", "entropy"))
            return r.log_probs, r.entropy
        return fn
    cls, chunk = trl

    def fn(x, w):
        r = cls.apply(x, w, None, labels, 1.0, chunk, None, 1.0, ("entropy",))
        return r[0], r[1]
    return fn


def make_step(name, trl, case, dtype):
    """(step, logps): one timed forward + backward, and the log-probs of one
    forward without grad (for the agreement columns)."""
    x0, w0, labels, g, e = inputs(case, dtype)
    fn = head_fn(name, trl, x0, w0, labels)
    x = x0.clone().requires_grad_(True)
    w = w0.clone().requires_grad_(True)

    def step():
        x.grad = w.grad = None
        lp, ent = fn(x, w)
        ((lp.float() * g).sum() + (ent.float() * e).sum()).backward()

    def logps():
        with torch.no_grad():
            return fn(x0, w0)[0].double()
    return step, logps


def timed(methods, steps, repeats, warmup):
    """Median seconds per method; the methods alternate within each repeat
    (a shared machine's load then falls on both alike)."""
    for _ in range(warmup):
        for name in methods:
            steps[name]()
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name in methods:
            t = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t)
    return {name: median(ts) for name, ts in times.items()}


def float64_logps(case, dtype):
    x, w, labels, _, _ = inputs(case, dtype)
    return torch.log_softmax(x.double() @ w.double().t(), -1).gather(
        -1, labels[:, None]).squeeze(-1)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    trl = trl_head() if "trl" in methods else None
    load = os.getloadavg()
    print(f"bench_cpu_head: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"upstreams on the log-probs and the entropy; "
          f"median of {args.repeats} after {args.warmup} warm-up step(s)", flush=True)
    print(f"{'case':<28} {'dtype':<9} {'geopref s':>10} {'trl s':>10} {'x (trl/geo)':>12} "
          f"{'max|dlogp|':>11} {'geo f64':>9} {'trl f64':>9}", flush=True)
    rows = []
    for case in args.cases.split(","):
        for dname in args.dtypes.split(","):
            dtype = getattr(torch, dname)
            ref = float64_logps(case, dtype)
            row = {"case": case, "N_H_V": CASES[case], "dtype": dname}
            made = {name: make_step(name, trl, case, dtype) for name in methods}
            secs = timed(methods, {k: v[0] for k, v in made.items()}, args.repeats, args.warmup)
            lps = {}
            for name in methods:
                lps[name] = made[name][1]()
                row[f"{name}_s"] = secs[name]
                row[f"{name}_f64_err"] = (lps[name] - ref).abs().max().item()
            if len(lps) == 2:
                row["ratio"] = row["trl_s"] / row["geopref_s"]
                row["max_dlogp"] = (lps["geopref"] - lps["trl"]).abs().max().item()
            rows.append(row)
            n, h, v = CASES[case]
            print(f"{case} N={n} H={h} V={v}".ljust(28) + f" {dname:<9} "
                  f"{row.get('geopref_s', float('nan')):10.2f} "
                  f"{row.get('trl_s', float('nan')):10.2f} "
                  f"{row.get('ratio', float('nan')):11.2f}x "
                  f"{row.get('max_dlogp', float('nan')):11.2e} "
                  f"{row.get('geopref_f64_err', float('nan')):9.1e} "
                  f"{row.get('trl_f64_err', float('nan')):9.1e}", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"threads": args.threads, "load_before": load, "rows": rows}, f,
                              indent=1)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
