#!/usr/bin/env python3
"""The same work as bench_gpu in PyTorch, for comparison (docs/benchmarks.md).

Runs on the GPU machine (it has PyTorch). For each shape N x V and dtype it
times, with CUDA events around a cold L2 (the method bench_gpu uses):

  eager            TRL's classic get_batch_logps: logits.log_softmax(-1), gather,
                   masked sum, then the geometric DPO loss; autograd backward
  eager_selective  TRL's current selective_log_softmax (gather − logsumexp for
                   fp32, a log-softmax per sequence for bf16), same loss
  compile          `eager` under torch.compile (default mode)
  liger            Liger-Kernel's LigerFusedLinearDPOLoss, only when the package
                   imports. It fuses the lm_head matmul into the loss, so it takes
                   hidden states (H = 4096) and a weight, not logits: its row
                   includes three N x H x V matmuls and is not like-for-like; the
                   row `matmuls` times those matmuls alone for scale.

Per-token rows (issue 16), the work of geopref's token_logps / token_logps_grad
(bench_gpu's gpu/token rows), with a per-token upstream gradient w_t as a
framework's own loss (GRPO's) would give it:

  token_eager      TRL's selective_log_softmax (gather - logsumexp for fp32, a
                   log-softmax per sequence for bf16), then sum_t w_t logp_t
  token_compile    log_softmax + gather (the plain form) under torch.compile
  token_geopref    geopref_torch.token_logps, when the package imports

"forward" is the loss with autograd recording, "step" is forward + backward.
Peak memory is torch.cuda.max_memory_allocated during the step; "extra" is that
minus the inputs and the gradient, comparable to geopref's extra_MiB.
With --geopref-json (bench_gpu's Google Benchmark JSON) every time gets a ratio
peer/geopref against the fused row of the same phase, dtype and shape.

The inputs follow common/synthetic.hpp's distribution (uniform [-4, 4) logits,
+6 on the label, last row of each sequence ignored) from torch's generator,
not its hash, so the values differ while the shapes and the work are the same.

Prints one table; --json writes the rows (rewritten after every row, so a run
cut short by a time limit keeps what it measured).
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import benchjson  # noqa: E402  (bench/benchjson.py)
from peer_bench import (cold_timer, forward_and_step_times, liger_dpo_loss,  # noqa: E402
                        median, skipped)  # bench/peers/

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # main() says so (peer_bench.skipped); the module still imports
    torch = F = None

BETA = 0.1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--vocab", default="32000,128256,256000")
    p.add_argument("--dtype", default="bf16,fp32")
    p.add_argument("--methods", default="eager,eager_selective,compile,liger")
    p.add_argument("--token", action="store_true",
                   help="the per-token rows instead (token_eager,token_compile,token_geopref)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="5 iterations instead of 10")
    p.add_argument("--geopref-json", help="bench_gpu --benchmark_out JSON for the ratio column")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size for the liger rows")
    a = p.parse_args()
    if a.quick:
        a.iters = 5
    if a.token and a.methods == p.get_default("methods"):
        a.methods = ",".join(TOKEN_METHODS)
    return a


TOKEN_METHODS = ("token_eager", "token_compile", "token_geopref")


def make_inputs(n_rows, seq_len, vocab, dtype, gen):
    """logits [S, T, V] (TRL's padded layout), labels [S, T], soft [P], ref [S]."""
    s = n_rows // seq_len
    labels = torch.randint(0, vocab, (s, seq_len), device="cuda", generator=gen)
    labels[:, -1] = -100  # shifted labels: the last position has no next token
    logits = torch.empty((s, seq_len, vocab), device="cuda", dtype=dtype)
    logits.uniform_(-4.0, 4.0, generator=gen)
    rows = labels.clamp(min=0).unsqueeze(-1)
    logits.scatter_add_(-1, rows, torch.full_like(rows, 6.0, dtype=dtype))
    soft = torch.rand(s // 2, device="cuda", generator=gen)
    ref = (4.08 - math.log(vocab)) * (seq_len - 1) + 4.0 * torch.rand(s, device="cuda", generator=gen) - 2.0
    return logits, labels, soft, ref


def gdpo_loss(logps, ref, soft):
    p = soft.shape[0]
    h = (logps[:p] - ref[:p]) - (logps[p:] - ref[p:])
    return -F.logsigmoid(BETA * (2.0 * soft - 1.0) * h).mean()


def loss_classic(logits, labels, ref, soft):
    """TRL's get_batch_logps (<= 0.12) followed by the gdpo loss."""
    loss_mask = labels != -100
    index = labels.masked_fill(~loss_mask, 0)
    per_token = torch.gather(logits.log_softmax(-1), dim=2, index=index.unsqueeze(2)).squeeze(2)
    logps = (per_token * loss_mask).sum(-1)
    return gdpo_loss(logps.float(), ref, soft)


def loss_selective(logits, labels, ref, soft):
    """TRL's selective_log_softmax (>= 0.14) followed by the gdpo loss."""
    loss_mask = labels != -100
    index = labels.masked_fill(~loss_mask, 0)
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(lg, dim=-1) for lg in logits])
        per_token = selected - lse
    else:
        rows = []
        for lg, ix in zip(logits, index):
            lp = F.log_softmax(lg, dim=-1)
            rows.append(lp.gather(dim=-1, index=ix.unsqueeze(-1)).squeeze(-1))
        per_token = torch.stack(rows)
    logps = (per_token * loss_mask).sum(-1)
    return gdpo_loss(logps.float(), ref, soft)


def selective_log_softmax(logits, index):
    """Per-token log-probs the way TRL computes them (>= 0.14): for fp32 the
    label logit minus a logsumexp taken one sequence at a time; for 16-bit
    logits a log_softmax per sequence (to bound the fp32 copy), then gather."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        return picked - torch.stack([torch.logsumexp(seq, dim=-1) for seq in logits])
    out = []
    for seq, ix in zip(logits, index):
        out.append(F.log_softmax(seq, dim=-1).gather(dim=-1, index=ix.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out)


def _token_weights(labels):
    """A fixed per-token upstream gradient (GRPO-like advantages), 0 on ignored rows."""
    w = torch.linspace(-1.0, 1.0, labels.numel(), device=labels.device).reshape(labels.shape)
    return torch.where(labels != -100, w, torch.zeros_like(w))


def token_loss_selective(logits, labels, ref, soft):
    index = labels.masked_fill(labels == -100, 0)
    return (selective_log_softmax(logits, index).float() * _token_weights(labels)).sum()


def token_loss_plain(logits, labels, ref, soft):
    index = labels.masked_fill(labels == -100, 0)
    logp = logits.log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return (logp.float() * _token_weights(labels)).sum()


def token_loss_geopref(logits, labels, ref, soft):
    import geopref_torch
    return (geopref_torch.token_logps(logits, labels, check=False) * _token_weights(labels)).sum()


def load_geopref(path):
    """{(phase, dtype, V): seconds} and {(phase, dtype, V): extra MiB} of the fused rows."""
    times, extra = {}, {}
    if not path:
        return times, extra
    rows = benchjson.rows(benchjson.load(path))
    for r in rows:
        if r["method"] == "fused" and "seconds" in r:
            times[(r["phase"], r["dtype"], r["V"])] = r["seconds"]
            extra[(r["phase"], r["dtype"], r["V"])] = r.get("extra_MiB")
    # The per-token rows: forward = token_logps, step = token_logps + token_logps_grad.
    for r in rows:
        if r["method"] == "token" and r["phase"] == "forward" and "seconds" in r:
            key = (r["dtype"], r["V"])
            times[("token_forward",) + key] = r["seconds"]
            b = benchjson.find(rows, "token", "backward", r["dtype"], r["V"])
            if b is not None and "seconds" in b:
                times[("token_step",) + key] = r["seconds"] + b["seconds"]
                extra[("token_step",) + key] = b.get("extra_MiB")
    return times, extra


def main():
    args = parse_args()
    if skipped("torch_peers"):
        return 0
    geo_times, geo_extra = load_geopref(args.geopref_json)
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    methods = args.methods.split(",")
    unknown = set(methods) - {"eager", "eager_selective", "compile", "liger"} - set(TOKEN_METHODS)
    if unknown:
        print(f"torch_peers: unknown methods {sorted(unknown)}")
        return 2
    liger = None
    if "liger" in methods:
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss as liger
        except Exception as e:  # noqa: BLE001 - any import failure means: not available
            print(f"torch_peers: Liger-Kernel not available ({type(e).__name__}: {e}); its rows are skipped")
    timer = cold_timer()
    gen = torch.Generator(device="cuda")
    rows = []
    props = torch.cuda.get_device_properties(0)
    meta = {"device": props.name, "torch": torch.__version__, "iters": args.iters,
            "date": time.strftime("%Y-%m-%d")}

    def emit(row):
        rows.append(row)
        print(fmt_row(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"context": meta, "rows": rows}, f, indent=1)

    print(f"torch_peers: {props.name}, torch {torch.__version__}, N={args.rows}, "
          f"{args.iters} iterations (median)", flush=True)
    print(header(), flush=True)
    compiled = torch.compile(loss_classic) if "compile" in methods else None
    shapes = [(d, int(v)) for d in args.dtype.split(",") for v in args.vocab.split(",")]
    # One pass per method over every shape, cheapest and most important first
    # (eager, then compile), Liger last (slow to compile, not like-for-like):
    # a time limit then cuts the least important rows.
    fns = {"eager": loss_classic, "compile": compiled, "eager_selective": loss_selective,
           "token_eager": token_loss_selective, "token_geopref": token_loss_geopref,
           "token_compile": torch.compile(token_loss_plain) if "token_compile" in methods else None}
    if "token_geopref" in methods:
        try:
            import geopref_torch  # noqa: F401
        except Exception as e:  # noqa: BLE001 - any import failure means: not available
            print(f"torch_peers: geopref_torch not available ({type(e).__name__}: {e}); its rows "
                  "are skipped")
            methods = [m for m in methods if m != "token_geopref"]
    order = ("eager", "compile", "eager_selective") + TOKEN_METHODS
    for m in [m for m in order if m in methods]:
        for dname, v in shapes:
            gen.manual_seed(20241110)
            torch.cuda.empty_cache()
            try:
                logits, labels, soft, ref = make_inputs(args.rows, args.seq_len, v, dtypes[dname], gen)
            except torch.cuda.OutOfMemoryError:
                emit(dict(method=m, dtype=dname, V=v, error="out of memory for the inputs"))
                continue
            emit(with_ratio(run_method(m, fns[m], logits, labels, ref, soft, dname, v, args.iters, timer),
                            geo_times, geo_extra))
            del logits, labels, soft, ref
    if liger is not None:
        for dname, v in shapes:
            torch.cuda.empty_cache()
            for row in run_liger(liger, args, dname, dtypes[dname], v, timer):
                emit(with_ratio(row, geo_times, geo_extra))
    return 0


def run_method(name, fn, logits, labels, ref, soft, dname, v, iters, timer):
    x = logits.detach().requires_grad_(True)
    row = dict(method=name, dtype=dname, V=v)
    try:
        t0 = time.time()
        for _ in range(2):  # warm-up (and compilation for `compile`)
            x.grad = None
            fn(x, labels, ref, soft).backward()
        torch.cuda.synchronize()
        row["warmup_s"] = time.time() - t0
        fwd = [timer(lambda: fn(x, labels, ref, soft)) for _ in range(iters)]
        x.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()

        def step():
            x.grad = None
            fn(x, labels, ref, soft).backward()

        steps = [timer(step) for _ in range(iters)]
        # Peak during a step, minus what lived before it, with the gradient
        # (which the step allocates) counted as part of the inputs.
        peak = torch.cuda.max_memory_allocated()
        grad_bytes = x.grad.numel() * x.grad.element_size()
        row.update(forward_s=median(fwd), step_s=median(steps), peak_MiB=peak / 2**20,
                   extra_MiB=max(peak - before - grad_bytes, 0) / 2**20)
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
        row["error"] = f"{type(e).__name__}: {e}"[:200]
    x.grad = None
    torch.cuda.empty_cache()
    return row


def run_liger(liger, args, dname, dtype, v, timer):
    """Liger's fused-linear DPO loss (reference-free) and, for scale, the
    lm_head matmuls it contains (forward X·Wᵀ, backward dX and dW)."""
    n, h = args.rows, args.hidden
    s = n // args.seq_len
    out = []
    try:
        gen = torch.Generator(device="cuda")
        gen.manual_seed(1)
        xh = (torch.randn(s, args.seq_len, h, device="cuda", generator=gen, dtype=dtype) * 0.02).requires_grad_(True)
        w = (torch.randn(v, h, device="cuda", generator=gen, dtype=dtype) * 0.02).requires_grad_(True)
        target = torch.randint(0, v, (s, args.seq_len), device="cuda", generator=gen)
        target[:, -1] = -100
        loss_fn = liger_dpo_loss(liger, BETA)

        # Liger's forward computes the gradients too: timed with them.
        fwd, steps = forward_and_step_times(lambda: loss_fn(w, xh, target), (xh, w), timer,
                                            args.iters, forward_grad=True)
        out.append(dict(method=f"liger(+lm_head,H={h})", dtype=dname, V=v, forward_s=median(fwd),
                        step_s=median(steps), peak_MiB=torch.cuda.max_memory_allocated() / 2**20))
        xd, wd = xh.detach(), w.detach()
        g = torch.empty(s, args.seq_len, v, device="cuda", dtype=dtype)

        def logits_mm():
            torch.matmul(xd, wd.t(), out=g)  # logits = X·Wᵀ

        def matmuls():
            logits_mm()
            torch.matmul(g, wd)  # dX = G·W
            torch.matmul(g.reshape(n, v).t(), xd.reshape(n, h))  # dW = Gᵀ·X

        with torch.no_grad():
            mf = [timer(logits_mm) for _ in range(args.iters)]
            mm = [timer(matmuls) for _ in range(args.iters)]
        out.append(dict(method=f"matmuls(H={h})", dtype=dname, V=v, forward_s=median(mf), step_s=median(mm)))
    except torch.cuda.OutOfMemoryError:
        out.append(dict(method="liger", dtype=dname, V=v, error="out of memory"))
    except Exception as e:  # noqa: BLE001
        out.append(dict(method="liger", dtype=dname, V=v, error=f"{type(e).__name__}: {e}"[:200]))
    torch.cuda.empty_cache()
    return out


def with_ratio(row, geo_times, geo_extra):
    token = row.get("method", "").startswith("token_")
    for phase in ("forward", "step"):
        g = geo_times.get(("token_" + phase if token else phase, row["dtype"], row["V"]))
        t = row.get(f"{phase}_s")
        if g and t:
            row[f"{phase}_vs_geopref"] = t / g
    e = geo_extra.get(("token_step" if token else "step", row["dtype"], row["V"]))
    if e is not None:
        row["geopref_extra_MiB"] = e
    return row


COLUMNS = [("method", "{:<24}"), ("dtype", "{:<5}"), ("V", "{:>7}"), ("forward_s", "{:>10}"),
           ("step_s", "{:>10}"), ("forward_vs_geopref", "{:>8}"), ("step_vs_geopref", "{:>8}"),
           ("peak_MiB", "{:>9}"), ("extra_MiB", "{:>9}")]
TITLES = {"forward_s": "fwd ms", "step_s": "step ms", "forward_vs_geopref": "fwd x",
          "step_vs_geopref": "step x", "peak_MiB": "peak MiB", "extra_MiB": "extra MiB"}


def header():
    return " ".join(f.format(TITLES.get(k, k)) for k, f in COLUMNS)


def fmt_row(row):
    cells = []
    for k, f in COLUMNS:
        v = row.get(k)
        if v is None:
            v = "-"
        elif k.endswith("_s"):
            v = f"{v * 1e3:.3f}"
        elif k.endswith("_geopref"):
            v = f"{v:.2f}"
        elif k.endswith("MiB"):
            v = f"{v:.0f}"
        cells.append(f.format(v))
    line = " ".join(cells)
    return line + (f"  [{row['error']}]" if "error" in row else "")


if __name__ == "__main__":
    sys.exit(main())
