#!/usr/bin/env python3
"""TRL 1.x's fused LM head against geopref's, on a GPU: time and peak memory
of the per-token head from hidden states, forward + backward, as TRL 1.16.0's
trainers run it (issue 22's GPU target: N = 16384, H = 4096, V in {32000,
128256}, bf16).

  geopref  geopref_torch.linear_token_logps(hidden, weight, labels, outputs=...)
           (the PyTorch package with its CUDA kernels: cuBLAS chunks of rows
           within chunk_bytes, the fused log-sum-exp and statistics passes,
           the backward in place per chunk)
  trl      trl.kernels.chunked_logprob.ChunkedLogProbFunction (TRL 1.16.0:
           cuBLAS tiles of 4096 tokens x a vocabulary chunk, folded by its
           Triton kernel), with the chunk size TRL's add_fused_lm_head passes
           (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE, 32768)

Both get the outputs a trainer asks for (--outputs: DPOTrainer's "dpo" =
log_probs, entropy, mean_logits, is_top1; GRPOTrainer's "grpo" = log_probs,
entropy) and the same upstream gradients on the log-probs and the entropy,
so the backward does the same work. Every row is scored (TRL's compact path
drops the -100 rows before its call; so does geopref's head).

Times are medians of CUDA-event times around a cold L2 (peer_bench.py);
"peak_MiB" is torch.cuda.max_memory_allocated during the step minus the
inputs and their gradients. "x trl" is trl's time over geopref's (> 1:
geopref faster). "max|dlogp|" is the largest difference of the two heads'
log-probs.

The GPU machine has no network: TRL comes from a wheel staged into .whl/
(scripts/gpu-check.sh --stage) and only its kernel file is loaded
(peer_bench.trl_chunked_logprob), with stand-ins for the two helpers it
imports: transformers' is_triton_available when transformers is absent, and
TRL's ZeRO-3 gather context, which its backward imports (a null context
without DeepSpeed; before this the backward failed on a relative import).
Without TRL the geopref rows run alone.
--json writes the rows after each one (a run cut short keeps them).
"""
import argparse
import json
import os
import sys
import time

from peer_bench import (add_common_args, cold_timer, median, parse, skipped,  # bench/peers/
                        token_head_fn, trl_chunked_logprob)

try:
    import torch
except ImportError:  # main() says so (peer_bench.skipped)
    torch = None

OUTPUTS = {"dpo": ("log_probs", "entropy", "mean_logits", "is_top1"),
           "grpo": ("log_probs", "entropy")}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--outputs", default="dpo", choices=sorted(OUTPUTS))
    p.add_argument("--methods", default="geopref,trl")
    p.add_argument("--trl-wheel-dir", default=".whl",
                   help="where a staged trl wheel is looked for when trl does not import")
    return parse(p)


def trl_head(wheel_dir):
    """TRL's ChunkedLogProbFunction: from the installed package, or from the
    kernel file of a staged wheel (peer_bench.trl_chunked_logprob); None if
    neither."""
    return trl_chunked_logprob(wheel_dir)[0]


def inputs(args, v):
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1)
    n, h = args.rows, args.hidden
    x = torch.randn(n, h, device="cuda", generator=gen, dtype=torch.bfloat16).requires_grad_(True)
    w = (torch.randn(v, h, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02
         ).requires_grad_(True)
    labels = torch.randint(0, v, (n,), device="cuda", generator=gen)
    g = torch.randn(n, device="cuda", generator=gen)          # upstream of the log-probs
    e = torch.randn(n, device="cuda", generator=gen) * 0.1    # and of the entropy
    return x, w, labels, g, e


def run(name, args, v, timer, trl_fn):
    x, w, labels, g, e = inputs(args, v)
    base = torch.cuda.memory_allocated() + x.numel() * 2 + w.numel() * 2  # + their gradients
    fn = token_head_fn(name, trl_fn, x, w, labels, OUTPUTS[args.outputs], args.chunk_bytes)

    def step():
        x.grad = w.grad = None
        lp, ent = fn()
        ((lp * g).sum() + (ent * e).sum()).backward()

    step()  # warm-up (Triton's compile, cuBLAS's handles)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = [timer(step) for _ in range(args.iters)]
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    with torch.no_grad():
        lp = fn()[0].float()
    return median(times), peak, lp


def fmt(row):
    return (f"{row['method']:<8} V={row['V']:<7} {row['seconds'] * 1e3:9.2f} ms  "
            f"peak {row['peak_MiB']:9.1f} MiB  {row.get('x_trl', ''):>8}  "
            f"{row.get('max_dlogp', '')}")


def main():
    args = parse_args()
    if skipped("trl_head_peers"):
        return 0
    methods = args.methods.split(",")
    trl_fn = trl_head(args.trl_wheel_dir) if "trl" in methods else None
    if "trl" in methods and trl_fn is None:
        print("trl_head_peers: TRL not importable and no staged trl wheel; its rows are skipped")
        methods.remove("trl")
    props = torch.cuda.get_device_properties(0)
    meta = {"device": props.name, "torch": torch.__version__, "iters": args.iters,
            "N": args.rows, "H": args.hidden, "outputs": args.outputs,
            "date": time.strftime("%Y-%m-%d")}
    print(f"trl_head_peers: {props.name}, torch {torch.__version__}, N={args.rows}, "
          f"H={args.hidden}, bf16, outputs {OUTPUTS[args.outputs]}, {args.iters} iterations "
          f"(median)", flush=True)
    timer = cold_timer()
    rows = []
    for v in (int(s) for s in args.vocab.split(",")):
        got = {}
        for name in methods:
            try:
                seconds, peak, lp = run(name, args, v, timer, trl_fn)
            except Exception as ex:  # noqa: BLE001 - a failing method is a row, not the end
                print(f"{name:<8} V={v:<7} failed: {type(ex).__name__}: {ex}", flush=True)
                continue
            got[name] = lp
            row = {"method": name, "V": v, "seconds": seconds, "peak_MiB": peak}
            if name == "trl" and "geopref" in got:
                geo = next(r for r in rows if r["method"] == "geopref" and r["V"] == v)
                row["x_trl"] = f"{seconds / geo['seconds']:.2f}x"
                row["max_dlogp"] = f"max|dlogp| {(lp - got['geopref']).abs().max().item():.2e}"
            rows.append(row)
            print(fmt(row), flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"context": meta, "rows": rows}, f, indent=1)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
