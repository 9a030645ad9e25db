"""The C++ inputs PyTorch reaches since issue 21's parity step, against their
definitions in float64 torch and finite differences (CPU; the CUDA kernels
run the same tests where a GPU is built in):
  * token_weights (LD-DPO): L_s = sum_t w_t log p_t, in dpo_loss,
    sequence_logps, fused_linear_preference_loss and fused_linear_logps;
  * metric_sums and metrics_from_sums (data parallel);
  * sequence_logps / fused_linear_logps with the options keywords;
  * the fused-linear gradient accumulators (grad_weight_float32, accumulate);
  * linear_token_logps and its backward;
  * the vocab-parallel operators over K simulated ranks, gathered in any order.
Ragged sequences, rows outside every sequence and ignored rows throughout.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import geopref_torch as gp
import plain

V, H = 11, 6
LENGTHS = (3, 5, 1, 4, 2, 6)  # S = 6 ragged sequences, P = 3 pairs (TRL's layout)
P = len(LENGTHS) // 2
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-5),
       torch.bfloat16: (2e-5, 2e-5), torch.float16: (2e-5, 2e-5)}


def problem(seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    off = torch.tensor([0] + list(itertools.accumulate(LENGTHS)))
    n = int(off[-1]) + 2  # two rows after the last sequence: in no sequence
    labels = torch.randint(0, V, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.25] = -100
    labels[off[:-1]] = 1  # every sequence scores a row
    return dict(
        logits=torch.randn(n, V, generator=g, dtype=torch.float64).mul(2).to(device),
        hidden=torch.randn(n, H, generator=g, dtype=torch.float64).to(device),
        weight=torch.randn(V, H, generator=g, dtype=torch.float64).to(device),
        bias=torch.randn(V, generator=g, dtype=torch.float64).to(device),
        labels=labels.to(device), offsets=off.to(device),
        tw=(torch.rand(n, generator=g, dtype=torch.float64) * 2).to(device),
        ref=torch.randn(2 * P, generator=g, dtype=torch.float64).to(device),
        soft=torch.rand(P, generator=g, dtype=torch.float64).to(device))


def grad_of(fn, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    out = fn(*xs)
    out.sum().backward()
    return out.detach(), [x.grad for x in xs]


def close(a, e, dtype=torch.float64):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(a.double().cpu(), e.double().cpu(), rtol=rtol, atol=atol)


def linear_problem(seed, dtype, device):
    """problem(seed) with its hidden states, weight and bias in dtype:
    (problem, hidden, weight, bias); skipped for float64 on CUDA."""
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    pb = problem(seed, device)
    return (pb, *(pb[k].to(dtype) for k in ("hidden", "weight", "bias")))


def linear_tol(dtype, device):
    """The TOL key of a hidden-state path's values: float64 on CPU (the CPU
    reference in double), else float32 (float32 outputs, float32 GEMMs on
    CUDA)."""
    return torch.float64 if dtype == torch.float64 and device == "cpu" else torch.float32


def against_float64(ours, theirs, xs, dtype, device):
    """ours(*xs) against theirs on xs in float64 (PyTorch's composition):
    the values, and the gradients (of their sum) with respect to every x,
    the float64 ones rounded to the dtype; to TOL[linear_tol] (bfloat16
    gradients to TOL[bfloat16]). Returns ours' value."""
    v, g = grad_of(ours, *xs)
    ve, ge = grad_of(theirs, *(x.double() for x in xs))
    tol = linear_tol(dtype, device)
    close(v, ve, tol)
    for a, e in zip(g, ge):
        close(a, e.to(dtype), tol if dtype != torch.bfloat16 else dtype)
    return v


# ---- token weights

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dpo_loss_token_weights(dtype, reduction, device):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    pb = problem(1, device)
    z = pb["logits"].to(dtype)
    kw = dict(ref_logps=pb["ref"], soft_labels=pb["soft"], loss_type="gdpo", beta=0.5,
              reduction=reduction)
    up = torch.linspace(-1, 2, P, dtype=torch.float64, device=device)

    def ours(x):
        out = gp.dpo_loss(x, pb["labels"], pb["offsets"], token_weights=pb["tw"], **kw)
        return out.loss * (up if reduction == "none" else 1)

    def theirs(x):
        v, _, _ = plain.pref_loss(x, pb["labels"], pb["offsets"], "gdpo", soft=pb["soft"],
                                  ref=pb["ref"], beta=0.5, reduction=reduction,
                                  token_weights=pb["tw"])
        return v * (up if reduction == "none" else 1)

    v, (g,) = grad_of(ours, z)
    ve, (ge,) = grad_of(theirs, z.double())  # the rounded inputs, in float64
    tol = dtype if device == "cpu" else torch.float32
    close(v, ve, tol)
    close(g, ge.to(dtype), tol if dtype in (torch.float64, torch.float32) else dtype)
    assert g[int(pb["offsets"][-1]):].abs().max() == 0  # rows in no sequence
    # Weights 1 are no weights; the weights of ignored rows are never read.
    ones = torch.ones_like(pb["tw"])
    nan_on_ignored = torch.where(pb["labels"] == -100, float("nan"), ones)
    a = gp.dpo_loss(z, pb["labels"], pb["offsets"], token_weights=nan_on_ignored, **kw).loss
    b = gp.dpo_loss(z, pb["labels"], pb["offsets"], **kw).loss
    assert torch.equal(a, b)


def test_token_weights_gradcheck_and_shapes():
    pb = problem(2)
    y, off, tw = pb["labels"], pb["offsets"], pb["tw"]
    assert torch.autograd.gradcheck(
        lambda z: gp.dpo_loss(z, y, off, token_weights=tw, ref_logps=pb["ref"],
                              loss_type="ipo", average_logps=True).loss,
        (pb["logits"].clone().requires_grad_(True),))
    assert torch.autograd.gradcheck(
        lambda z: gp.sequence_logps(z, y, off, token_weights=tw, average_logps=True),
        (pb["logits"].clone().requires_grad_(True),))
    # [B, T, V] logits take [B, T] weights.
    z3 = pb["logits"][:12].reshape(2 * P, 2, V)
    y3 = y[:12].reshape(2 * P, 2).clone()
    y3[:, 0] = 1
    w3 = tw[:12].reshape(2 * P, 2)
    out = gp.dpo_loss(z3, y3, token_weights=w3)
    e, _, _ = plain.pref_loss(z3.reshape(-1, V), y3.reshape(-1), torch.arange(2 * P + 1) * 2, "dpo",
                              token_weights=w3.reshape(-1))
    close(out.loss, e)
    with pytest.raises(ValueError, match="token_weights must have the labels' shape"):
        gp.dpo_loss(z3, y3, token_weights=w3.reshape(-1))
    bad = tw.clone()
    bad[int(pb["offsets"][0])] = float("inf")  # a scored row
    with pytest.raises(ValueError):
        gp.dpo_loss(pb["logits"], y, off, token_weights=bad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_fused_linear_token_weights(dtype, device):
    pb, x, w, b = linear_problem(3, dtype, device)
    y, off, tw = pb["labels"], pb["offsets"], pb["tw"]
    kw = dict(ref_logps=pb["ref"], soft_labels=pb["soft"], loss_type="gdpo", token_weights=tw)
    against_float64(
        lambda x, w, b: gp.fused_linear_preference_loss(x, w, y, off, bias=b, **kw).loss,
        lambda x, w, b: gp.dpo_loss(F.linear(x, w, b), y, off, **kw).loss, (x, w, b), dtype,
        device)
    # fused_linear_logps with weights: the logits path's sequence_logps.
    against_float64(
        lambda x, w, b: gp.fused_linear_logps(x, w, y, off, bias=b, token_weights=tw,
                                              average_logps=True),
        lambda x, w, b: gp.sequence_logps(F.linear(x, w, b), y, off, token_weights=tw,
                                          average_logps=True), (x, w, b), dtype, device)


# ---- metric sums (data parallel)

def test_metric_sums_all_reduce_to_the_batch_metrics(device):
    pb = problem(4, device)
    y, off = pb["labels"], pb["offsets"]
    kw = dict(loss_type="dpo", beta=0.4)
    pairs = torch.tensor([[0, 3], [1, 4], [2, 5]], device=device)
    whole = gp.dpo_loss(pb["logits"], y, off, pairs=pairs, ref_logps=pb["ref"], **kw)
    assert whole.metric_sums.shape == (8,) and whole.metric_sums.dtype == torch.float64
    assert float(whole.metric_sums[-1]) == P
    mine = gp.metrics_from_sums(whole.metric_sums)
    for k in gp.METRIC_NAMES:
        close(mine[k], whole.metrics[k])
    # Two "ranks": pairs {0} and {1, 2}; all-reduce = sum of their sums.
    ranks = [gp.dpo_loss(pb["logits"], y, off, pairs=pairs[i], ref_logps=pb["ref"], **kw)
             for i in (slice(0, 1), slice(1, 3))]
    total = ranks[0].metric_sums + ranks[1].metric_sums
    for k, v in gp.metrics_from_sums(total).items():
        close(v, whole.metrics[k])
    # No pairs: zeros, never 0/0.
    zero = gp.metrics_from_sums(torch.zeros(8, dtype=torch.float64))
    assert all(float(v) == 0 for v in zero.values())
    # The fused-linear path returns them too.
    lin = gp.fused_linear_preference_loss(pb["hidden"], pb["weight"], y, off, bias=pb["bias"],
                                          pairs=pairs, ref_logps=pb["ref"], **kw)
    ref = gp.dpo_loss(F.linear(pb["hidden"], pb["weight"], pb["bias"]), y, off, pairs=pairs,
                      ref_logps=pb["ref"], **kw)
    close(lin.metric_sums, ref.metric_sums, torch.float32 if device == "cuda" else torch.float64)


# ---- sequence_logps takes the options

def test_sequence_logps_takes_the_options():
    pb = problem(5)
    z, y, off = pb["logits"], pb["labels"], pb["offsets"]
    L, _ = plain.sequence_logps(z, y, off, False)
    Lbar, _ = plain.sequence_logps(z, y, off, True)
    close(gp.sequence_logps(z, y, off), L)
    close(gp.sequence_logps(z, y, off, loss_type="ipo"), Lbar)  # TRL's IPO averages
    close(gp.sequence_logps(z, y, off, loss_type="simpo", average_logps=False), Lbar)  # forced
    close(gp.sequence_logps(z, y, off, average_logps=True), Lbar)
    # A custom ignore_index, and the same numbers from the fused-linear form.
    y7 = torch.where(y == -100, 7, y)
    close(gp.sequence_logps(z, y7, off, ignore_index=7),
          plain.sequence_logps(z, y7, off, False, ignore_index=7)[0])
    lin = gp.fused_linear_logps(pb["hidden"], pb["weight"], y, off, bias=pb["bias"],
                                loss_type="ipo")
    close(lin, plain.sequence_logps(F.linear(pb["hidden"], pb["weight"], pb["bias"]), y, off,
                                    True)[0])
    # One set of keywords serves the loss and the reference model's pass.
    cfg = dict(loss_type=["dpo", "sft"], loss_weights=[1.0, 0.5], average_logps=True, beta=0.2)
    ref = gp.sequence_logps(z + 0.3, y, off, **cfg)
    out = gp.dpo_loss(z, y, off, ref_logps=ref, **cfg)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="reduction must be"):
        gp.sequence_logps(z, y, off, reduction="avg")
    assert torch.autograd.gradcheck(
        lambda x: gp.sequence_logps(x, y, off, loss_type="simpo"), (z.clone().requires_grad_(True),))


# ---- the fused-linear accumulators

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_grad_weight_accumulator(dtype, reduction, device):
    pb = problem(6, device)
    y, off = pb["labels"], pb["offsets"]
    kw = dict(ref_logps=pb["ref"], soft_labels=pb["soft"], loss_type="gdpo", reduction=reduction,
              token_weights=pb["tw"])
    x64, w64, b64 = pb["hidden"], pb["weight"], pb["bias"]
    x, w, b = (t.to(dtype) for t in (x64, w64, b64))
    up = torch.linspace(0.5, 1.5, P, dtype=torch.float64, device=device)

    def scale(loss, k):
        return (loss * up).sum() * k if reduction == "none" else loss * k

    # The float64 reference: micro-batch k's loss scaled by k (an upstream
    # gradient other than 1), on the rounded inputs.
    expect_w = torch.full((V, H), 0.25, dtype=torch.float64, device=device)
    expect_b = torch.full((V,), -0.5, dtype=torch.float64, device=device)
    expect_x = []
    for k in (1.0, 0.5):
        _, (gx, gw, gb) = grad_of(
            lambda x_, w_, b_: scale(gp.dpo_loss(F.linear(x_, w_, b_), y, off, **kw).loss, k),
            x.double(), w.double(), b.double())
        expect_w += gw
        expect_b += gb
        expect_x.append(gx)
    acc_w = torch.full((V, H), 0.25, dtype=torch.float32, device=device)  # a master buffer
    acc_b = torch.full((V,), -0.5, dtype=torch.float32, device=device)    # with history
    wl, bl = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    for k, gx_e in zip((1.0, 0.5), expect_x):
        xl = x.clone().requires_grad_(True)
        out = gp.fused_linear_preference_loss(xl, wl, y, off, bias=bl, **kw,
                                              grad_weight_accumulator=acc_w,
                                              grad_bias_accumulator=acc_b)
        scale(out.loss, k).backward()
        close(xl.grad, gx_e.to(dtype), torch.float32 if dtype == torch.float32 else dtype)
    assert wl.grad is None and bl.grad is None  # into the accumulators instead
    # float32 sums: float32's tolerance even for bfloat16 weights (a bfloat16
    # gradient would be off by ~1e-2 relative).
    close(acc_w, expect_w, torch.float32)
    close(acc_b, expect_b, torch.float32)


def test_grad_weight_accumulator_errors_and_no_grad():
    pb = problem(7)
    y, off = pb["labels"], pb["offsets"]
    w = pb["weight"].clone().requires_grad_(True)
    b = pb["bias"].clone().requires_grad_(True)
    acc = torch.zeros(V, H, dtype=torch.float32)
    with pytest.raises(ValueError, match="give grad_bias_accumulator too"):
        gp.fused_linear_preference_loss(pb["hidden"], w, y, off, bias=b,
                                        grad_weight_accumulator=acc)
    with pytest.raises(ValueError, match=r"grad_weight_acc must be \[V, H\]"):
        out = gp.fused_linear_preference_loss(pb["hidden"], w, y, off,
                                              grad_weight_accumulator=acc[:, :2])
        out.loss.backward()
    with pytest.raises(TypeError, match="grad_weight_acc must be float32"):
        out = gp.fused_linear_preference_loss(pb["hidden"], w, y, off,
                                              grad_weight_accumulator=acc.half())
        out.loss.backward()
    with torch.no_grad():  # no backward: the loss alone, the buffer untouched
        out = gp.fused_linear_preference_loss(pb["hidden"], w, y, off,
                                              grad_weight_accumulator=acc)
    assert acc.abs().max() == 0
    plain_loss = gp.fused_linear_preference_loss(pb["hidden"], pb["weight"], y, off).loss
    torch.testing.assert_close(out.loss, plain_loss, rtol=0, atol=0)


# ---- linear_token_logps

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_linear_token_logps(dtype, device):
    pb, x, w, b = linear_problem(8, dtype, device)
    y = pb["labels"][:22].reshape(2, 11)  # [B, T] with [B, T, H] hidden
    x3 = x[:22].reshape(2, 11, H)
    g_up = torch.randn(y.shape, dtype=torch.float64, device=device)
    v = against_float64(
        lambda x_, w_, b_: gp.linear_token_logps(x_, w_, y, bias=b_, softcap=3.0) * g_up,
        lambda x_, w_, b_: gp.token_logps(F.linear(x_, w_, b_), y, softcap=3.0) * g_up,
        (x3, w, b), dtype, device)
    assert torch.equal(v[y == -100], torch.zeros_like(v[y == -100]))
    _, ent = gp.linear_token_logps(x3, w, y, bias=b, return_entropy=True)
    _, ent_e = gp.token_logps(F.linear(x3.double(), w.double(), b.double()), y,
                              return_entropy=True)
    close(ent, ent_e, linear_tol(dtype, device))
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda x_, w_, b_: gp.linear_token_logps(x_, w_, pb["labels"], bias=b_,
                                                     temperature=0.7),
            tuple(t.clone().requires_grad_(True) for t in (x, w, b)))


# ---- vocab parallel

def slices(bounds):
    k = len(bounds) - 1
    return [gp.VocabSlice(bounds[r], bounds[-1], r, k) for r in range(k)]


@pytest.mark.parametrize("bounds", [(0, V), (0, 5, V), (0, 1, 7, V)], ids=["K1", "K2", "K3"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vocab_parallel_equals_the_unsharded_step(bounds, reduction, device):
    pb = problem(9, device)
    z, y, off = pb["logits"], pb["labels"], pb["offsets"]
    if device == "cuda":
        z = z.float()
    kw = dict(ref_logps=pb["ref"], soft_labels=pb["soft"], loss_type="gdpo", beta=0.5,
              reduction=reduction, token_weights=pb["tw"], softcap=4.0)
    up = torch.linspace(-1, 2, P, dtype=z.dtype, device=device)
    sls = slices(bounds)
    parts = [z[:, s.begin:bounds[s.rank + 1]] for s in sls]
    records = [gp.vocab_parallel_stats(p, y, off, vocab_slice=s, softcap=4.0)
               for p, s in zip(parts, sls)]
    gathered = torch.stack(records[::-1])  # slots in any order: the records carry their rank
    whole = gp.dpo_loss(z, y, off, **kw)
    zg = z.clone().requires_grad_(True)
    (gp.dpo_loss(zg, y, off, **kw).loss * (up if reduction == "none" else 1)).sum().backward()
    tol = torch.float32 if device == "cuda" else torch.float64
    grads = []
    for p, s in zip(parts, sls):
        pg = p.clone().requires_grad_(True)
        out = gp.vocab_parallel_loss(pg, y, gathered, off, vocab_slice=s, **kw)
        close(out.loss, whole.loss, tol)
        close(out.logps, whole.logps, tol)
        close(out.metric_sums, whole.metric_sums, tol)
        (out.loss * (up if reduction == "none" else 1)).sum().backward()
        grads.append(pg.grad)
    close(torch.cat(grads, dim=1), zg.grad, tol)
    # The forward-only pass (the reference model).
    for p, s in zip(parts, sls):
        lp = gp.vocab_parallel_logps(p, y, gathered, off, vocab_slice=s, average_logps=True,
                                     token_weights=pb["tw"], softcap=4.0)
        close(lp, gp.sequence_logps(z, y, off, average_logps=True, token_weights=pb["tw"],
                                    softcap=4.0), tol)


def test_vocab_parallel_gradcheck_and_bad_records():
    pb = problem(10)
    z, y, off = pb["logits"], pb["labels"], pb["offsets"]
    sls = slices((0, 4, V))
    kw = dict(ref_logps=pb["ref"], loss_type="dpo", token_weights=pb["tw"])

    def rank_loss(r, mine):
        # The rank's loss as a function of its own slice, the records of
        # every rank recomputed from it (so finite differences see lse move).
        parts = [mine if q == r else z[:, s.begin:s.begin + (4 if q == 0 else V - 4)]
                 for q, s in enumerate(sls)]
        rec = torch.stack([gp.vocab_parallel_stats(p, y, off, vocab_slice=s)
                           for p, s in zip(parts, sls)])
        return gp.vocab_parallel_loss(mine, y, rec, off, vocab_slice=sls[r], **kw).loss

    for r, (a, b) in enumerate(((0, 4), (4, V))):
        assert torch.autograd.gradcheck(lambda m: rank_loss(r, m),
                                        (z[:, a:b].clone().requires_grad_(True),))
    rec = torch.stack([gp.vocab_parallel_stats(z[:, :4], y, off, vocab_slice=sls[0]),
                       gp.vocab_parallel_stats(z[:, 4:], y, off, vocab_slice=sls[1])])
    twice = torch.stack([rec[0], rec[0]])  # rank 1's records missing, rank 0's twice
    with pytest.raises(ValueError, match="vocab"):
        gp.vocab_parallel_loss(z[:, :4], y, twice, off, vocab_slice=sls[0])
    with pytest.raises(ValueError, match=r"records must be the gathered \[n_ranks, N, 4\]"):
        gp.vocab_parallel_loss(z[:, :4], y, rec[:1], off, vocab_slice=sls[0])
    with pytest.raises(ValueError, match="does not hold a slice"):
        gp.vocab_parallel_stats(z[:, :4], y, off, vocab_slice=gp.VocabSlice(8, V, 0, 2))
    assert gp.even_slice(V, 1, 2) == (gp.VocabSlice(5, V, 1, 2), 6)


@pytest.mark.parametrize("bounds", [(0, V), (0, 1, 7, V)], ids=["K1", "K3"])
def test_vocab_linear_equals_the_unsharded_step(bounds, device):
    pb = problem(11, device)
    x, w, b = pb["hidden"], pb["weight"], pb["bias"]
    if device == "cuda":
        x, w, b = x.float(), w.float(), b.float()
    y, off = pb["labels"], pb["offsets"]
    kw = dict(ref_logps=pb["ref"], soft_labels=pb["soft"], loss_type="gdpo",
              token_weights=pb["tw"])
    whole, (gx, gw, gb) = grad_of(
        lambda x_, w_, b_: gp.dpo_loss(F.linear(x_, w_, b_), y, off, **kw).loss, x, w, b)
    sls = slices(bounds)
    ws = [(w[s.begin:bounds[s.rank + 1]], b[s.begin:bounds[s.rank + 1]]) for s in sls]
    rec = torch.stack([gp.vocab_linear_stats(x, wr, y, off, bias=br, vocab_slice=s)
                       for (wr, br), s in zip(ws, sls)])
    tol = torch.float32 if device == "cuda" else torch.float64
    partial, gws, gbs = torch.zeros_like(x), [], []
    for (wr, br), s in zip(ws, sls):
        loss, (px, pw, pbias) = grad_of(
            lambda x_, w_, b_: gp.vocab_linear_loss(x_, w_, y, rec, off, bias=b_, vocab_slice=s,
                                                    **kw).loss, x, wr, br)
        close(loss, whole, tol)
        partial += px  # the caller's all-reduce of grad_hidden
        gws.append(pw)
        gbs.append(pbias)
    close(partial, gx, tol)
    close(torch.cat(gws), gw, tol)
    close(torch.cat(gbs), gb, tol)
