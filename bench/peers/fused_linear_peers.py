#!/usr/bin/env python3
"""Fused linear: the DPO-family loss from hidden states, in PyTorch, for
comparison with geopref's fused_linear_step (bench/gpu/bench_fused_linear.cu,
docs/benchmarks.md). Runs on the GPU machine (it has PyTorch).

For N tokens (S sequences of T, half chosen, half rejected: TRL's
concatenated layout), hidden size H, vocabulary V and bf16, each method runs
the loss and its backward with respect to the hidden states X [S, T, H] and the
output projection W [V, H]:

  geopref   geopref_torch.fused_linear_preference_loss (the PyTorch package,
            bindings/torch, built with its CUDA kernels): geopref's
            fused_linear_step through torch's custom operator, autograd and
            caching allocator, in this process, so that its time and peak
            memory are measured exactly as the others'
  eager     F.linear(X, W) → TRL's log-softmax / gather / masked sum → the
            geometric DPO loss; autograd backward (the logits and their
            gradient exist whole: N·V·2 bytes each)
  compile   `eager` under torch.compile (default mode)
  liger     Liger-Kernel's LigerFusedLinearDPOLoss (reference-free), when the
            package imports: chunked, like geopref
  matmuls   the three GEMMs (X·Wᵀ, G·W, Gᵀ·X) alone, for scale

Times are medians of CUDA-event times around a cold L2; "peak_MiB" is
torch.cuda.max_memory_allocated during the step minus the inputs and their
gradients. "step/geopref" divides by the geopref row of the same V: the
in-process one when it ran, else, with --geopref-json (bench_fused_linear's
Google Benchmark JSON), the C++ bench's fused_linear_step row ("geopref_cpp",
printed alongside with its workspace). Every method computes the same loss
(geometric DPO, reference-free) except Liger's, which is binary DPO (it takes
no soft labels): the same work.
--json writes the rows (after every row, so a cut-short run keeps them).
"""
import argparse
import json
import math
import sys

from peer_bench import (add_common_args, cold_timer, forward_and_step_times,  # bench/peers/
                        liger_dpo_loss, median, parse, skipped)

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # main() says so (peer_bench.skipped)
    torch = F = None

BETA = 0.1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--methods", default="geopref,eager,compile,liger,matmuls")
    p.add_argument("--geopref-json", help="bench_fused_linear --benchmark_out JSON")
    return parse(p)


def gdpo_from_hidden(x, w, labels, soft):
    """linear + TRL's get_batch_logps + the geometric DPO loss (reference-free)."""
    logits = F.linear(x, w)
    mask = labels != -100
    index = labels.masked_fill(~mask, 0)
    per_token = torch.gather(logits.log_softmax(-1), dim=2, index=index.unsqueeze(2)).squeeze(2)
    logps = (per_token * mask).sum(-1).float()
    p = soft.shape[0]
    h = logps[:p] - logps[p:]
    return -F.logsigmoid(BETA * (2.0 * soft - 1.0) * h).mean()


def inputs(args, v):
    s = args.rows // args.seq_len
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1)
    x = (torch.randn(s, args.seq_len, args.hidden, device="cuda", generator=gen, dtype=torch.bfloat16)).requires_grad_(True)
    w = (torch.randn(v, args.hidden, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02).requires_grad_(True)
    labels = torch.randint(0, v, (s, args.seq_len), device="cuda", generator=gen)
    labels[:, -1] = -100
    soft = torch.rand(s // 2, device="cuda", generator=gen)
    return x, w, labels, soft


def run(name, args, v, timer):
    x, w, labels, soft = inputs(args, v)
    base = torch.cuda.memory_allocated() + x.numel() * 2 + w.numel() * 2  # + their gradients
    if name == "geopref":
        import geopref_torch as gp
        if not gp.has_cuda_kernels():
            raise RuntimeError("geopref_torch was built without its CUDA kernels")

        kw = dict(loss_type="gdpo", beta=BETA, soft_labels=soft, chunk_bytes=args.chunk_bytes,
                  check=False)
        # [B, T, H] hidden states: the host offsets are s * T, built without
        # a device read, so the call takes fused_linear_step's one pass
        # (three GEMMs per chunk) even with check=False.
        with torch.enable_grad():
            one_pass = gp.fused_linear_one_pass(x, w, labels, **kw)
        print(f"geopref path (V = {v}): {'one pass' if one_pass else 'two passes'}", flush=True)

        def fn():
            # check=False: no synchronisation to read the kernels' verdict on
            # the labels (the other methods do not validate either).
            return gp.fused_linear_preference_loss(x, w, labels, **kw).loss
    elif name == "eager":
        fn = lambda: gdpo_from_hidden(x, w, labels, soft)  # noqa: E731
    elif name == "compile":
        compiled = torch.compile(gdpo_from_hidden)
        fn = lambda: compiled(x, w, labels, soft)  # noqa: E731
    elif name == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
        loss_fn = liger_dpo_loss(LigerFusedLinearDPOLoss, BETA)
        fn = lambda: loss_fn(w, x, labels)  # noqa: E731
    elif name == "matmuls":
        xd, wd = x.detach(), w.detach()
        n = args.rows

        def three():
            with torch.no_grad():
                g = torch.matmul(xd, wd.t())
                torch.matmul(g, wd)
                torch.matmul(g.reshape(n, v).t(), xd.reshape(n, args.hidden))
        fwd = [timer(lambda: torch.matmul(xd, wd.t())) for _ in range(args.iters)]
        step = [timer(three) for _ in range(args.iters)]
        return dict(method=name, V=v, forward_s=median(fwd), step_s=median(step))
    else:
        raise ValueError(name)

    fwd, steps = forward_and_step_times(fn, (x, w), timer, args.iters)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return dict(method=name, V=v, forward_s=median(fwd), step_s=median(steps), peak_MiB=peak)


def geopref_rows(path):
    """{V: (step seconds, workspace MiB)} from bench_fused_linear's JSON."""
    out = {}
    if not path:
        return out
    with open(path) as f:
        for b in json.load(f).get("benchmarks", []):
            if b.get("name", "").startswith("gpu/fused_linear/step/"):
                secs = b["real_time"] * {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}[b.get("time_unit", "ms")]
                out[int(b["V"])] = (secs, b.get("workspace_MiB"))
    return out


def main():
    args = parse_args()
    if skipped("fused_linear_peers"):
        return 77
    timer = cold_timer()
    geo = geopref_rows(args.geopref_json)
    rows = []
    print(f"{'method':<11} {'V':>7} {'forward ms':>11} {'step ms':>9} {'peak MiB':>9} {'step/geopref':>12}")
    for v in [int(s) for s in args.vocab.split(",")]:
        base = math.nan  # the geopref step time the ratios divide by
        if v in geo:
            secs, ws = geo[v]
            base = secs
            r = dict(method="geopref_cpp", V=v, step_s=secs, peak_MiB=ws)
            rows.append(r)
            print(f"{'geopref_cpp':<11} {v:>7} {'':>11} {secs * 1e3:>9.2f} {ws or float('nan'):>9.0f} {1.0:>12.2f}")
        for m in args.methods.split(","):
            try:
                r = run(m, args, v, timer)
            except torch.cuda.OutOfMemoryError:
                r = dict(method=m, V=v, error="out of memory")
            except Exception as e:  # noqa: BLE001
                r = dict(method=m, V=v, error=f"{type(e).__name__}: {e}"[:200])
            torch.cuda.empty_cache()
            rows.append(r)
            if "error" in r:
                print(f"{m:<11} {v:>7} {r['error']}")
            else:
                if m == "geopref":
                    base = r["step_s"]
                ratio = r["step_s"] / base
                print(f"{m:<11} {v:>7} {r['forward_s'] * 1e3:>11.2f} {r['step_s'] * 1e3:>9.2f} "
                      f"{r.get('peak_MiB', math.nan):>9.0f} {ratio:>12.2f}")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(dict(rows=rows, rows_N=args.rows, H=args.hidden, dtype="bf16"), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
