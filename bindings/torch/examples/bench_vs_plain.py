"""Times geopref's fused loss against the plain PyTorch formulation on a GPU:
forward + backward of a DPO-family loss from [2P, T, V] logits, as TRL
computes it (float32 log_softmax, gather, masked sums, loss, autograd) and
with geopref_torch.dpo_loss, plus the peak GPU memory each allocates during
forward + backward (the logits' gradient included, the logits not). Exit status 77 without a GPU or CUDA kernels.

    python3 bindings/torch/examples/bench_vs_plain.py [--pairs 4] [--seq 1024] [--vocab 128256]
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import geopref_torch as gp


def plain(logits, labels, ref_logps, soft, beta):
    """TRL's way, op by op, with the geometric soft-label margin."""
    scored = labels != -100
    logp = logits.float().log_softmax(-1)
    tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * scored
    L = tok.sum(-1)
    P = soft.numel()
    h = (L[:P] - ref_logps[:P]) - (L[P:] - ref_logps[P:])
    return -F.logsigmoid(beta * (2 * soft - 1) * h).mean()


def fused(logits, labels, ref_logps, soft, beta):
    return gp.dpo_loss(logits, labels, loss_type="gdpo", beta=beta, soft_labels=soft,
                       ref_logps=ref_logps, check=False).loss


def measure(fn, logits, args, iters):
    """Median ms of forward + backward, and the peak bytes allocated during it."""
    times = []
    for i in range(iters + 2):
        logits.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(logits, *args).backward()
        end.record()
        torch.cuda.synchronize()
        if i >= 2:  # the first two calls warm up allocator and kernels
            times.append(start.elapsed_time(end))
        peak = torch.cuda.max_memory_allocated() - base
    times.sort()
    return times[len(times) // 2], peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = ap.parse_args()
    if not (torch.cuda.is_available() and gp.has_cuda_kernels()):
        print("bench_vs_plain: no GPU or no CUDA kernels in this build: skipped")
        return 77
    torch.manual_seed(0)
    dt = getattr(torch, args.dtype)
    B, T, V = 2 * args.pairs, args.seq, args.vocab
    logits = (torch.randn(B, T, V, device="cuda") * 2).to(dt).requires_grad_(True)
    labels = torch.randint(0, V, (B, T), device="cuda")
    labels[:, : T // 4] = -100  # prompt rows
    ref = -torch.rand(B, device="cuda") * T
    soft = torch.rand(args.pairs, device="cuda")
    inputs = (labels, ref, soft, 0.1)

    lp = plain(logits, *inputs)
    lf = fused(logits, *inputs)
    gp_, = torch.autograd.grad(lp, logits)
    gf, = torch.autograd.grad(lf, logits)
    diff = float((gp_.float() - gf.float()).abs().max())
    scale = float(gp_.float().abs().max())
    del gp_, gf
    t_plain, m_plain = measure(plain, logits, inputs, args.iters)
    t_fused, m_fused = measure(fused, logits, inputs, args.iters)
    gb = logits.numel() * logits.element_size() / 1e9
    print(f"{torch.cuda.get_device_name()}: [{B}, {T}, {V}] {args.dtype} logits ({gb:.2f} GB), "
          f"forward + backward, median of {args.iters}")
    print(f"  {'':8} {'ms':>8} {'peak GB':>9}")
    print(f"  {'plain':8} {t_plain:8.3f} {m_plain / 1e9:9.2f}")
    print(f"  {'geopref':8} {t_fused:8.3f} {m_fused / 1e9:9.2f}   ({t_plain / t_fused:.2f}x)")
    print(f"  loss plain {lp.item():.6f} geopref {lf.item():.6f}; "
          f"max |grad diff| {diff:.3g} (max |grad| {scale:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
