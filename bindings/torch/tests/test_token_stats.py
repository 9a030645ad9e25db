"""TRL 1.x's per-token statistics through token_logps / linear_token_logps
(outputs=...): the log-prob, the entropy, log sum_v p_v^2, the mean
transformed logit and is_top1, and the backward with upstreams on the
log-prob AND the entropy, against float64 PyTorch (torch.log_softmax on the
same values), torch.autograd.gradcheck in double, and TRL 1.16.0's own
ChunkedLogProbFunction (its torch fold, which runs on CPU) where installed.

Tolerances, per dtype. The CPU kernels run the library's CPU reference in
double on the inputs as given, so against a float64 PyTorch computation on
the same (already rounded) values the differences are
  * float64: only the order of operations, ~1e-15: rtol and atol 1e-12 (of
    the largest element, for gradients);
  * the outputs' rounding to float32: 2^-24 relative, so rtol 1e-6 (and
    atol 1e-6 for values near 0 that come out of a sum of terms of size ~1:
    log-probs and entropies of a few nats);
  * the gradient's rounding to the input dtype: half an ulp, 2^-24 (float32),
    2^-8 (bfloat16), 2^-11 (float16) relative; rtol twice that. float16
    gradients below 2^-14 are subnormal: atol 2^-24 covers their absolute
    rounding. An element of a linear gradient (hidden, weight) is a sum of
    products rounded once, so the same relative bound holds against the
    largest element (atol = rtol * max |g|);
  * the backward reads the forward's lse rounded to float32 (the operators'
    output dtype): every p_v = exp(z'_v - lse_t) carries a relative error of
    |lse_t| 2^-24 (|lse| < 10 here), and a gradient element an absolute one
    of that times its terms' size (|g| + |e| |z'_v - E|, < 5 here): with
    float32 inputs, where the rounding of the gradient itself is smaller,
    atol = 64 * 2^-24 of the largest element bounds it.
On CUDA (where a GPU is present; these tolerances were set without one) the
kernels work in float32: log-probs and entropies carry errors of about
V * 2^-24 * |z'| (here < 1e-5), gradients about 1e-5 of their largest element.
"""
import math

import pytest
import torch

import geopref_torch as gp

ops = torch.ops.geopref
STATS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
CAPPED = dict(logit_scale=1.5, softcap=4.0, temperature=0.8)
IDENTITY = dict(logit_scale=1.0, softcap=0.0, temperature=1.0)

# Half an ulp of each dtype, relative (the gradient's one rounding on CPU).
HALF_ULP = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8,
            torch.float16: 2.0 ** -11}


def _tols(dtype, device):
    """(outputs' tolerances, gradients' rtol, gradients' atol as a fraction of
    the largest element, gradients' atol floor)."""
    if device == "cuda":
        return dict(rtol=1e-5, atol=2e-5), max(2e-5, 2 * HALF_ULP[dtype]), 1e-5, 0.0
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12), 1e-12, 1e-12, 0.0
    rtol = 2 * HALF_ULP[dtype]
    return (dict(rtol=1e-6, atol=1e-6), rtol, max(rtol, 64 * 2.0 ** -24),
            2.0 ** -24 if dtype == torch.float16 else 0.0)


def transformed(z, logit_scale, softcap, temperature):
    """The logit transform z' = c tanh(s z / c) / T (s z / T for c = 0), float64."""
    z = z.double() * logit_scale
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return z / temperature


def reference(z, y, transform, ignore_index=-100):
    """Every statistic in float64 PyTorch (z: the logits as given, [..., V];
    autograd through log_softmax gives the reference gradients)."""
    zt = transformed(z, **transform)
    lp = torch.log_softmax(zt, -1)
    p = lp.exp()
    keep = y != ignore_index
    safe = torch.where(keep, y, torch.zeros_like(y))
    zero = torch.zeros((), dtype=torch.float64, device=z.device)
    logp = torch.where(keep, lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1), zero)
    ent = torch.where(keep, -(p * lp).sum(-1), zero)
    lssp = torch.where(keep, torch.logsumexp(2 * lp, -1), zero)
    mean = torch.where(keep, zt.mean(-1), zero)
    # torch.argmax returns the FIRST maximal index (TRL's rule: a tie with an
    # earlier column is not top-1); decided on the raw logits.
    top1 = keep & (z.double().argmax(-1) == safe)
    return dict(log_probs=logp, entropy=ent, log_sum_sq_probs=lssp, mean_logits=mean,
                is_top1=top1)


def _labels(shape, vocab, device, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, vocab, shape, generator=g)
    y[torch.rand(shape, generator=g) < 0.3] = -100
    return y.to(device)


def _upstreams(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64).to(device),
            torch.randn(shape, generator=g, dtype=torch.float64).to(device))


def _check_stats(got, want, dtype, device):
    tol = _tols(dtype, device)[0]
    assert isinstance(got, gp.TokenStats)
    for name in STATS:
        if name == "is_top1":
            assert got.is_top1.dtype == torch.bool
            assert torch.equal(got.is_top1, want["is_top1"])
        else:
            torch.testing.assert_close(got._asdict()[name].double(), want[name], **tol,
                                       msg=lambda m, n=name: f"{n}: {m}")


def _check_grad(got, want, dtype, device, what):
    _, rtol, of_max, floor = _tols(dtype, device)
    assert got.dtype == dtype, what
    atol = max(floor, of_max * want.abs().max().item()) if want.numel() else 0.0
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
SHAPES = {"BT": (3, 5), "flat": (13,), "BTK": (2, 3, 2)}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("transform", [IDENTITY, CAPPED], ids=["identity", "transformed"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_from_logits_against_float64(dtype, transform, shape, device):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    shape, vocab = SHAPES[shape], 11
    g = torch.Generator().manual_seed(7)
    logits = (3 * torch.randn(*shape, vocab, generator=g)).to(device=device, dtype=dtype)
    labels = _labels(shape, vocab, device, 8)
    gl, ge = _upstreams(shape, device, 9)
    z = logits.clone().requires_grad_(True)
    got = gp.token_logps(z, labels, outputs=STATS, **transform)
    assert got.log_probs.shape == shape
    zr = logits.double().requires_grad_(True)
    want = reference(zr, labels, transform)
    _check_stats(got, {k: v.detach() for k, v in want.items()}, dtype, device)
    # Both upstreams at once, through one backward.
    (got.log_probs.double() * gl + got.entropy.double() * ge).sum().backward()
    (want["log_probs"] * gl + want["entropy"] * ge).sum().backward()
    _check_grad(z.grad, zr.grad, dtype, device, "grad logits")
    ignored = labels == -100
    assert not got.log_probs[ignored].any() and not got.entropy[ignored].any()
    assert not got.is_top1[ignored].any() and not z.grad[ignored].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("transform", [IDENTITY, CAPPED], ids=["identity", "transformed"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_from_hidden_states_against_float64(dtype, transform, with_bias, device):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU only")
    shape, hid, vocab = (3, 4), 8, 13
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(*shape, hid, generator=g).to(device=device, dtype=dtype)
    w0 = (0.7 * torch.randn(vocab, hid, generator=g)).to(device=device, dtype=dtype)
    b0 = torch.randn(vocab, generator=g).to(device=device, dtype=dtype) if with_bias else None
    labels = _labels(shape, vocab, device, 12)
    gl, ge = _upstreams(shape, device, 13)
    x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True) if with_bias else None
    got = gp.linear_token_logps(x, w, labels, bias=b, outputs=STATS, **transform)
    xr, wr = x0.double().requires_grad_(True), w0.double().requires_grad_(True)
    br = b0.double().requires_grad_(True) if with_bias else None
    zr = xr @ wr.T + (br if with_bias else 0)
    want = reference(zr, labels, transform)
    _check_stats(got, {k: v.detach() for k, v in want.items()}, dtype, device)
    (got.log_probs.double() * gl + got.entropy.double() * ge).sum().backward()
    (want["log_probs"] * gl + want["entropy"] * ge).sum().backward()
    _check_grad(x.grad, xr.grad, dtype, device, "grad hidden")
    # A 16-bit weight's gradient sums in float32 and is rounded once
    # (linear_token_logps_accumulate): still one rounding of the exact sum.
    _check_grad(w.grad, wr.grad, dtype, device, "grad weight")
    if with_bias:
        _check_grad(b.grad, br.grad, dtype, device, "grad bias")
    assert not x.grad[labels == -100].any()


def test_gradcheck_in_double():
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = _labels((4, 6), 5, "cpu", 22)
    for transform in (IDENTITY, CAPPED):
        def f(z, t=transform):
            out = gp.token_logps(z, labels, outputs=("entropy",), **t)
            return out.log_probs, out.entropy
        assert torch.autograd.gradcheck(f, (logits,))
    x = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    y = _labels((7,), 6, "cpu", 23)

    def lin(x, w, b):
        out = gp.linear_token_logps(x, w, y, bias=b, outputs=("entropy", "mean_logits"), **CAPPED)
        return out.log_probs, out.entropy
    assert torch.autograd.gradcheck(lin, (x, w, b))


def test_only_what_is_asked_for():
    logits = torch.randn(2, 3, 7)
    labels = _labels((2, 3), 7, "cpu", 31)
    base = gp.token_logps(logits, labels)
    for name in STATS[1:]:
        out = gp.token_logps(logits, labels, outputs=("log_probs", name))
        assert [f for f in STATS if out._asdict()[f] is not None] == ["log_probs", name]
        torch.testing.assert_close(out.log_probs, base, rtol=0, atol=0)
    # The operator computes nothing it was not asked for: [0] outputs.
    _, _, h, lssp, mean, top1 = ops.token_logps(logits.reshape(6, 7), labels.reshape(6), -100,
                                                False, True, [1.0, 0.0, 1.0], mean_logits=True)
    assert (h.numel(), lssp.numel(), mean.numel(), top1.numel()) == (0, 0, 6, 0)
    # log_probs is always computed; return_entropy keeps its old form.
    assert gp.token_logps(logits, labels, outputs=()).log_probs is not None
    lp, ent = gp.token_logps(logits, labels, return_entropy=True)
    torch.testing.assert_close(ent, gp.token_logps(logits, labels, outputs=("entropy",)).entropy,
                               rtol=0, atol=0)
    assert gp.token_logps(logits, labels, return_entropy=True, outputs=()).entropy is not None


def test_non_differentiable_statistics():
    z = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, -100, 4])
    out = gp.token_logps(z, y, outputs=STATS)
    for name in ("log_sum_sq_probs", "mean_logits", "is_top1"):
        assert not out._asdict()[name].requires_grad, name
    assert out.log_probs.requires_grad and out.entropy.requires_grad
    # An upstream on the entropy alone reaches the logits.
    out.entropy.sum().backward()
    assert z.grad.abs().sum() > 0 and not z.grad[2].any()


def test_vocab_of_one():
    # One column: p = 1, so log p = 0, H = 0, log sum p^2 = 0, the label is
    # top-1, the mean is the transformed logit, and every gradient is 0.
    # (Exactly in float64; from float32 the backward reads lse rounded to
    # float32, so 1 - p is of the order of 2^-24 |z'|.)
    y = torch.tensor([0, -100, 0])
    for dtype, bound in ((torch.float64, 0.0), (torch.float32, 8 * 2.0 ** -24 * 5.0)):
        z = torch.tensor([[0.3], [-2.0], [5.0]], dtype=dtype, requires_grad=True)
        out = gp.token_logps(z, y, outputs=STATS, **CAPPED)
        zt = transformed(z.detach(), **CAPPED).squeeze(-1).to(out.log_probs.dtype)
        assert not out.log_probs.any() and not out.entropy.any()
        assert not out.log_sum_sq_probs.any()
        torch.testing.assert_close(out.mean_logits, torch.where(y == 0, zt, torch.zeros_like(zt)))
        assert out.is_top1.tolist() == [True, False, True]
        (out.log_probs.sum() + out.entropy.sum()).backward()
        assert z.grad.abs().max().item() <= bound, dtype
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(1, 4, requires_grad=True)
    out = gp.linear_token_logps(x, w, y, outputs=STATS)
    assert out.is_top1.tolist() == [True, False, True] and not out.entropy.any()


def trl_is_top1(z, y):
    """TRL 1.16.0's rule (trl/kernels/chunked_logprob.py): the target's logit
    reaches the row's maximum and exceeds every logit before it."""
    v = torch.arange(z.shape[-1])
    before = torch.where(v < y.unsqueeze(-1), z, torch.full_like(z, -math.inf)).amax(-1)
    target = z.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (target >= z.amax(-1)) & (target > before) & (y != -100)


def test_is_top1_ties_follow_trl():
    z = torch.tensor([[2.0, 0.0, 2.0, 1.0],   # a tie between 0 and 2
                      [2.0, 0.0, 2.0, 1.0],
                      [1.0, 3.0, 0.0, 3.0],   # a tie between 1 and 3
                      [1.0, 3.0, 0.0, 3.0],
                      [1.0, 1.0, 1.0, 1.0],   # all equal
                      [1.0, 1.0, 1.0, 1.0],
                      [0.0, 5.0, 1.0, 2.0],   # a strict maximum, not the label
                      [0.0, 5.0, 1.0, 2.0]])
    y = torch.tensor([0, 2, 1, 3, 0, 3, 2, -100])
    want = [True, False, True, False, True, False, False, False]
    assert trl_is_top1(z, y).tolist() == want
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for transform in (IDENTITY, CAPPED):
            got = gp.token_logps(z.to(dtype), y, outputs=("is_top1",), **transform).is_top1
            assert got.tolist() == want, (dtype, transform)
    # From hidden states: identity weight, the same logits.
    got = gp.linear_token_logps(z, torch.eye(4), y, outputs=("is_top1",)).is_top1
    assert got.tolist() == want


def test_accumulate_operator_adds_in_float32():
    """linear_token_logps_accumulate (what the backward runs for 16-bit
    weights): grad_weight and grad_bias are ADDED to the caller's float32
    buffers, grad_hidden returned; the same gradients as
    linear_token_logps_grad's."""
    g = torch.Generator().manual_seed(41)
    x = torch.randn(6, 5, generator=g).bfloat16()
    w = torch.randn(9, 5, generator=g).bfloat16()
    b = torch.randn(9, generator=g).bfloat16()
    y = _labels((6,), 9, "cpu", 42)
    tr = [1.5, 4.0, 0.8]
    _, lse, h, *_ = ops.linear_token_logps(x, w, b, y, -100, True, 1 << 20, True, tr)
    up, ue = torch.randn(6, generator=g), torch.randn(6, generator=g)
    gh, gw, gb = ops.linear_token_logps_grad(x, w, b, y, lse, up, -100, 1 << 20,
                                             [True, True, True], True, tr, grad_entropy=ue,
                                             entropy=h)
    acc_w, acc_b = torch.randn(9, 5, generator=g), torch.randn(9, generator=g)
    w0, b0 = acc_w.clone(), acc_b.clone()
    gh2 = ops.linear_token_logps_accumulate(x, w, b, y, lse, up, -100, 1 << 20,
                                            [True, False, False], True, tr, grad_entropy=ue,
                                            entropy=h, grad_weight_acc=acc_w, grad_bias_acc=acc_b)
    torch.testing.assert_close(gh2, gh, rtol=0, atol=0)
    # The accumulated increments: float32 (no bfloat16 rounding) vs the
    # bfloat16 output: within half a bfloat16 ulp.
    torch.testing.assert_close(acc_w - w0, gw.float(), rtol=2 ** -8, atol=1e-6)
    torch.testing.assert_close(acc_b - b0, gb.float(), rtol=2 ** -8, atol=1e-6)
    assert not torch.equal(acc_w - w0, (acc_w - w0).bfloat16().float())  # kept in float32


def test_against_trl_chunked_logprob():
    """TRL 1.16.0's ChunkedLogProbFunction (its torch fold on CPU): every
    statistic and the gradients of hidden, weight and bias under both
    upstreams, with TRL's logit_scale, softcap and temperature. TRL works in
    float32 throughout (a tiled H Wᵀ, online sums): 1e-5 relative and of the
    largest element absolute bound its rounding here (V = 37, H = 16)."""
    kernels = pytest.importorskip("trl.kernels.chunked_logprob")
    g = torch.Generator().manual_seed(51)
    x0 = torch.randn(10, 16, generator=g)
    w0 = 0.5 * torch.randn(37, 16, generator=g)
    b0 = torch.randn(37, generator=g)
    y = _labels((10,), 37, "cpu", 52)
    keep = y != -100
    gl, ge = torch.randn(10, generator=g), torch.randn(10, generator=g)
    for scale, cap, temp in ((1.0, None, 1.0), (1.5, 4.0, 0.8)):
        xt, wt, bt = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        trl_out = kernels.ChunkedLogProbFunction.apply(xt[keep], wt, bt, y[keep], temp, 16, cap,
                                                       scale, STATS)
        (trl_out[0] * gl[keep] + trl_out[1] * ge[keep]).sum().backward()
        xg, wg, bg = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        out = gp.linear_token_logps(xg, wg, y, bias=bg, outputs=STATS, logit_scale=scale,
                                    softcap=cap or 0.0, temperature=temp)
        (out.log_probs * gl + out.entropy * ge).sum().backward()
        for k, name in enumerate(STATS):
            ours = out._asdict()[name][keep]
            if name == "is_top1":
                assert torch.equal(ours, trl_out[k])
            else:
                torch.testing.assert_close(ours, trl_out[k], rtol=1e-5, atol=1e-5)
            assert not out._asdict()[name][~keep].any()
        for a, t in ((xg.grad, xt.grad), (wg.grad, wt.grad), (bg.grad, bt.grad)):
            torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-5 * t.abs().max().item())


def test_bad_outputs_and_upstreams():
    z, y = torch.randn(4, 5), torch.tensor([0, 1, 2, -100])
    with pytest.raises(TypeError, match="sequence of names"):
        gp.token_logps(z, y, outputs="entropy")
    with pytest.raises(ValueError, match="unknown outputs"):
        gp.token_logps(z, y, outputs=("log_probs", "logits"))
    with pytest.raises(ValueError, match="unknown outputs"):
        gp.linear_token_logps(torch.randn(4, 3), torch.randn(5, 3), y, outputs=("entropi",))
    _, lse, h, *_ = ops.token_logps(z, y, -100, True, True, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="needs the forward's entropy"):
        ops.token_logps_grad(z, y, lse, torch.ones(4), -100, True, [1.0, 0.0, 1.0],
                             grad_entropy=torch.ones(4))
    with pytest.raises(ValueError, match=r"grad_entropy must have shape \[4\]"):
        ops.token_logps_grad(z, y, lse, torch.ones(4), -100, True, [1.0, 0.0, 1.0],
                             grad_entropy=torch.ones(3), entropy=h)
    with pytest.raises(ValueError, match="invalid upstream gradient|upstream"):
        ops.token_logps_grad(z, y, lse, torch.ones(4), -100, True, [1.0, 0.0, 1.0],
                             grad_entropy=torch.tensor([1.0, math.nan, 1.0, 1.0]), entropy=h)


def test_opcheck_with_statistics(device):
    g = torch.Generator().manual_seed(61)
    z = torch.randn(6, 7, generator=g).to(device).requires_grad_(True)
    y = _labels((6,), 7, device, 62)
    tr = [1.5, 4.0, 0.8]
    torch.library.opcheck(ops.token_logps, (z, y, -100, True, True, tr),
                          dict(log_sum_sq_probs=True, mean_logits=True, is_top1=True))
    _, lse, h, *_ = ops.token_logps(z.detach(), y, -100, True, True, tr)
    torch.library.opcheck(ops.token_logps_grad, (z.detach(), y, lse, torch.ones(6, device=device),
                                                 -100, True, tr),
                          dict(grad_entropy=torch.linspace(-1, 1, 6, device=device), entropy=h))
    x = torch.randn(6, 4, generator=g).to(device).requires_grad_(True)
    w = torch.randn(7, 4, generator=g).to(device).requires_grad_(True)
    torch.library.opcheck(ops.linear_token_logps, (x, w, None, y, -100, True, 1 << 20, True, tr),
                          dict(is_top1=True, mean_logits=True))
    b = torch.randn(7, generator=g).to(device)
    _, lse, h, *_ = ops.linear_token_logps(x.detach(), w.detach(), b, y, -100, True, 1 << 20,
                                           True, tr)
    torch.library.opcheck(
        ops.linear_token_logps_accumulate,
        (x.detach(), w.detach(), b, y, lse, torch.ones(6, device=device), -100, 1 << 20,
         [True, False, False], True, tr),
        dict(grad_entropy=torch.linspace(-1, 1, 6, device=device), entropy=h,
             grad_weight_acc=torch.zeros(7, 4, device=device),
             grad_bias_acc=torch.zeros(7, device=device)))


def test_torch_compile_16bit_backward():
    """torch.compile(fullgraph=True) traces the statistics and the backward
    with both upstreams, the 16-bit weight's accumulating backward included,
    and gives the eager result."""
    def f(x, w, b, y):
        o = gp.linear_token_logps(x, w, y, bias=b, outputs=("entropy", "is_top1"),
                                  temperature=0.7)
        return o.log_probs.sum() + 0.1 * o.entropy.sum(), o.is_top1

    g = torch.Generator().manual_seed(71)
    inputs = [torch.randn(*s, generator=g).bfloat16().requires_grad_(True)
              for s in ((6, 4), (9, 4), (9,))]
    y = _labels((6,), 9, "cpu", 72)
    results = []
    for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        loss, top1 = fn(*inputs, y)
        grads = torch.autograd.grad(loss, inputs)
        results.append((loss, top1, grads))
    (l0, t0, g0), (l1, t1, g1) = results
    assert torch.equal(l0, l1) and torch.equal(t0, t1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
