"""geopref_torch against plain PyTorch, and as a well-behaved custom operator:
agreement of every loss (values, per-sequence log-probs, metrics, gradients)
per logits dtype, gradcheck in float64, torch.library.opcheck on every
operator, torch.compile(fullgraph=True), bad inputs raising Python errors.
Runs on CPU; on CUDA too when a GPU is visible and the CUDA kernels are built.
"""
import math

import pytest
import torch

import geopref_torch as gp
from geopref_torch import pack_options
from conftest import DEVICES
from helpers import assert_compiled_matches_eager, random_offsets, random_targets
import plain

ops = torch.ops.geopref
KNOWN = plain.MARGIN_LOSSES
# Parameters that exercise every loss's parameters, each inside its range.
PARAMS = dict(beta=0.7, alpha=0.8, gamma=0.3, epsilon=0.15, tau=0.3)


def make_problem(seed, P=3, T=6, V=11, layout="padded", dtype=torch.float32, device="cpu",
                 scale=2.0):
    """Random logits, labels (some -100), offsets, soft labels, reference log-probs.
    layout "padded": [2P, T] rows, offsets = s * T. "packed": uneven lengths,
    one empty sequence and two trailing rows outside every sequence."""
    g = torch.Generator().manual_seed(seed)
    offsets, N = random_offsets(g, 2 * P, T, layout)
    logits = ((torch.rand(N, V, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)
    labels, soft, ref = random_targets(g, N, V, P)
    return dict(logits=logits.to(device), labels=labels.to(device), offsets=offsets.to(device),
                soft=soft.to(device), ref=ref.to(device))


# Per-dtype tolerances. The CPU kernels are the CPU reference: double
# arithmetic on exactly the logits given, outputs rounded to float32 (loss,
# log-probs) or to the logits dtype (gradient): so the float32 outputs carry
# ~1e-7 relative error and a bf16/fp16 gradient one rounding (2^-8 / 2^-11)
# plus the float32 lse it is computed from. CUDA accumulates in float32 over
# V = 11: a few ulps more.
TOL = {
    torch.float64: dict(value=(1e-12, 1e-12), grad=(1e-12, 1e-12)),
    torch.float32: dict(value=(2e-6, 2e-6), grad=(1e-6, 1e-5)),
    torch.bfloat16: dict(value=(2e-6, 2e-6), grad=(1e-5, 2 ** -8)),
    torch.float16: dict(value=(2e-6, 2e-6), grad=(1e-6, 2 ** -10)),
}


def close(actual, expected, tol, what):
    atol, rtol = tol
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, what
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def run_both(pb, loss, dtype, device, reduction="mean", average=False, upstream=None, **extra):
    """The operator and the plain formulation on the same inputs; returns both
    (loss, logps, metrics, grad)."""
    kw = dict(PARAMS)
    kw.update(extra)
    z = pb["logits"].detach().clone().requires_grad_(True)
    soft, ref = pb["soft"], pb["ref"]
    if loss == "simpo":
        ref = None
    out = gp.dpo_loss(z, pb["labels"], pb["offsets"], loss_type=loss, soft_labels=soft,
                      ref_logps=ref, reduction=reduction, average_logps=average, **kw)
    up = upstream if upstream is not None else torch.ones_like(out.loss)
    (out.loss * up.to(out.loss.dtype)).sum().backward()

    zp = pb["logits"].detach().cpu().double().requires_grad_(True)
    value, L, metrics = plain.pref_loss(
        zp, pb["labels"].cpu(), pb["offsets"].cpu(), loss, soft=soft.cpu(),
        ref=None if ref is None else ref.cpu(), average=average, reduction=reduction, **kw)
    (value * up.cpu().double()).sum().backward()
    return (out, z.grad), (value, L, metrics, zp.grad)


@pytest.mark.parametrize("loss", sorted(KNOWN))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
def test_every_loss_matches_plain_pytorch(loss, dtype, device):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 logits are CPU only")
    tol = TOL[dtype]
    if device == "cuda":  # float32 accumulation on the GPU
        tol = dict(value=(1e-5, 1e-5), grad=(tol["grad"][0] + 1e-6, max(tol["grad"][1], 1e-4)))
    for seed, layout in ((1, "padded"), (2, "packed")):
        pb = make_problem(seed, layout=layout, dtype=dtype, device=device)
        (out, grad), (value, L, metrics, pgrad) = run_both(pb, loss, dtype, device)
        close(out.loss, value, tol["value"], f"{loss} loss")
        close(out.logps, L, tol["value"], f"{loss} logps")
        got = torch.stack(list(out.metrics.values()))
        close(got, torch.tensor(metrics, dtype=torch.float64), tol["value"], f"{loss} metrics")
        assert grad.dtype == dtype
        close(grad, pgrad, tol["grad"], f"{loss} grad")


@pytest.mark.parametrize("reduction", ["sum", "none", "normalizer"])
@pytest.mark.parametrize("loss", ["gdpo", "cipo", "simpo"])
def test_reductions_average_and_upstream_gradients(reduction, loss, device):
    pb = make_problem(5, layout="packed", device=device)
    P = pb["soft"].numel()
    up = torch.linspace(-1.5, 2.0, P, device=device) if reduction == "none" else \
        torch.tensor(0.75, device=device)
    extra = {}
    if reduction == "normalizer":
        reduction, extra = "mean", dict(normalizer=7.0)
    (out, grad), (value, L, _, pgrad) = run_both(
        pb, loss, torch.float32, device, reduction=reduction, average=True, upstream=up, **extra)
    if extra:  # plain: the same sum divided by the caller's count
        value = value * P / 7.0
        pgrad = pgrad * P / 7.0
    tol = (1e-5, 1e-5) if device == "cuda" else TOL[torch.float32]["value"]
    close(out.loss, value, tol, "loss")
    close(grad, pgrad, (1e-5, 1e-4), "grad")


def test_trl_names_and_label_smoothing():
    pb = make_problem(3)
    z, y, off = pb["logits"], pb["labels"], pb["offsets"]
    ls = 0.2
    # sigmoid + label_smoothing is cDPO: geopref's cdpo with p = 1 - ls.
    a = gp.dpo_loss(z, y, off, loss_type="sigmoid", beta=0.5, label_smoothing=ls).loss
    v, _, _ = plain.pref_loss(z, y, off, "cdpo", beta=0.5, soft=torch.full((3,), 1 - ls))
    close(a, v, (1e-6, 1e-6), "sigmoid + label_smoothing")
    # robust / exo_pair take label_smoothing as epsilon; exo_pair's default is 1e-3.
    a = gp.dpo_loss(z, y, off, loss_type="robust", beta=0.5, label_smoothing=ls).loss
    v, _, _ = plain.pref_loss(z, y, off, "robust", beta=0.5, epsilon=ls)
    close(a, v, (1e-6, 1e-6), "robust")
    a = gp.dpo_loss(z, y, off, loss_type="exo_pair", beta=0.5).loss
    v, _, _ = plain.pref_loss(z, y, off, "exo_pair", beta=0.5, epsilon=1e-3)
    close(a, v, (1e-6, 1e-6), "exo_pair default epsilon")
    # TRL's ipo averages the log-probs.
    a = gp.dpo_loss(z, y, off, loss_type="ipo", beta=0.5).loss
    v, _, _ = plain.pref_loss(z, y, off, "ipo", beta=0.5, average=True)
    close(a, v, (1e-6, 1e-6), "ipo averages")
    # [B, T, V] logits: offsets implied.
    T = 6
    a = gp.dpo_loss(z.reshape(6, T, -1), y.reshape(6, T), loss_type="sigmoid").loss
    v, _, _ = plain.pref_loss(z, y, off, "dpo")
    close(a, v, (1e-6, 1e-6), "[B, T, V]")
    assert set(KNOWN) <= set(gp.loss_types())


def test_seq_logps_output_is_differentiable():
    """A gradient through the returned log-probs (e.g. an NLL term on the
    chosen responses, TRL's rpo_alpha) adds to the loss's."""
    pb = make_problem(7, layout="packed")
    for average in (False, True):
        z = pb["logits"].double().requires_grad_(True)
        out = gp.dpo_loss(z, pb["labels"], pb["offsets"], loss_type="gdpo",
                          soft_labels=pb["soft"], average_logps=average)
        (out.loss - 0.3 * out.logps[:3].sum()).backward()
        zp = pb["logits"].double().requires_grad_(True)
        v, L, _ = plain.pref_loss(zp, pb["labels"], pb["offsets"], "gdpo", soft=pb["soft"],
                                  average=average)
        (v - 0.3 * L[:3].sum()).backward()
        close(z.grad, zp.grad, (1e-12, 1e-10), f"average={average}")


def test_sequence_logps_matches_plain(device):
    pb = make_problem(11, layout="packed", device=device)
    for average in (False, True):
        z = pb["logits"].detach().clone().requires_grad_(True)
        got = gp.sequence_logps(z, pb["labels"], pb["offsets"], average_logps=average)
        w = torch.linspace(-1, 1, got.numel(), device=device)
        (got * w).sum().backward()
        zp = pb["logits"].detach().cpu().double().requires_grad_(True)
        want, _ = plain.sequence_logps(zp, pb["labels"].cpu(), pb["offsets"].cpu(), average)
        (want * w.cpu().double()).sum().backward()
        close(got, want, (1e-5, 1e-5), "logps")
        close(z.grad, zp.grad, (1e-6, 1e-5), "grad")


# ---- gradcheck in float64 (CPU kernels: float64 logits are CPU only).

@pytest.mark.parametrize("loss", gp.loss_types())
def test_gradcheck_every_library_loss(loss):
    """Every loss the library knows, including ones added after this test was
    written (no plain formula needed): the backward against finite
    differences of the forward."""
    pb = make_problem(13, P=2, T=3, V=5, layout="packed", dtype=torch.float64)
    z = pb["logits"].detach().clone().requires_grad_(True)
    # Reference-free losses (simpo, orpo, sft, ...) refuse reference log-probs:
    # the library says which, so a loss added later needs no entry here.
    ref = pb["ref"]
    try:
        gp.dpo_loss(z.detach(), pb["labels"], pb["offsets"], loss_type=loss,
                    soft_labels=pb["soft"], ref_logps=ref, **PARAMS)
    except ValueError as e:
        assert "reference not allowed" in str(e)
        ref = None
    for reduction in ("mean", "none"):
        def f(x):
            out = gp.dpo_loss(x, pb["labels"], pb["offsets"], loss_type=loss,
                              soft_labels=pb["soft"], ref_logps=ref, reduction=reduction,
                              **PARAMS)
            return out.loss, out.logps
        assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_sequence_logps():
    pb = make_problem(17, P=2, T=3, V=5, layout="packed", dtype=torch.float64)
    z = pb["logits"].detach().clone().requires_grad_(True)
    for average in (False, True):
        assert torch.autograd.gradcheck(
            lambda x: gp.sequence_logps(x, pb["labels"], pb["offsets"], average_logps=average),
            (z,), eps=1e-6, atol=1e-7, rtol=1e-6)


# ---- torch.library.opcheck on every operator.

IDENTITY = [1.0, 0.0, 1.0]  # the operators' logit_transform: (scale, softcap, temperature)
CAPPED = [1.5, 4.0, 0.8]


def _token_weights(pb):
    n = pb["labels"].numel()
    return torch.linspace(0.5, 1.5, n, dtype=torch.float64, device=pb["labels"].device)


def _loss_args(pb, loss="gdpo", reduction="mean", pairs=None, weights=True, transform=IDENTITY,
               token_weights=False):
    P = pb["soft"].numel()
    w = torch.linspace(0.0, 2.0, P, dtype=torch.float64, device=pb["logits"].device) \
        if weights else None
    return (pb["logits"], pb["labels"], pb["offsets"], pairs, pb["soft"],
            None if loss == "simpo" else pb["ref"], w,
            _token_weights(pb) if token_weights else None,
            pack_options(type=loss, beta=0.7, alpha=0.8, gamma=0.3, epsilon=0.15, tau=0.3,
                         average_logps=False, reduce=reduction, normalizer=5.0,
                         ignore_index=-100), True, list(transform))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_every_operator(dtype, device):
    pb = make_problem(19, layout="packed", dtype=dtype, device=device)
    pb["logits"].requires_grad_(True)
    pairs = torch.tensor([[0, 4], [2, 1], [5, 3]], device=device)
    samples = [
        (ops.pref_loss, _loss_args(pb)),
        (ops.pref_loss, _loss_args(pb, "simpo", "sum", pairs=pairs, weights=False)),
        (ops.pref_loss, _loss_args(pb, "ropo", "none", transform=CAPPED)),
        (ops.pref_loss, _loss_args(pb, "ipo", "normalizer", pairs=pairs)),
        # The two backward operators are not differentiable themselves (they
        # raise on a double backward): checked with inputs that need no grad.
        (ops.pref_loss_grad_seq, (torch.linspace(-1, 1, 3, device=device),)
         + _loss_args(dict(pb, logits=pb["logits"].detach()), "gropo", "none", transform=CAPPED)),
        (ops.sequence_logps, (pb["logits"], pb["labels"], pb["offsets"], None,
                              pack_options(average_logps=True), True, IDENTITY)),
        (ops.sequence_logps, (pb["logits"], pb["labels"].int(), pb["offsets"].int(),
                              _token_weights(pb), pack_options(), True, CAPPED)),
    ]
    _, lse, _, _ = ops.sequence_logps(pb["logits"].detach(), pb["labels"], pb["offsets"], None,
                                      pack_options(), True, CAPPED)
    samples.append((ops.logits_grad, (pb["logits"].detach(), pb["labels"], pb["offsets"],
                                      _token_weights(pb), lse,
                                      torch.linspace(-1, 1, 6, device=device), -100, True,
                                      CAPPED)))
    for op, args in samples:
        torch.library.opcheck(op, args)


# ---- torch.compile: no graph break, same numbers.

def _step(z, y, off, p, r):
    out = gp.dpo_loss(z, y, off, loss_type="gdpo", beta=0.5, soft_labels=p, ref_logps=r)
    return out.loss * 2.0, out.logps, out.metrics["rewards/accuracies"]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    pb = make_problem(23, device=device)
    args = (pb["labels"], pb["offsets"], pb["soft"], pb["ref"])
    assert_compiled_matches_eager(_step, lambda: (pb["logits"].clone().requires_grad_(True),),
                                  lambda z: (*z, *args), backend)


# ---- bad inputs: Python exceptions with geopref's message, nothing computed.

def test_bad_inputs_raise_clear_errors(device):
    pb = make_problem(29, device=device)
    z, y, off, p = pb["logits"], pb["labels"], pb["offsets"], pb["soft"]

    def call(**kw):
        args = dict(logits=z, labels=y, offsets=off, loss_type="gdpo", soft_labels=p)
        args.update(kw)
        return gp.dpo_loss(args.pop("logits"), args.pop("labels"), args.pop("offsets"), **args)

    bad_label = y.clone()
    bad_label[3] = z.shape[1]
    with pytest.raises(IndexError, match="label out of range"):
        call(labels=bad_label)
    with pytest.raises(ValueError, match="soft label out of range"):
        call(soft_labels=torch.tensor([0.5, 1.5, 0.2], device=device))
    with pytest.raises(ValueError, match="soft label out of range"):
        call(soft_labels=torch.tensor([0.5, math.nan, 0.2], device=device))
    with pytest.raises(ValueError, match="unknown loss_type"):
        call(loss_type="dpo_typo")
    with pytest.raises(ValueError, match="invalid beta"):
        call(beta=0.0)
    with pytest.raises(ValueError, match="invalid epsilon"):
        call(loss_type="robust", epsilon=0.5)
    with pytest.raises(ValueError, match="invalid offsets"):
        call(offsets=off.flip(0))
    with pytest.raises(ValueError, match="pair count mismatch"):
        call(offsets=off[:-1], soft_labels=None)
    with pytest.raises(IndexError, match="pair index out of range"):
        call(pairs=torch.tensor([[0, 1], [2, 9], [3, 4]], device=device))
    with pytest.raises(ValueError, match="reference not allowed"):
        call(loss_type="simpo", ref_logps=pb["ref"])
    with pytest.raises(ValueError, match="invalid weight"):
        call(weights=torch.tensor([1.0, -1.0, 1.0], device=device))
    with pytest.raises(ValueError, match=r"soft_labels must have shape \[3\]"):
        call(soft_labels=p[:2])
    with pytest.raises(ValueError, match="labels must be"):
        call(labels=y[:-1])
    with pytest.raises(TypeError, match="logits must be"):
        call(logits=z.to(torch.int32))
    with pytest.raises(TypeError, match="labels must be int32 or int64"):
        call(labels=y.float())
    with pytest.raises(ValueError, match="reduction must be"):
        call(reduction="avg")


def test_error_types_from_the_operator_itself():
    """The raw operator (no Python wrapper in between) raises the same types."""
    pb = make_problem(31)
    args = list(_loss_args(pb))
    args[8] = pack_options(type=len(gp.loss_types()))  # one past the last loss
    with pytest.raises(ValueError, match="options field type must be an index"):
        ops.pref_loss(*args)
    with pytest.raises(ValueError, match="unknown loss_type 'nope'"):
        gp.dpo_loss(pb["logits"], pb["labels"], pb["offsets"], loss_type="nope")
    args = list(_loss_args(pb))
    bad = pb["labels"].clone()
    bad[0] = -5
    args[1] = bad
    with pytest.raises(IndexError, match="geopref.pref_loss: label out of range"):
        ops.pref_loss(*args)


# ---- determinism and streams.

def test_bitwise_repeatable(device):
    pb = make_problem(37, layout="packed", device=device)
    results = []
    for _ in range(2):
        z = pb["logits"].clone().requires_grad_(True)
        out = gp.dpo_loss(z, pb["labels"], pb["offsets"], loss_type="gropo", soft_labels=pb["soft"],
                          ref_logps=pb["ref"], **PARAMS)
        out.loss.backward()
        results.append((out.loss, out.logps, torch.stack(list(out.metrics.values())), z.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU and the CUDA kernels")
def test_cuda_runs_on_the_current_stream():
    """On a side stream the result is the same bits as on the default stream
    (the kernels, the workspace and the backward all follow the current stream)."""
    pb = make_problem(41, P=4, T=64, V=1000, device="cuda", dtype=torch.bfloat16)
    want_z = pb["logits"].clone().requires_grad_(True)
    want = gp.dpo_loss(want_z, pb["labels"], pb["offsets"], loss_type="gdpo",
                       soft_labels=pb["soft"], ref_logps=pb["ref"])
    want.loss.backward()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        z = pb["logits"].clone().requires_grad_(True)
        got = gp.dpo_loss(z, pb["labels"], pb["offsets"], loss_type="gdpo",
                          soft_labels=pb["soft"], ref_logps=pb["ref"], check=False)
        got.loss.backward()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(got.loss, want.loss) and torch.equal(z.grad, want_z.grad)
