"""geopref_torch's fused-linear loss (fused_linear_preference_loss,
fused_linear_logps) against PyTorch's own composition: F.linear, then
log_softmax / gather / masked sum / the DPO-family loss (tests/plain.py),
differentiated by autograd with respect to the hidden states, the weight and
the bias. Per dtype, on awkward shapes (V not a multiple of 8, H = 1, packed
offsets with an empty sequence and rows outside every sequence, ignored
labels, bias or none, soft labels), with upstream gradients, gradient
accumulation, frozen weights, gradcheck in float64, opcheck, torch.compile
(fullgraph) and bad inputs. Runs on CPU; on CUDA too when a GPU is visible and
the CUDA kernels are built.

Inputs are dyadic (multiples of 1/16, |x| <= 1): every product and sum of the
GEMMs is exact in float32, so the logits do not depend on the GEMM's order of
summation, and the CUDA path's logits (an fp32-accumulated GEMM rounded to the
input dtype) equal F.linear in float64 rounded once to the dtype. The
composition uses exactly that rounding on CUDA (straight-through, so autograd
sees the float64 chain) and none on CPU, where the kernel is the CPU
reference (float64 on the unrounded product).
"""
import pytest
import torch
import torch.nn.functional as F

import geopref_torch as gp
from geopref_torch import pack_options
from conftest import DEVICES
from helpers import assert_compiled_matches_eager, random_offsets, random_targets
import plain

ops = torch.ops.geopref
PARAMS = dict(beta=0.7, alpha=0.8, gamma=0.3, epsilon=0.15, tau=0.3)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
IDS = ["fp64", "fp32", "bf16", "fp16"]

# Unit roundoff of each dtype: the one rounding of an output from float64
# (CPU) and of the chunk's logits and their gradient G (CUDA).
U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8,
     torch.float16: 2.0 ** -11}


def make(seed, P=3, T=5, H=16, V=37, layout="packed", bias=True, dtype=torch.float32,
         device="cpu"):
    """hidden [N, H], weight [V, H], bias [V] (dyadic), labels (a quarter
    ignored), offsets, soft labels, reference log-probs. layout "padded":
    [2P, T] rows; "packed": uneven lengths, sequence 1 empty, two trailing rows
    outside every sequence."""
    g = torch.Generator().manual_seed(seed)
    offsets, N = random_offsets(g, 2 * P, T, layout)

    def dyadic(*shape, scale):
        return (torch.randint(-16, 17, shape, generator=g).double() / 16 * scale).to(dtype)

    hidden = dyadic(N, H, scale=1.0)
    weight = dyadic(V, H, scale=2.0 / max(H, 1) ** 0.5)
    weight = (torch.round(weight.double() * 16) / 16).to(dtype)  # still dyadic
    b = dyadic(V, scale=1.0) if bias else None
    labels, soft, ref = random_targets(g, N, V, P)
    to = dict(device=device)
    return dict(hidden=hidden.to(**to), weight=weight.to(**to),
                bias=None if b is None else b.to(**to), labels=labels.to(**to),
                offsets=offsets.to(**to), soft=soft.to(**to), ref=ref.to(**to))


def leaves(pb):
    """Fresh leaves requiring grad: (hidden, weight, bias or None)."""
    return tuple(None if t is None else t.detach().clone().requires_grad_(True)
                 for t in (pb["hidden"], pb["weight"], pb["bias"]))


def composed_logits(x, w, b, round_to):
    """F.linear in float64; with round_to, the logits rounded once to that
    dtype as the CUDA path rounds them (straight-through for autograd)."""
    z = F.linear(x, w, b)
    if round_to is not None:
        z = z + (z.detach().to(round_to).double() - z.detach())
    return z


def composition(pb, loss, device, reduction="mean", average=False, upstream=None, **kw):
    """PyTorch's composition in float64 on CPU: (value, L, metrics, grads, A)
    with grads = (hidden, weight, bias) of sum(value * upstream) and A the
    magnitude of the logits' gradient (for the error bounds)."""
    dtype = pb["hidden"].dtype
    x, w, b = (None if t is None else t.detach().cpu().double().requires_grad_(True)
               for t in (pb["hidden"], pb["weight"], pb["bias"]))
    z = composed_logits(x, w, b, dtype if device == "cuda" else None)
    z.retain_grad()
    ref = None if loss == "simpo" else pb["ref"].cpu()
    value, L, metrics = plain.pref_loss(z, pb["labels"].cpu(), pb["offsets"].cpu(), loss,
                                        soft=pb["soft"].cpu(), ref=ref, average=average,
                                        reduction=reduction, **kw)
    up = torch.ones_like(value) if upstream is None else upstream.cpu().double()
    (value * up).sum().backward()
    grads = (x.grad, w.grad, None if b is None else b.grad)
    return value.detach(), L.detach(), metrics, grads, magnitude(z.grad, z, pb["labels"].cpu())


def run_op(pb, loss, reduction="mean", average=False, upstream=None, **kw):
    x, w, b = leaves(pb)
    ref = None if loss == "simpo" else pb["ref"]
    out = gp.fused_linear_preference_loss(x, w, pb["labels"], pb["offsets"], bias=b,
                                          loss_type=loss, soft_labels=pb["soft"], ref_logps=ref,
                                          reduction=reduction, average_logps=average, **kw)
    up = torch.ones_like(out.loss) if upstream is None else upstream.to(out.loss.dtype)
    (out.loss * up).sum().backward()
    return out, (x.grad, w.grad, None if b is None else b.grad)


def close(actual, expected, atol, rtol, what):
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def value_tol(dtype, device):
    """Loss, log-probs, metrics: float32 outputs of a float64 computation on
    CPU (~1e-7 relative); on CUDA float32 accumulation over V and T (a few
    1e-6 relative). float64 on CPU: the composition's own rounding."""
    if dtype == torch.float64:
        return 1e-12, 1e-12
    return (2e-6, 2e-6) if device == "cpu" else (2e-5, 2e-5)


def magnitude(G, z, labels):
    """A[t, v] = |g_t| (p_v + 1[v = y_t]) >= |G[t, v]|: the size of each
    logit's gradient G = g_t (1[v = y_t] - p) *and* of its softmax part g_t p_v,
    which float32 errors in lse and exp scale (G alone vanishes at the label
    as p_y -> 1, its error does not). g_t from the composition's G and p."""
    G, z = G.detach(), z.detach()
    p = torch.softmax(z, dim=-1)
    scored = labels != -100
    y = torch.where(scored, labels, torch.zeros_like(labels)).long()[:, None]
    py = p.gather(1, y).squeeze(1)
    g = torch.where(scored, G.gather(1, y).squeeze(1) / (1 - py).clamp_min(1e-300),
                    torch.zeros_like(py))
    onehot = torch.zeros_like(p).scatter_(1, y, 1.0)
    return g.abs()[:, None] * (p + onehot)


def check_grads(got, want, A, pb, device, what, slack=0.0):
    """Each gradient against the composition's. CPU: the float64 reference
    rounded once to the dtype (half an ulp: U relative), plus a tiny atol for
    values near 0 (fp16 subnormals). CUDA: the chunk's gradient G is rounded
    to the dtype before the fp32-accumulated GEMMs, and carries float32's
    error in lse and exp (~1e-6 relative of |g_t| p_v), so the error of
    grad_hidden = G·W is within (2U + 1e-5) (A·|W|) elementwise, A =
    magnitude() (likewise Aᵀ·|H| for grad_weight, Σ_t A for grad_bias), plus
    float16's subnormal floor and the output's rounding 2U|want|. `slack`
    adds slack·(A·|W|, ...) for an error the caller knows of in G itself."""
    dtype = pb["hidden"].dtype
    u = U[dtype]
    Wd, Hd = pb["weight"].detach().cpu().double().abs(), pb["hidden"].detach().cpu().double().abs()
    spread = (A @ Wd, A.t() @ Hd, A.sum(0))
    # float16's G below 2^-14 is subnormal: an absolute rounding error up to
    # 2^-25 per element of G, whatever its size.
    tiny = 2.0 ** -25 if dtype == torch.float16 else 0.0
    ones = torch.ones_like(A)
    floor = (tiny * (ones @ Wd), tiny * (ones.t() @ Hd), tiny * ones.sum(0))
    for name, a, e, s, f in zip(("hidden", "weight", "bias"), got, want, spread, floor):
        if e is None:
            assert a is None, f"{what}: grad {name} should be None"
            continue
        assert a is not None, f"{what}: no grad for {name}"
        assert a.dtype == dtype and a.shape == e.shape, f"{what}: grad {name} {a.dtype} {a.shape}"
        err = (a.detach().double().cpu() - e).abs()
        if device == "cpu":  # 1.01: the composition's own float64 rounding on top
            bound = 1.01 * u * e.abs() + (1e-12 if dtype == torch.float64 else 1e-7)
        else:
            bound = (2 * u + 1e-5) * s + f + 2 * u * e.abs() + 1e-7
        bound = bound + slack * s
        worst = (err - bound).max()
        assert worst <= 0, (f"{what}: grad {name} off by {float(err.max()):.3g} "
                            f"(bound exceeded by {float(worst):.3g})")


CASES = {
    # name: make() arguments, loss, extra options
    "packed_bias_gdpo": (dict(P=3, T=5, H=16, V=37, layout="packed"), "gdpo", {}),
    "padded_nobias_dpo": (dict(P=2, T=4, H=8, V=50, layout="padded", bias=False), "dpo", {}),
    "H1_V13_cipo": (dict(P=2, T=3, H=1, V=13, layout="packed"), "cipo", {}),
    "simpo_average": (dict(P=3, T=6, H=4, V=11, layout="packed"), "simpo", {}),
    "ipo_average": (dict(P=2, T=5, H=5, V=9, layout="padded"), "ipo", dict(average=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_matches_pytorch_composition(case, dtype, device):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    shape, loss, extra = CASES[case]
    pb = make(3, dtype=dtype, device=device, **shape)
    out, grads = run_op(pb, loss, **extra, **PARAMS)
    value, L, metrics, want, A = composition(pb, loss, device, **extra, **PARAMS)
    atol, rtol = value_tol(dtype, device)
    close(out.loss, value, atol, rtol, f"{case} loss")
    close(out.logps, L, atol, rtol, f"{case} logps")
    close(torch.stack(list(out.metrics.values())), torch.tensor(metrics, dtype=torch.float64),
          atol, rtol,
          f"{case} metrics")
    check_grads(grads, want, A, pb, device, case)


@pytest.mark.parametrize("reduction", ["sum", "none", "normalizer"])
def test_reductions_and_upstream_gradient(reduction, device):
    """The backward honours the upstream gradient: a scalar times the
    gradients computed in the forward, or (reduction none) a per-pair one."""
    pb = make(5, device=device)
    P = pb["soft"].numel()
    up = (torch.linspace(-1.5, 2.0, P, device=device) if reduction == "none"
          else torch.tensor(0.37, device=device))
    kw, red = dict(PARAMS), reduction
    if reduction == "normalizer":
        kw["normalizer"], red = 7.0, "mean"
    out, grads = run_op(pb, "gropo", reduction=red, upstream=up, **kw)
    kw.pop("normalizer", None)
    value, L, _, want, A = composition(pb, "gropo", device, reduction=reduction,
                                       normalizer=7.0, upstream=up, **kw)
    atol, rtol = value_tol(torch.float32, device)
    close(out.loss, value, atol, rtol, f"{reduction} loss")
    check_grads(grads, want, A, pb, device, reduction)


def test_gradient_accumulation(device):
    """Two micro-batches into the same leaves: .grad is the sum (torch
    accumulates; the operator writes fresh gradients, never into .grad)."""
    pb1, pb2 = make(7, device=device), make(8, device=device)
    pb2 = dict(pb2, weight=pb1["weight"], bias=pb1["bias"])
    w = pb1["weight"].detach().clone().requires_grad_(True)
    b = pb1["bias"].detach().clone().requires_grad_(True)
    w.grad = torch.full_like(w, 0.25)  # already there: added to
    for pb in (pb1, pb2):
        out = gp.fused_linear_preference_loss(pb["hidden"], w, pb["labels"], pb["offsets"], bias=b,
                                              loss_type="gdpo", soft_labels=pb["soft"],
                                              ref_logps=pb["ref"], normalizer=6.0)
        out.loss.backward()
    want_w = torch.full(w.shape, 0.25, dtype=torch.float64)
    want_b = torch.zeros(b.shape, dtype=torch.float64)
    for pb in (pb1, pb2):
        _, _, _, (_, gw, gb), _ = composition(pb, "gdpo", device, reduction="normalizer",
                                              normalizer=6.0)
        want_w, want_b = want_w + gw, want_b + gb
    close(w.grad, want_w, 1e-6, 1e-5, "accumulated weight grad")
    close(b.grad, want_b, 1e-6, 1e-5, "accumulated bias grad")


def test_frozen_weight_and_no_grad(device):
    """Only the gradients asked for: a frozen lm_head gets none, and under
    no_grad (the reference model, evaluation) nothing is differentiated."""
    pb = make(9, device=device)
    x = pb["hidden"].detach().clone().requires_grad_(True)
    out = gp.fused_linear_preference_loss(x, pb["weight"], pb["labels"], pb["offsets"],
                                          bias=pb["bias"], loss_type="gdpo",
                                          soft_labels=pb["soft"])
    out.loss.backward()
    _, _, _, (gx, _, _), A = composition(dict(pb, ref=torch.zeros_like(pb["ref"])), "gdpo",
                                         device)
    check_grads((x.grad, None, None), (gx, None, None), A, pb, device, "frozen weight")
    with torch.no_grad():
        x2, w2, b2 = leaves(pb)
        out2 = gp.fused_linear_preference_loss(x2, w2, pb["labels"], pb["offsets"], bias=b2,
                                               loss_type="gdpo", soft_labels=pb["soft"])
    assert out2.loss.grad_fn is None and torch.equal(out2.loss, out.loss)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_fused_linear_logps_matches_composition(dtype, device):
    """The reference model's pass, and its backward (a gradient through the
    per-sequence log-probs, e.g. an NLL term)."""
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    pb = make(11, H=7, V=29, dtype=dtype, device=device)
    for average in (False, True):
        x, w, b = leaves(pb)
        got = gp.fused_linear_logps(x, w, pb["labels"], pb["offsets"], bias=b,
                                    average_logps=average)
        c = torch.linspace(-1, 1, got.numel(), device=device)
        (got * c).sum().backward()
        xd, wd, bd = (t.detach().cpu().double().requires_grad_(True)
                      for t in (pb["hidden"], pb["weight"], pb["bias"]))
        z = composed_logits(xd, wd, bd, dtype if device == "cuda" else None)
        z.retain_grad()
        want, _ = plain.sequence_logps(z, pb["labels"].cpu(), pb["offsets"].cpu(), average)
        (want * c.cpu().double()).sum().backward()
        atol, rtol = value_tol(dtype, device)
        close(got, want, atol, rtol, f"logps average={average}")
        # The backward takes the forward's float32 lse (float64 for float64):
        # each probability then carries a relative error of 2^-24 |lse|
        # (|lse| < 10 here), i.e. an error in G within 2^-24 * 10 |G| and at
        # the label within as much of |g_t|: slack 1e-5 on the spread.
        slack = 0.0 if dtype == torch.float64 else 1e-5
        check_grads((x.grad, w.grad, b.grad), (xd.grad, wd.grad, bd.grad),
                    magnitude(z.grad, z, pb["labels"].cpu()), pb, device,
                    f"logps average={average}", slack=slack)


def test_autocast_casts_like_f_linear(device):
    """float32 master weights and activations under torch.autocast: the loss
    runs in the autocast dtype (as the lm_head's F.linear would), the
    gradients land in float32 .grad, equal to an explicit cast's."""
    pb = make(15, dtype=torch.float32, device=device)
    dt = torch.bfloat16
    x, w, b = leaves(pb)
    with torch.autocast(device_type=device, dtype=dt):
        out = gp.fused_linear_preference_loss(x, w, pb["labels"], pb["offsets"], bias=b,
                                              loss_type="gdpo", soft_labels=pb["soft"])
    out.loss.backward()
    x2, w2, b2 = leaves(pb)
    want = gp.fused_linear_preference_loss(x2.to(dt), w2.to(dt), pb["labels"], pb["offsets"],
                                           bias=b2.to(dt), loss_type="gdpo",
                                           soft_labels=pb["soft"])
    want.loss.backward()
    assert torch.equal(out.loss, want.loss)
    for a, e in zip((x, w, b), (x2, w2, b2)):
        assert a.grad.dtype == torch.float32 and torch.equal(a.grad, e.grad)


def test_seq_logps_of_the_loss_not_differentiable():
    """The loss's per-sequence log-probs are an output to log (a gradient
    through them needs fused_linear_logps): autograd says so."""
    pb = make(13)
    x, w, b = leaves(pb)
    out = gp.fused_linear_preference_loss(x, w, pb["labels"], pb["offsets"], bias=b,
                                          loss_type="gdpo", soft_labels=pb["soft"])
    assert out.loss.requires_grad and not out.logps.requires_grad


# ---- gradcheck in float64 (CPU: float64 is CPU only).

@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    pb = make(17, P=2, T=3, H=3, V=5, dtype=torch.float64)
    args = leaves(pb)

    def loss(x, w, b):
        return gp.fused_linear_preference_loss(
            x, w, pb["labels"], pb["offsets"], bias=b, loss_type="gdpo", soft_labels=pb["soft"],
            ref_logps=pb["ref"], reduction=reduction, **PARAMS).loss

    def logps(x, w, b):
        return gp.fused_linear_logps(x, w, pb["labels"], pb["offsets"], bias=b,
                                     average_logps=True)

    for f in (loss, logps):
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-6)


# ---- opcheck, torch.compile.

IDENTITY = [1.0, 0.0, 1.0]  # the operators' logit_transform: (scale, softcap, temperature)
CAPPED = [1.5, 4.0, 0.8]


def _linear_args(pb, loss="gdpo", reduction="mean", mask=(True, True, True), chunk=1 << 20,
                 transform=IDENTITY, token_weights=None):
    return (pb["hidden"], pb["weight"], pb["bias"], pb["labels"], pb["offsets"], None, pb["soft"],
            None if loss == "simpo" else pb["ref"], None, token_weights,
            pack_options(type=loss, beta=0.7, alpha=0.8, gamma=0.3, epsilon=0.15, tau=0.3,
                         average_logps=False, reduce=reduction, normalizer=5.0,
                         ignore_index=-100), chunk, list(mask), True, list(transform))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype, device):
    pb = make(19, dtype=dtype, device=device)
    x, w, b = leaves(pb)
    pbg = dict(pb, hidden=x, weight=w, bias=b)
    tw = torch.linspace(0.5, 1.5, pb["labels"].numel(), dtype=torch.float64, device=device)
    nobias = dict(pbg, bias=None, weight=pb["weight"])  # a frozen lm_head without bias
    samples = [
        (ops.linear_pref_loss, _linear_args(pbg)),
        (ops.linear_pref_loss, _linear_args(nobias, "simpo", "sum", mask=(True, False, False))),
        (ops.linear_pref_loss, _linear_args(pbg, "ropo", "none", transform=CAPPED)),
        (ops.linear_pref_loss, _linear_args(pbg, "dpo", transform=CAPPED)),
        (ops.linear_pref_loss_grad, (torch.linspace(-1, 1, 3, device=device),)
         + _linear_args(pb, "gropo", "none", transform=CAPPED)),
        (ops.linear_sequence_logps, (x, w, b, pb["labels"], pb["offsets"], None,
                                     pack_options(average_logps=True), 1 << 20, True, IDENTITY)),
        (ops.linear_sequence_logps, (x, w, None, pb["labels"].int(), pb["offsets"].int(), tw,
                                     pack_options(), 1 << 20, True, CAPPED)),
        (ops.linear_pref_loss, _linear_args(pbg, token_weights=tw)),
        (ops.linear_token_logps, (x, w, b, pb["labels"], -100, True, 1 << 20, True, CAPPED)),
    ]
    _, lse, _, _ = ops.linear_sequence_logps(pb["hidden"], pb["weight"], pb["bias"], pb["labels"],
                                             pb["offsets"], None, pack_options(), 1 << 20, True,
                                             CAPPED)
    samples.append((ops.linear_sequence_logps_grad,
                    (pb["hidden"], pb["weight"], pb["bias"], pb["labels"], pb["offsets"], tw, lse,
                     torch.linspace(-1, 1, 6, device=device), -100, 1 << 20, [True, True, True],
                     True, CAPPED)))
    _, lse, *_ = ops.linear_token_logps(pb["hidden"], pb["weight"], pb["bias"], pb["labels"], -100,
                                       False, 1 << 20, True, CAPPED)
    samples.append((ops.linear_token_logps_grad,
                    (pb["hidden"], pb["weight"], pb["bias"], pb["labels"], lse,
                     torch.linspace(-1, 1, pb["labels"].numel(), device=device), -100, 1 << 20,
                     [True, True, True], True, CAPPED)))
    # The accumulating backward: float32 buffers the call adds into.
    acc_w = torch.zeros(pb["weight"].shape, dtype=torch.float32, device=device)
    acc_b = torch.zeros(pb["bias"].shape, dtype=torch.float32, device=device)
    samples.append((ops.linear_pref_loss_accumulate,
                    (torch.tensor(0.5, device=device),) + _linear_args(pb, mask=(True, False, False))
                    + (None, None, acc_w, acc_b)))
    for op, args in samples:
        torch.library.opcheck(op, args)


def _step(x, w, b, y, off, p, r):
    out = gp.fused_linear_preference_loss(x, w, y, off, bias=b, loss_type="gdpo", beta=0.5,
                                          soft_labels=p, ref_logps=r)
    return out.loss * 2.0, out.logps, out.metrics["rewards/accuracies"]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    pb = make(23, device=device)
    rest = (pb["labels"], pb["offsets"], pb["soft"], pb["ref"])
    assert_compiled_matches_eager(_step, lambda: leaves(pb), lambda xwb: (*xwb, *rest), backend)


# ---- bad inputs: Python exceptions with a clear message.

def test_bad_inputs_raise_clear_errors(device):
    pb = make(29, device=device)

    def call(**kw):
        args = dict(hidden=pb["hidden"], weight=pb["weight"], labels=pb["labels"],
                    offsets=pb["offsets"], bias=pb["bias"], loss_type="gdpo",
                    soft_labels=pb["soft"])
        args.update(kw)
        return gp.fused_linear_preference_loss(args.pop("hidden"), args.pop("weight"),
                                               args.pop("labels"), args.pop("offsets"), **args)

    V, H = pb["weight"].shape
    bad = pb["labels"].clone()
    bad[2] = V
    with pytest.raises(IndexError, match="label out of range"):
        call(labels=bad)
    with pytest.raises(ValueError, match=r"weight must be \[V, H\] with H = 16"):
        call(weight=pb["weight"][:, :5])
    with pytest.raises(ValueError, match=r"bias must be \[V\] = \[37\]"):
        call(bias=pb["bias"][:-1])
    with pytest.raises(TypeError, match="hidden and weight must have one dtype"):
        call(weight=pb["weight"].double())
    with pytest.raises(TypeError, match="bias must have the dtype"):
        call(bias=pb["bias"].double())
    with pytest.raises(ValueError, match="labels must be"):
        call(labels=pb["labels"][:-1])
    with pytest.raises(ValueError, match="invalid offsets"):
        call(offsets=pb["offsets"].flip(0))
    with pytest.raises(ValueError, match="soft label out of range"):
        call(soft_labels=torch.tensor([0.5, 1.5, 0.2], device=device))
    with pytest.raises(ValueError, match="chunk_bytes = 64 holds less than one row"):
        call(chunk_bytes=64)
    with pytest.raises(ValueError, match="hidden states need offsets"):
        call(offsets=None)
    with pytest.raises(ValueError, match="invalid beta"):
        call(beta=-1.0)
    with pytest.raises(TypeError, match="must be float32"):
        call(hidden=pb["hidden"].int(), weight=pb["weight"].int(), bias=None)


def test_bitwise_repeatable(device):
    pb = make(37, device=device)
    results = []
    for _ in range(2):
        out, grads = run_op(pb, "gdpo", **PARAMS)
        results.append((out.loss, out.logps) + grads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU and the CUDA kernels")
def test_cuda_chunk_budget_one_row_and_side_stream():
    """A budget of one row of logits (every row its own chunk, so every pair
    split across chunks) gives the whole-budget result to float32
    accumulation order; on a side stream the same bits as on the default."""
    # float32: with bf16 the one-row budget would round grad_weight to bf16
    # after every row's GEMM (accumulate with beta = 1 into the output).
    pb = make(41, P=4, T=16, H=32, V=1001, dtype=torch.float32, device="cuda")
    whole, g_whole = run_op(pb, "gdpo", **PARAMS)
    row = (1001 + 3) // 4 * 4 * 4  # V rounded up to 16 bytes, float32
    one, g_one = run_op(pb, "gdpo", chunk_bytes=row, **PARAMS)
    close(one.loss, whole.loss, 1e-5, 1e-5, "one-row chunks loss")
    for a, e in zip(g_one, g_whole):  # float32 sums in another order
        close(a, e, 1e-6, 1e-4, "one-row chunks grad")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        again, g_again = run_op(pb, "gdpo", check=False, **PARAMS)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(again.loss, whole.loss)
    for a, e in zip(g_again, g_whole):
        assert torch.equal(a, e)


# ---- host copies of offsets and pairs (the CUDA path's one pass).

def test_host_layout_helper_builds_the_copies():
    """gp.api._host_layout: s * T for [B, T, H] (no device read), and for
    packed offsets and pairs a host copy only where reading them is free
    (host memory) or the caller allowed it (check=True, host_offsets=)."""
    from geopref_torch.api import _host_layout
    off = torch.tensor([0, 3, 3, 7, 9])
    pairs = torch.tensor([[0, 2], [3, 1]])
    cpu, dev = torch.empty(10, 4), torch.empty(10, 4, device="meta")  # meta: not host memory
    h_off, h_pairs = _host_layout(dev, (4, 6), off, None, check=False)
    assert h_off.device.type == "cpu" and h_off.dtype == torch.int64
    assert h_off.tolist() == [0, 6, 12, 18, 24] and h_pairs is None
    # Packed on the device: nothing without check or host_offsets.
    assert _host_layout(dev, None, off, pairs, check=False) == (None, None)
    h_off, h_pairs = _host_layout(dev, None, off.int(), pairs, check=True)
    assert h_off.dtype == torch.int64 and h_off.tolist() == off.tolist()
    assert torch.equal(h_pairs, pairs)
    h_off, h_pairs = _host_layout(dev, None, off, pairs, check=False, host_offsets=[0, 3, 3, 7, 9])
    assert h_off.tolist() == off.tolist() and torch.equal(h_pairs, pairs)
    h_off, h_pairs = _host_layout(dev, None, off, pairs, check=False, host_offsets=off,
                                  host_pairs=[[0, 2], [3, 1]])
    assert torch.equal(h_pairs, pairs)
    # Host memory: always copied (free).
    h_off, h_pairs = _host_layout(cpu, None, off, pairs, check=False)
    assert h_off.tolist() == off.tolist() and torch.equal(h_pairs, pairs)
    with pytest.raises(ValueError, match="host_pairs is given without pairs"):
        _host_layout(cpu, None, off, None, check=False, host_pairs=[[0, 1]])
    with pytest.raises(ValueError, match="must be a CPU tensor or a list"):
        _host_layout(cpu, None, off, None, check=False, host_offsets=off.to("meta"))


def test_padded_layout_matches_packed():
    """[B, T, H] hidden states (host offsets s * T built by the api, checked
    by the CPU kernel) give the packed form's bits."""
    pb = make(43, P=3, T=4, layout="padded")
    B, T = 6, 4
    x, w, b = leaves(pb)
    out = gp.fused_linear_preference_loss(x.reshape(B, T, -1), w, pb["labels"].reshape(B, T),
                                          bias=b, loss_type="gdpo", soft_labels=pb["soft"],
                                          ref_logps=pb["ref"], **PARAMS)
    out.loss.backward()
    want, g_want = run_op(pb, "gdpo", **PARAMS)
    assert torch.equal(out.loss, want.loss) and torch.equal(out.logps, want.logps)
    for a, e in zip((x.grad, w.grad, b.grad), g_want):
        assert torch.equal(a, e)


def test_host_copies_checked_on_cpu():
    """Host copies that differ from offsets / pairs are the library's
    host_layout_mismatch on CPU too (at once); wrong dtype, device or shape a
    clear error; right ones change nothing."""
    pb = make(47)
    off = pb["offsets"]
    pairs = torch.tensor([[0, 3], [1, 4], [2, 5]])

    def call(reduction="mean", **kw):
        return run_op(pb, "gdpo", reduction=reduction, pairs=pairs, **kw, **PARAMS)

    base, g_base = call()
    same, g_same = call(host_offsets=off.tolist(), host_pairs=pairs.clone())
    assert torch.equal(same.loss, base.loss)
    for a, e in zip(g_same, g_base):
        assert torch.equal(a, e)
    shifted = off.clone()
    shifted[1:-1] += 1  # every boundary one row late
    with pytest.raises(ValueError, match=r"host layout mismatch.*host_offsets element 1 is"):
        call(host_offsets=shifted)
    swapped = pairs.flip(1)
    with pytest.raises(ValueError, match=r"host layout mismatch.*host_pairs element 0 is 3"):
        call(host_pairs=swapped)
    # Reduction "none": the backward's linear_pref_loss_grad gets them too.
    none, _ = call("none", host_offsets=off, upstream=torch.linspace(-1, 1, 3))
    assert none.loss.shape == (3,)
    args = _linear_args(pb)
    with pytest.raises(ValueError, match="host layout mismatch"):
        ops.linear_pref_loss_grad(torch.tensor(1.0), *args, shifted, None)
    with pytest.raises(TypeError, match="host_offsets must be int64"):
        ops.linear_pref_loss(*args, off.int(), None)
    with pytest.raises(ValueError, match=r"host_offsets must be \[S \+ 1\]"):
        ops.linear_pref_loss(*args, off[:-1], None)
    with pytest.raises(ValueError, match="host_pairs is given without pairs"):
        ops.linear_pref_loss(*args, off, pairs)
    # CPU: no one-pass path, the query says so.
    assert not gp.fused_linear_one_pass(pb["hidden"], pb["weight"], pb["labels"], off,
                                        loss_type="gdpo")


def test_torch_compile_fullgraph_padded_host_offsets(device):
    """The [B, T, H] form builds its host offsets inside the traced function:
    no graph break, the eager bits."""
    pb = make(53, P=2, T=3, layout="padded", device=device)

    def step(x, w, b, y, p, r):
        out = gp.fused_linear_preference_loss(x.reshape(4, 3, -1), w, y.reshape(4, 3), bias=b,
                                              loss_type="gdpo", soft_labels=p, ref_logps=r)
        return out.loss, out.logps

    rest = (pb["labels"], pb["soft"], pb["ref"])
    assert_compiled_matches_eager(step, lambda: leaves(pb), lambda xwb: (*xwb, *rest),
                                  "aot_eager")


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU and the CUDA kernels")
def test_cuda_one_pass_taken_and_equal_to_two_passes():
    """On CUDA the [B, T, H] layout takes the one pass (host offsets free);
    packed offsets with check=False and no host copy take two; the results
    agree to float32 accumulation order (cuBLAS may pick another kernel for
    another row count); a wrong host copy is reported with check=True."""
    pb = make(59, P=4, T=16, H=32, V=1001, layout="padded", dtype=torch.float32, device="cuda")
    x, w, b = leaves(pb)
    y, off = pb["labels"], pb["offsets"]
    kw = dict(bias=b, loss_type="gdpo", soft_labels=pb["soft"], ref_logps=pb["ref"], **PARAMS)
    row = (1001 + 3) // 4 * 4 * 4
    for chunk in (1 << 20, 2 * 16 * row):  # whole; two sequences (one pair) a chunk
        assert gp.fused_linear_one_pass(x.reshape(8, 16, -1), w, y.reshape(8, 16),
                                        chunk_bytes=chunk, **kw)
        assert not gp.fused_linear_one_pass(x, w, y, off, chunk_bytes=chunk, check=False, **kw)
        assert gp.fused_linear_one_pass(x, w, y, off, chunk_bytes=chunk, check=True, **kw)
        one, g_one = run_op(pb, "gdpo", chunk_bytes=chunk, host_offsets=off.cpu(), **PARAMS)
        two, g_two = run_op(pb, "gdpo", chunk_bytes=chunk, check=False, **PARAMS)
        close(one.loss, two.loss, 1e-6, 1e-5, "one-pass loss")
        close(one.logps, two.logps, 1e-5, 1e-5, "one-pass logps")
        for a, e in zip(g_one, g_two):
            close(a, e, 1e-6, 1e-4, "one-pass grad")
    # Coupled losses (a sorted term) never take it.
    assert not gp.fused_linear_one_pass(x, w, y, off, check=True,
                                        **dict(kw, loss_type="aot"))
    shifted = off.cpu().clone()
    shifted[1:-1] += 1
    with pytest.raises(ValueError, match="host layout mismatch"):
        run_op(pb, "gdpo", host_offsets=shifted, **PARAMS)
