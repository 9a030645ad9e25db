"""Checks the geopref PyTorch op against a plain PyTorch implementation.

The plain version is the op-by-op formulation (log_softmax, gather, masked
per-sequence sums, margin, loss) in float64 on the same (already rounded)
logits, differentiated by autograd. Exit codes: 0 pass, 1 fail, 77 no GPU.

    python3 bindings/torch/test_geopref_torch.py
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import geopref_torch  # noqa: E402

failures = 0


def plain_loss(logits, labels, offsets, pairs, soft, ref, weights, loss, beta, alpha, gamma,
               average_logps, reduction, ignore_index):
    """Loss, per-sequence log-probs and metrics, op by op, in float64."""
    z = logits.double()
    logp = torch.log_softmax(z, dim=-1)
    scored = labels != ignore_index
    tok = logp.gather(1, torch.where(scored, labels, 0).long()[:, None]).squeeze(1) * scored
    S = offsets.numel() - 1
    seg = torch.repeat_interleave(torch.arange(S, device=z.device), (offsets[1:] - offsets[:-1]).long())
    end = int(offsets[-1])
    L = torch.zeros(S, dtype=torch.float64, device=z.device).index_add(0, seg, tok[:end])
    n = torch.zeros(S, dtype=torch.float64, device=z.device).index_add(0, seg, scored[:end].double())
    if average_logps or loss == "simpo":
        L = torch.where(n > 0, L / n.clamp(min=1), torch.zeros_like(L))
    if pairs is None:
        P = S // 2
        a, b = torch.arange(P, device=z.device), torch.arange(P, 2 * P, device=z.device)
    else:
        P = pairs.shape[0]
        a, b = pairs[:, 0].long(), pairs[:, 1].long()
    R = ref.double() if ref is not None else torch.zeros(S, dtype=torch.float64, device=z.device)
    p = soft.double() if soft is not None else torch.ones(P, dtype=torch.float64, device=z.device)
    w = weights.double() if weights is not None else torch.ones(P, dtype=torch.float64, device=z.device)
    h = (L[a] - R[a]) - (L[b] - R[b])
    if loss in ("gdpo", "gipo", "gropo"):
        hg = (2 * p - 1) * h
        base = loss[1:]
    else:
        hg, base = h, loss
    if base == "dpo":
        f = -F.logsigmoid(beta * hg)
    elif base == "ipo":
        f = (hg - 1 / (2 * beta)) ** 2
    elif base == "ropo":
        f = alpha * torch.sigmoid(-beta * hg) - gamma * F.logsigmoid(beta * hg)
    elif base == "cdpo":
        f = -p * F.logsigmoid(beta * hg) - (1 - p) * F.logsigmoid(-beta * hg)
    elif base == "simpo":
        f = -F.logsigmoid(beta * hg - gamma)
    else:
        raise ValueError(loss)
    f = w * f
    out = f if reduction == "none" else (f.sum() / (P if reduction == "mean" else 1))
    with torch.no_grad():
        rc, rr = beta * (L[a] - R[a]), beta * (L[b] - R[b])
        metrics = [rc.mean(), rr.mean(), (rc > rr).double().mean(), (rc - rr).mean(),
                   L[a].mean(), L[b].mean(), (torch.sigmoid(beta * h) - p).abs().mean()]
    return out, L, torch.stack(metrics)


def report(name, ok, detail):
    global failures
    failures += 0 if ok else 1
    print(f"  {'ok  ' if ok else 'FAIL'} {name:<44} {detail}")


def close(name, got, want, atol, rtol):
    got, want = got.double(), want.double()
    diff = (got - want).abs()
    ok = bool(torch.all(diff <= atol + rtol * want.abs())) and got.shape == want.shape
    report(name, ok, f"max |diff| {diff.max().item() if diff.numel() else 0:.3g} (atol {atol:.1g})")


# Gradient tolerance per logits dtype: the op stores the gradient in the
# logits dtype, so it carries that dtype's rounding (relative 2^-8 for
# bfloat16, 2^-11 for float16, float32's accumulation otherwise), measured
# against the largest gradient entry.
GRAD_RTOL = {torch.float32: 1e-4, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def case(name, dtype, N, V, offsets, loss, reduction="mean", pairs=None, soft=True, ref=True,
         weights=False, average_logps=False, beta=0.1, alpha=1.0, gamma=0.0, seed=0, stream=None):
    print(f"{name}: {dtype}, N={N}, V={V}, loss={loss}, reduction={reduction}")
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = "cuda"
    offsets_t = torch.tensor(offsets, dtype=torch.int32, device=dev)
    S = len(offsets) - 1
    P = S // 2 if pairs is None else len(pairs)
    logits = (torch.randn(N, V, generator=g, device=dev) * 3).to(dtype)
    labels = torch.randint(0, V, (N,), generator=g, device=dev)
    labels[torch.rand(N, generator=g, device=dev) < 0.15] = -100
    pairs_t = None if pairs is None else torch.tensor(pairs, dtype=torch.int64, device=dev)
    soft_t = torch.rand(P, generator=g, device=dev) if soft else None
    ref_t = None
    if ref:
        # Reference log-probs near the policy's own, so margins are O(1/beta)
        # and the losses are not saturated (a saturated loss has ~0 gradient).
        with torch.no_grad():
            _, L0, _ = plain_loss(logits, labels, offsets_t, pairs_t, None, None, None, "dpo",
                                  beta, 0.0, 0.0, average_logps, "mean", -100)
        ref_t = (L0 + torch.randn(S, generator=g, device=dev, dtype=torch.float64) * 3).float()
    w_t = torch.rand(P, generator=g, device=dev) * 2 if weights else None
    upstream = torch.randn(P if reduction == "none" else (), generator=g, device=dev)

    # float32 copies of the float inputs: the op's device type.
    kw = dict(pairs=pairs_t, soft_labels=soft_t, ref_logps=ref_t, weights=w_t, loss=loss, beta=beta,
              alpha=alpha, gamma=gamma, average_logps=average_logps, reduction=reduction)
    x = logits.clone().requires_grad_(True)
    s = torch.cuda.Stream() if stream else torch.cuda.current_stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out, seq, metrics = geopref_torch.pref_loss(x, labels, offsets_t, **kw)
        (out * upstream).sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()

    xr = logits.double().clone().requires_grad_(True)
    want, want_seq, want_metrics = plain_loss(
        xr, labels, offsets_t, pairs_t, soft_t, ref_t, w_t, loss, beta, alpha, gamma, average_logps,
        reduction, -100)
    (want * upstream.double()).sum().backward()

    # Log-probs: float32 log-sum-exp per row, a few ulps of |lse| ~ 10, summed
    # over the sequence's rows; the loss and metrics carry beta times that.
    T = max(b - a for a, b in zip(offsets[:-1], offsets[1:]))
    close("seq_logps", seq, want_seq, 2e-6 * 10 * T, 1e-5)
    close("loss", out, want, 1e-5 + 2e-6 * 10 * T * beta, 1e-5)
    close("metrics", metrics, want_metrics, 1e-5 + 2e-6 * 10 * T * beta, 1e-5)
    gmax = xr.grad.abs().max().item()
    close("grad_logits", x.grad, xr.grad, GRAD_RTOL[dtype] * gmax + 1e-7, GRAD_RTOL[dtype])
    report("grad dtype and shape", x.grad.dtype == dtype and x.grad.shape == logits.shape, str(x.grad.dtype))

    # Same inputs, same bits: the kernels are deterministic.
    x2 = logits.clone().requires_grad_(True)
    out2, _, _ = geopref_torch.pref_loss(x2, labels, offsets_t, **kw)
    (out2 * upstream).sum().backward()
    report("bitwise repeatable", torch.equal(out2, out) and torch.equal(x2.grad, x.grad), "")

    # The reference model's forward alone.
    ref_seq = geopref_torch.sequence_logps(logits, labels, offsets_t,
                                           average_logps=average_logps or loss == "simpo")
    close("sequence_logps op", ref_seq, want_seq, 2e-6 * 10 * T, 1e-5)


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 77
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    geopref_torch.load(verbose=False)
    ragged = [0, 30, 31, 64, 64, 100, 128]  # an empty sequence and a 1-row one
    case("dpo f32", torch.float32, 128, 1000, ragged, "dpo", soft=False, seed=1)
    case("gdpo f32", torch.float32, 128, 1000, ragged, "gdpo", seed=2)
    case("gdpo bf16", torch.bfloat16, 128, 32003, ragged, "gdpo", seed=3)
    case("gdpo f16 none weights", torch.float16, 128, 4097, ragged, "gdpo", reduction="none",
         weights=True, seed=4)
    case("dpo bf16 pairs side-stream", torch.bfloat16, 128, 2048, ragged, "dpo",
         pairs=[[0, 1], [2, 5], [4, 3], [5, 0]], seed=5, stream=True)
    case("gipo f32 avg", torch.float32, 128, 777, ragged, "gipo", average_logps=True, seed=6)
    case("gropo f32 sum", torch.float32, 128, 777, ragged, "gropo", reduction="sum", alpha=0.5,
         gamma=0.2, seed=7)
    case("cdpo bf16", torch.bfloat16, 128, 1000, ragged, "cdpo", seed=8)
    case("simpo f32", torch.float32, 128, 1000, ragged, "simpo", ref=False, beta=2.0, gamma=0.5,
         seed=9)

    # A bad label is reported as a Python error, not a crash.
    try:
        x = torch.zeros(4, 8, device="cuda")
        geopref_torch.pref_loss(x, torch.tensor([0, 9, 1, 1], device="cuda"),
                                torch.tensor([0, 2, 4], device="cuda"), loss="dpo")
        report("label out of range raises", False, "no error")
    except RuntimeError as e:
        report("label out of range raises", "label out of range" in str(e), str(e).splitlines()[0])

    print("all passed" if failures == 0 else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
