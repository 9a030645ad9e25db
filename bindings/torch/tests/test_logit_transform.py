"""The logit transform (logit_scale, softcap, temperature) through geopref_torch:
every function that reads logits or hidden states takes the three keywords
(one per field of the library's list, checked here against
LOGIT_TRANSFORM_FIELDS), and computes what PyTorch computes on

    z' = softcap * tanh(logit_scale * z / softcap) / temperature   (softcap > 0)
    z' = logit_scale * z / temperature                             (softcap = 0)

in float64 (then log_softmax / gather / the loss of tests/plain.py):
losses, log-probs, entropies, metrics, and gradients with respect to the
logits, hidden states, weight and bias. Per dtype (fp64, fp32, bf16),
gradcheck in float64, invalid values. Runs on CPU; on CUDA too when a GPU is
visible and the CUDA kernels are built.

Logits reach |z| = 6 and weights make |Z| of a few units, so a softcap of 3
or 4 bends most of them (tanh's slope at z/c = 1.5 is 0.18): a transform
applied twice, or its slope forgotten in a backward, is far outside every
tolerance below.
"""
import inspect
import math
import os

import pytest
import torch
import torch.nn.functional as F

import geopref_torch as gp
import plain
from helpers import assert_compiled_matches_eager, random_offsets, random_targets

PARAMS = dict(beta=0.7, alpha=0.8, gamma=0.3, epsilon=0.15, tau=0.3)
# (logit_scale, softcap, temperature): a scale alone (Granite, Cohere), a
# temperature alone (GRPO), a cap alone (Gemma 2: 30 on its logits; 3 here on
# logits of a few units), and all three.
TRANSFORMS = {
    "scale": (2.5, 0.0, 1.0),
    "temperature": (1.0, 0.0, 0.7),
    "softcap": (1.0, 3.0, 1.0),
    "all": (1.5, 4.0, 0.8),
}
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
IDS = ["fp64", "fp32", "bf16"]


def keywords(transform):
    s, c, t = transform
    return dict(logit_scale=s, softcap=c, temperature=t)


def transformed(z, transform):
    """z' in float64, differentiable (autograd gives dz'/dz)."""
    s, c, t = transform
    z = z.double()
    return (c * torch.tanh(s * z / c) if c > 0 else s * z) / t


# Tolerances (atol, rtol). CPU: the kernels are the CPU reference, float64 on
# exactly the inputs given (bf16 widened exactly), so float32 outputs carry
# one rounding (~6e-8 relative) and a gradient one rounding to its dtype
# (2^-24, 2^-8) plus the float32 lse the backward reads (~1e-7 of |g| p,
# times the transform's slope <= logit_scale / temperature <= 2.5 here).
# CUDA: float32 accumulation over V and the rows, a few ulps more; for the
# fused-linear path the chunk's logits are rounded to the dtype before the
# transform (composed_logits below does the same).
def value_tol(dtype, device):
    if dtype == torch.float64:
        return 1e-12, 1e-12
    return (2e-6, 2e-6) if device == "cpu" else (3e-5, 3e-5)


def grad_tol(dtype, device):
    rtol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2.0 ** -8}[dtype]
    atol = 1e-12 if dtype == torch.float64 else 3e-6
    return (atol, rtol) if device == "cpu" else (10 * atol + 3e-5, 2 * rtol + 1e-5)


def close(actual, expected, tol, what):
    atol, rtol = tol
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def make_logits(seed, P=3, T=5, V=11, dtype=torch.float32, device="cpu"):
    """Packed rows: uneven lengths, sequence 1 empty, two trailing rows outside
    every sequence; a quarter of the labels ignored; logits in [-6, 6]."""
    g = torch.Generator().manual_seed(seed)
    offsets, N = random_offsets(g, 2 * P, T, "packed")
    logits = ((torch.rand(N, V, generator=g, dtype=torch.float64) * 2 - 1) * 6).to(dtype)
    labels, soft, ref = random_targets(g, N, V, P)
    return dict(logits=logits.to(device), labels=labels.to(device), offsets=offsets.to(device),
                soft=soft.to(device), ref=ref.to(device))


def case(make, seed, name, dtype, device):
    """One case of a comparison with the float64 composition: skipped for
    float64 on CUDA; else (transform TRANSFORMS[name], the problem
    make(seed, ...), its labels, its offsets, value_tol, grad_tol)."""
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    pb = make(seed, dtype=dtype, device=device)
    return (TRANSFORMS[name], pb, pb["labels"], pb["offsets"], value_tol(dtype, device),
            grad_tol(dtype, device))


# ---- one keyword per field of the list, everywhere.

PUBLIC = (gp.dpo_loss, gp.sequence_logps, gp.token_logps, gp.fused_linear_preference_loss,
          gp.fused_linear_logps)


def test_every_field_of_the_list_is_a_keyword_of_every_function():
    fields = gp.LOGIT_TRANSFORM_FIELDS
    # The library's list (geopref/options.hpp) as the compiled library reports it.
    assert [f.name for f in fields] == ["scale", "softcap", "temperature"]
    assert [f.keyword for f in fields] == ["logit_scale", "softcap", "temperature"]
    assert [f.default for f in fields] == [1.0, 0.0, 1.0]
    for fn in PUBLIC:
        params = inspect.signature(fn).parameters
        for f in fields:
            p = params.get(f.keyword)
            assert p is not None, f"{fn.__name__} has no keyword {f.keyword} (field {f.name})"
            assert p.kind == inspect.Parameter.KEYWORD_ONLY, (fn.__name__, f.keyword)
            assert p.default == f.default, (fn.__name__, f.keyword, p.default)
    # fused_linear_one_pass takes fused_linear_preference_loss's keywords as **kwargs.
    x, w = torch.zeros(4, 2), torch.zeros(3, 2)
    y, off = torch.zeros(4, dtype=torch.long), torch.tensor([0, 2, 4])
    for f in fields:
        assert gp.fused_linear_one_pass(x, w, y, off, **{f.keyword: f.default}) is False


def test_every_keyword_is_documented():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    for f in gp.LOGIT_TRANSFORM_FIELDS:
        assert f"`{f.keyword}`" in readme, f"bindings/torch/README.md does not document {f.keyword}"


# ---- against the float64 composition.

@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dpo_loss(name, dtype, reduction, device):
    tr, pb, _, _, vt, gt = case(make_logits, 3, name, dtype, device)
    up = torch.linspace(-1.0, 2.0, 3, device=device) if reduction == "none" else None
    z = pb["logits"].clone().requires_grad_(True)
    out = gp.dpo_loss(z, pb["labels"], pb["offsets"], loss_type="gdpo", soft_labels=pb["soft"],
                      ref_logps=pb["ref"], reduction=reduction, **PARAMS, **keywords(tr))
    (out.loss * (1.0 if up is None else up)).sum().backward()

    zd = pb["logits"].detach().cpu().double().requires_grad_(True)
    value, L, metrics = plain.pref_loss(transformed(zd, tr), pb["labels"].cpu(),
                                        pb["offsets"].cpu(), "gdpo", soft=pb["soft"].cpu(),
                                        ref=pb["ref"].cpu(), reduction=reduction, **PARAMS)
    (value * (1.0 if up is None else up.cpu().double())).sum().backward()
    close(out.loss, value, vt, "loss")
    close(out.logps, L, vt, "logps")
    close(torch.stack(list(out.metrics.values())), torch.tensor(metrics, dtype=torch.float64), vt, "metrics")
    assert z.grad.dtype == dtype
    close(z.grad, zd.grad, gt, "grad logits")
    # The transform matters here: the untransformed loss is far away.
    plain_value, _, _ = plain.pref_loss(zd.detach(), pb["labels"].cpu(), pb["offsets"].cpu(),
                                        "gdpo", soft=pb["soft"].cpu(), ref=pb["ref"].cpu(),
                                        reduction=reduction, **PARAMS)
    assert (plain_value - value.detach()).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_sequence_and_token_logps(name, dtype, device):
    tr, pb, y, off, vt, gt = case(make_logits, 5, name, dtype, device)
    zd = pb["logits"].detach().cpu().double().requires_grad_(True)
    zt = transformed(zd, tr)

    for average in (False, True):
        z = pb["logits"].clone().requires_grad_(True)
        seq = gp.sequence_logps(z, y, off, average_logps=average, **keywords(tr))
        w = torch.linspace(-1.0, 1.5, seq.numel(), device=device)
        (seq * w).sum().backward()
        want, _ = plain.sequence_logps(zt, y.cpu(), off.cpu(), average)
        zd.grad = None
        (want * w.cpu().double()).sum().backward(retain_graph=True)
        close(seq, want, vt, f"sequence_logps average={average}")
        close(z.grad, zd.grad, gt, f"sequence_logps grad average={average}")

    z = pb["logits"].clone().requires_grad_(True)
    logps, ent = gp.token_logps(z, y, return_entropy=True, **keywords(tr))
    w = torch.linspace(-2.0, 3.0, y.numel(), device=device)
    (logps * w).sum().backward()
    scored = y.cpu() != -100
    logp_all = torch.log_softmax(zt, dim=-1)
    want = logp_all.gather(1, torch.where(scored, y.cpu(), 0)[:, None]).squeeze(1)
    want = torch.where(scored, want, torch.zeros_like(want))
    want_ent = -(logp_all.exp() * logp_all).sum(-1)
    want_ent = torch.where(scored, want_ent, torch.zeros_like(want_ent))
    zd.grad = None
    (want * w.cpu().double()).sum().backward()
    close(logps, want, vt, "token_logps")
    close(ent, want_ent, (10 * vt[0], 10 * vt[1]), "entropy")
    close(z.grad, zd.grad, gt, "token_logps grad")
    assert (z.grad[y == -100] == 0).all()


# ---- fused linear: hidden states, weight and bias.

def make_linear(seed, P=2, T=4, H=6, V=13, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    pb = make_logits(seed, P=P, T=T, V=V, dtype=torch.float64)
    N = pb["labels"].numel()
    # Dyadic inputs (multiples of 1/16): every product and sum of the GEMMs is
    # exact in float32, so the logits do not depend on the order of summation.
    def dyadic(*shape, scale):
        return (torch.randint(-16, 17, shape, generator=g).double() / 16 * scale).to(dtype)
    pb.update(hidden=dyadic(N, H, scale=1.0), weight=dyadic(V, H, scale=1.0),
              bias=dyadic(V, scale=1.0))
    return {k: v.to(device) for k, v in pb.items() if k != "logits"}


def composed_logits(x, w, b, round_to):
    """F.linear in float64; on CUDA rounded once to the dtype as the chunk is
    (straight-through for autograd), before the transform."""
    z = F.linear(x, w, b)
    if round_to is not None:
        z = z + (z.detach().to(round_to).double() - z.detach())
    return z


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_fused_linear(name, dtype, device):
    tr, pb, y, off, vt, gt = case(make_linear, 7, name, dtype, device)

    def leaves():
        return tuple(pb[k].detach().clone().requires_grad_(True)
                     for k in ("hidden", "weight", "bias"))

    def composition():
        xd, wd, bd = (pb[k].detach().cpu().double().requires_grad_(True)
                      for k in ("hidden", "weight", "bias"))
        zt = transformed(composed_logits(xd, wd, bd, dtype if device == "cuda" else None), tr)
        return (xd, wd, bd), zt

    for reduction in ("mean", "none"):
        x, w, b = leaves()
        up = torch.linspace(-1.0, 2.0, 2, device=device) if reduction == "none" else None
        out = gp.fused_linear_preference_loss(x, w, y, off, bias=b, loss_type="gdpo",
                                              soft_labels=pb["soft"], ref_logps=pb["ref"],
                                              reduction=reduction, **PARAMS, **keywords(tr))
        (out.loss * (1.0 if up is None else up)).sum().backward()
        leaves_d, zt = composition()
        value, L, metrics = plain.pref_loss(zt, y.cpu(), off.cpu(), "gdpo",
                                            soft=pb["soft"].cpu(), ref=pb["ref"].cpu(),
                                            reduction=reduction, **PARAMS)
        (value * (1.0 if up is None else up.cpu().double())).sum().backward()
        what = f"fused_linear_preference_loss {reduction}"
        close(out.loss, value, vt, what)
        close(out.logps, L, vt, what + " logps")
        close(torch.stack(list(out.metrics.values())), torch.tensor(metrics, dtype=torch.float64), vt, what + " metrics")
        for n, a, e in zip(("hidden", "weight", "bias"), (x, w, b), leaves_d):
            assert a.grad.dtype == dtype
            close(a.grad, e.grad, gt, f"{what} grad {n}")

    x, w, b = leaves()
    seq = gp.fused_linear_logps(x, w, y, off, bias=b, **keywords(tr))
    wts = torch.linspace(-1.0, 1.5, seq.numel(), device=device)
    (seq * wts).sum().backward()
    leaves_d, zt = composition()
    want, _ = plain.sequence_logps(zt, y.cpu(), off.cpu(), False)
    (want * wts.cpu().double()).sum().backward()
    close(seq, want, vt, "fused_linear_logps")
    for n, a, e in zip(("hidden", "weight", "bias"), (x, w, b), leaves_d):
        close(a.grad, e.grad, gt, f"fused_linear_logps grad {n}")


# ---- gradcheck in float64 (CPU: float64 is CPU only).

@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_gradcheck_float64(name):
    kw = keywords(TRANSFORMS[name])
    pb = make_logits(11, P=2, T=3, V=5, dtype=torch.float64)
    y, off = pb["labels"], pb["offsets"]
    z = pb["logits"].detach().clone().requires_grad_(True)
    check = dict(eps=1e-6, atol=1e-7, rtol=1e-6)
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda t: gp.dpo_loss(t, y, off, loss_type="gdpo", soft_labels=pb["soft"],
                                  ref_logps=pb["ref"], reduction=reduction, **PARAMS,
                                  **kw).loss, (z,), **check)
    assert torch.autograd.gradcheck(
        lambda t: gp.sequence_logps(t, y, off, average_logps=True, **kw), (z,), **check)
    assert torch.autograd.gradcheck(lambda t: gp.token_logps(t, y, **kw), (z,), **check)

    lb = make_linear(13, P=2, T=3, H=3, V=5, dtype=torch.float64)
    args = tuple(lb[k].detach().clone().requires_grad_(True) for k in ("hidden", "weight", "bias"))
    ly, loff = lb["labels"], lb["offsets"]
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda x, w, b: gp.fused_linear_preference_loss(
                x, w, ly, loff, bias=b, loss_type="gdpo", soft_labels=lb["soft"],
                ref_logps=lb["ref"], reduction=reduction, **PARAMS, **kw).loss, args, **check)
    assert torch.autograd.gradcheck(
        lambda x, w, b: gp.fused_linear_logps(x, w, ly, loff, bias=b, **kw), args, **check)


# ---- torch.compile: the transform crosses the fake kernels and the traced
# backward with no graph break, and gives the eager numbers bitwise.

def _compiled_step(z, y, off, p, r, x, w, b):
    kw = keywords(TRANSFORMS["all"])
    out = gp.dpo_loss(z, y, off, loss_type="gdpo", beta=0.5, soft_labels=p, ref_logps=r, **kw)
    tok = gp.token_logps(z, y, **kw)
    lin = gp.fused_linear_preference_loss(x, w, y, off, bias=b, loss_type="gdpo", beta=0.5,
                                          soft_labels=p, ref_logps=r, **kw)
    return out.loss + tok.sum() + lin.loss, out.logps


def test_torch_compile_fullgraph(device):
    pb = make_logits(29, device=device)
    # The same seed and shapes: the same labels, offsets, soft labels, references.
    lb = make_linear(29, P=3, T=5, H=6, V=pb["logits"].shape[1], device=device)
    assert torch.equal(lb["labels"], pb["labels"]) and torch.equal(lb["offsets"], pb["offsets"])
    y, off, p, r = pb["labels"], pb["offsets"], pb["soft"], pb["ref"]

    def leaves():
        return (pb["logits"].clone().requires_grad_(True),
                *(lb[k].detach().clone().requires_grad_(True) for k in ("hidden", "weight", "bias")))

    assert_compiled_matches_eager(_compiled_step, leaves,
                                  lambda zxwb: (zxwb[0], y, off, p, r, *zxwb[1:]), "aot_eager")


# ---- invalid values: ValueError with the library's message and the values.

BAD = [
    (dict(logit_scale=0.0), "logit_scale=0"),
    (dict(logit_scale=-1.0), "logit_scale=-1"),
    (dict(logit_scale=math.nan), "logit_scale=nan"),
    (dict(softcap=-0.5), "softcap=-0.5"),
    (dict(softcap=math.inf), "softcap=inf"),
    (dict(temperature=0.0), "temperature=0"),
    (dict(temperature=-math.inf), "temperature=-inf"),
]


@pytest.mark.parametrize("bad,shown", BAD, ids=[s for _, s in BAD])
def test_invalid_values_raise(bad, shown, device):
    pb = make_logits(17, device=device)
    lb = make_linear(19, device=device)
    z, y, off = pb["logits"], pb["labels"], pb["offsets"]
    calls = {
        "pref_loss": lambda: gp.dpo_loss(z, y, off, soft_labels=pb["soft"], **bad),
        "sequence_logps": lambda: gp.sequence_logps(z, y, off, **bad),
        "token_logps": lambda: gp.token_logps(z, y, **bad),
        "linear_pref_loss": lambda: gp.fused_linear_preference_loss(
            lb["hidden"], lb["weight"], lb["labels"], lb["offsets"], bias=lb["bias"], **bad),
        "linear_sequence_logps": lambda: gp.fused_linear_logps(
            lb["hidden"], lb["weight"], lb["labels"], lb["offsets"], **bad),
    }
    for op, call in calls.items():
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert f"geopref.{op}: invalid logit transform" in msg, msg
        assert shown in msg, msg


def test_operator_checks_the_list_length():
    pb = make_logits(23)
    with pytest.raises(ValueError, match="logit_transform must hold 3 values"):
        torch.ops.geopref.token_logps(pb["logits"], pb["labels"], -100, False, True, [1.0, 0.0])
