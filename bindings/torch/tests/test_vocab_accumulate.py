"""geopref_torch.distributed.vocab_linear_loss with the caller's gradient
accumulators (grad_weight_accumulator, grad_bias_accumulator: the C ABI's
geopref_vocab_linear_step with `accumulate` and grad_weight_float32, through
the operator vocab_linear_accumulate), on CPU in a one-process gloo group:

  * a float32 weight gradient for bfloat16 / float16 weights, against the
    float64 gradient of fused_linear_preference_loss on the same values (one
    rounding to float32, not the 16-bit .grad's);
  * accumulation: the buffer ends as (its previous value + upstream · the
    gradient), for a scalar and a per-pair upstream, in float32 and in the
    weight's dtype; hidden.grad as without accumulators;
  * bad accumulators (dtype, shape, a missing one, one without a bias) fail
    before the exchange with an error naming them; the operator itself
    refuses them too (ValueError / TypeError naming grad_weight_acc);
  * the operator's fake kernel agrees with it (opcheck);
  * on every device (CUDA too, where its kernels are built and a GPU is
    present): the same accumulators as fused_linear_preference_loss's;
  * in the same group, vocab_linear_token_logps under autocast against
    linear_token_logps.
"""
import os

import pytest
import torch
import torch.distributed as dist

import geopref_torch as gp
import geopref_torch.distributed as gpd
from geopref_torch import VocabSlice

ops = torch.ops.geopref
P, T, H, V = 3, 5, 8, 11
ON_CUDA = torch.cuda.is_available() and gp.has_cuda_kernels()


@pytest.fixture(scope="module", autouse=True)
def one_rank_group(tmp_path_factory):
    """A gloo group of this process alone (world size 1: the slice is the
    whole vocabulary; test_distributed.py runs uneven slices on 1 to 4 ranks)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = tmp_path_factory.mktemp("gloo") / "store"
    # With the CUDA kernels on a GPU, CUDA tensors are exchanged over NCCL.
    backend = "cpu:gloo,cuda:nccl" if ON_CUDA else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


SLICE = VocabSlice(0, V, 0, 1)


def inputs(seed, dtype):
    """TRL's layout [2P, T]; dyadic hidden states, weight and bias (multiples
    of 1/16, exact in every dtype here: the 16-bit and float64 runs read the
    same values, and their products in double are exact)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (2 * P, T), generator=g)
    labels[:, :1] = -100

    def dyadic(*shape):
        return (torch.randint(-16, 17, shape, generator=g) / 16).to(dtype)

    ref = torch.randn(2 * P, generator=g, dtype=torch.float64) * 3 - 10
    return dict(hidden=dyadic(2 * P, T, H), weight=dyadic(V, H), bias=dyadic(V), labels=labels,
                ref=ref.float(), prev_w=torch.randn(V, H, generator=g),
                prev_b=torch.randn(V, generator=g), up=torch.rand(P, generator=g) + 0.5)


def leaf(t, dtype=None):
    return t.detach().to(dtype or t.dtype).clone().requires_grad_(True)


OPTS = dict(loss_type="gdpo", beta=0.3)


def want_grads(d, reduction, upstream):
    """The float64 gradients of fused_linear_preference_loss (dyadic inputs:
    the same values as the 16-bit ones) for the upstream gradient."""
    x, w, b = leaf(d["hidden"], torch.float64), leaf(d["weight"], torch.float64), \
        leaf(d["bias"], torch.float64)
    out = gp.fused_linear_preference_loss(x, w, d["labels"], bias=b, ref_logps=d["ref"].double(),
                                          reduction=reduction, **OPTS)
    (out.loss * upstream.double()).sum().backward()
    return out, x.grad, w.grad, b.grad


def close(got, want, tol, what):
    """|got - want| <= tol · (|want| + max|want|), elementwise (as
    dist_worker.close: a softmax term's error is relative to the term)."""
    got, want = got.detach().double(), want.detach().double()
    scale = want.abs().max().item()
    err = ((got - want).abs() / (want.abs() + scale)).max().item()
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
    return err


# The accumulators' sums are formed in double from exact 16-bit products and
# rounded once to the buffer's dtype (float32: 2^-24; the weight's own
# 16-bit dtype: bf16 2^-8, fp16 2^-11); the float64 run differs from the
# vocab path only by double rounding (its combine), far below these. One
# unit of the buffer's dtype, measured as close() measures.
ROUND = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -50, torch.bfloat16: 2.0 ** -8,
         torch.float16: 2.0 ** -11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_float32_weight_gradient_of_16bit_weights(dtype, reduction):
    d = inputs(1, dtype)
    up = d["up"] if reduction == "none" else torch.tensor(2.5)
    want, gx, gw, gb = want_grads(d, reduction, up)
    x, w, b = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
    acc_w, acc_b = torch.zeros(V, H), torch.zeros(V)
    got = gpd.vocab_linear_loss(x, w, d["labels"], bias=b, vocab_slice=SLICE, ref_logps=d["ref"],
                                reduction=reduction, grad_weight_accumulator=acc_w,
                                grad_bias_accumulator=acc_b, **OPTS)
    close(got.loss, want.loss, 2.0 ** -23, "loss")   # float32 outputs: one rounding
    (got.loss * up).sum().backward()
    assert w.grad is None and b.grad is None, "the accumulators replace .grad"
    err_w = close(acc_w, gw, 2 * ROUND[torch.float32], "grad_weight_accumulator")
    close(acc_b, gb, 2 * ROUND[torch.float32], "grad_bias_accumulator")
    close(x.grad, gx, 2 * ROUND[dtype], "hidden.grad")  # the hidden states' dtype
    # Finer than the weight's dtype could hold: the 16-bit gradient is off by
    # far more than the float32 buffer.
    err_16 = close(gw.to(dtype), gw, 2 * ROUND[dtype], "16-bit gradient")
    assert err_w < err_16 / 64, (err_w, err_16)


@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_accumulates_into_the_previous_buffer(acc_dtype):
    d = inputs(2, torch.bfloat16)
    up = torch.tensor(-1.75)
    _, gx, gw, gb = want_grads(d, "mean", up)
    acc_w = d["prev_w"].to(acc_dtype)
    prev_w = acc_w.clone()
    acc_b, prev_b = d["prev_b"].clone(), d["prev_b"].clone()
    x, w, b = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
    got = gpd.vocab_linear_loss(x, w, d["labels"], bias=b, vocab_slice=SLICE, ref_logps=d["ref"],
                                grad_weight_accumulator=acc_w, grad_bias_accumulator=acc_b, **OPTS)
    (got.loss * up).backward()
    close(acc_w, prev_w.double() + gw, ROUND[acc_dtype], "grad_weight_accumulator")
    close(acc_b, prev_b.double() + gb, ROUND[torch.float32], "grad_bias_accumulator")
    close(x.grad, gx, 2 * ROUND[torch.bfloat16], "hidden.grad")
    assert acc_w.dtype == acc_dtype and not torch.equal(acc_w, prev_w)
    # A second micro-batch adds again (nothing is reset).
    before = acc_w.clone()
    got = gpd.vocab_linear_loss(leaf(d["hidden"]), w, d["labels"], bias=b, vocab_slice=SLICE,
                                ref_logps=d["ref"], grad_weight_accumulator=acc_w,
                                grad_bias_accumulator=acc_b, **OPTS)
    (got.loss * up).backward()
    close(acc_w, before.double() + gw, ROUND[acc_dtype], "second micro-batch")


def test_same_accumulators_as_the_fused_linear_path(device):
    """On each device, the vocab path's accumulators and hidden.grad equal
    fused_linear_preference_loss's with its accumulators, on the same inputs:
    one rank holds the whole vocabulary, so both sum the same products into
    float32. On a GPU this is the CUDA step with `accumulate` and
    grad_weight_float32 set. Tolerance: test_parity's accumulator test's for
    float32 sums (rtol = atol = 2e-5: the two paths may combine each row's
    log-sum-exp in another order, a few float32 ulps)."""
    d = {k: v.to(device) for k, v in inputs(6, torch.bfloat16).items()}
    up = torch.linspace(0.5, 1.5, P, device=device)
    got = {}
    for path in ("fused", "vocab"):
        acc_w, acc_b = d["prev_w"].clone(), d["prev_b"].clone()
        x, w, b = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
        kw = dict(bias=b, ref_logps=d["ref"], reduction="none", grad_weight_accumulator=acc_w,
                  grad_bias_accumulator=acc_b, **OPTS)
        if path == "fused":
            out = gp.fused_linear_preference_loss(x, w, d["labels"], **kw)
        else:
            out = gpd.vocab_linear_loss(x, w, d["labels"], vocab_slice=SLICE, **kw)
        (out.loss * up).sum().backward()
        assert w.grad is None and b.grad is None
        got[path] = (acc_w, acc_b, x.grad)
    assert not torch.equal(got["vocab"][0], d["prev_w"]), "nothing was accumulated"
    for name, a, e in zip(("grad_weight_accumulator", "grad_bias_accumulator", "hidden.grad"),
                          got["vocab"], got["fused"]):
        assert a.dtype == e.dtype and a.device == e.device, name
        torch.testing.assert_close(a.double().cpu(), e.double().cpu(), rtol=2e-5, atol=2e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_token_logps_under_autocast():
    """vocab_linear_token_logps (in this file for its one-rank group) inside
    torch.autocast: its statistics and gradients are formed in the autocast
    dtype, as its records are, so they equal linear_token_logps's under the
    same autocast. Both project the same bfloat16 values in float32 (1e-4 of
    the largest value: float32 sums over H = 8 and V = 11, far below the 1e-2
    a mix of float32 logits with a bfloat16 lse gives)."""
    g = torch.Generator().manual_seed(7)
    hidden, weight, bias = torch.randn(6, H, generator=g), torch.randn(V, H, generator=g), \
        torch.randn(V, generator=g)
    labels = torch.randint(0, V, (6,), generator=g)
    labels[0] = -100
    got = {}
    for path in ("one", "vocab"):
        x, w, b = leaf(hidden), leaf(weight), leaf(bias)
        kw = dict(bias=b, outputs=("log_probs", "entropy"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = (gp.linear_token_logps(x, w, labels, **kw) if path == "one" else
                   gpd.vocab_linear_token_logps(x, w, labels, vocab_slice=SLICE, **kw))
        (out.log_probs.float().sum() + 0.5 * out.entropy.float().sum()).backward()
        got[path] = (out.log_probs, out.entropy, x.grad, w.grad, b.grad)
    for name, a, e in zip(("log_probs", "entropy", "hidden.grad", "weight.grad", "bias.grad"),
                          got["vocab"], got["one"]):
        err = (a.double() - e.double()).abs().max().item()
        assert err <= 1e-4 * e.double().abs().max().item(), f"{name}: max |d| {err:.3e}"


def test_frozen_hidden_and_no_grad():
    """Only the weight and bias require grad (a frozen body): the backward
    still runs into the accumulators; under no_grad nothing is added."""
    d = inputs(3, torch.float32)
    _, _, gw, gb = want_grads(d, "mean", torch.tensor(1.0))
    acc_w, acc_b = torch.zeros(V, H), torch.zeros(V)
    w, b = leaf(d["weight"]), leaf(d["bias"])
    got = gpd.vocab_linear_loss(d["hidden"], w, d["labels"], bias=b, vocab_slice=SLICE,
                                ref_logps=d["ref"], grad_weight_accumulator=acc_w,
                                grad_bias_accumulator=acc_b, **OPTS)
    got.loss.backward()
    close(acc_w, gw, 2 * ROUND[torch.float32], "grad_weight_accumulator")
    close(acc_b, gb, 2 * ROUND[torch.float32], "grad_bias_accumulator")
    with torch.no_grad():
        again = gpd.vocab_linear_loss(d["hidden"], w, d["labels"], bias=b, vocab_slice=SLICE,
                                      ref_logps=d["ref"], grad_weight_accumulator=acc_w,
                                      grad_bias_accumulator=acc_b, **OPTS)
    assert torch.equal(again.loss, got.loss.detach())
    close(acc_w, gw, 2 * ROUND[torch.float32], "unchanged under no_grad")


BAD = {
    "fp16 buffer for a bf16 weight": (dict(grad_weight_accumulator=torch.zeros(V, H,
                                                                                dtype=torch.half)),
                                      TypeError, "grad_weight_accumulator must be"),
    "wrong shape": (dict(grad_weight_accumulator=torch.zeros(V, H + 1)), ValueError,
                    "grad_weight_accumulator must have the shape"),
    "bf16 bias buffer": (dict(grad_bias_accumulator=torch.zeros(V, dtype=torch.bfloat16)),
                         TypeError, "grad_bias_accumulator must be"),
    "bias buffer missing": (dict(grad_bias_accumulator=None), ValueError,
                            "give grad_bias_accumulator too"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_accumulators_fail_before_the_exchange(case):
    change, cause, message = BAD[case]
    d = inputs(4, torch.bfloat16)
    kw = dict(grad_weight_accumulator=torch.zeros(V, H), grad_bias_accumulator=torch.zeros(V))
    kw.update(change)
    with pytest.raises(gpd.RankFailed, match=message) as e:
        gpd.vocab_linear_loss(leaf(d["hidden"]), leaf(d["weight"]), d["labels"],
                              bias=leaf(d["bias"]), vocab_slice=SLICE, **kw)
    assert isinstance(e.value.__cause__, cause)


def test_bias_accumulator_without_a_bias():
    d = inputs(5, torch.float32)
    with pytest.raises(gpd.RankFailed, match="grad_bias_accumulator is given without a bias"):
        gpd.vocab_linear_loss(leaf(d["hidden"]), leaf(d["weight"]), d["labels"],
                              vocab_slice=SLICE, grad_weight_accumulator=torch.zeros(V, H),
                              grad_bias_accumulator=torch.zeros(V))


def op_args(d):
    """vocab_linear_accumulate's arguments for inputs d (the records of this
    one-rank group: vocab_linear_stats' own)."""
    x, y = d["hidden"].reshape(-1, H), d["labels"].reshape(-1)
    off = torch.arange(2 * P + 1) * T
    slice_ = list(SLICE)
    options = gp.pack_options()
    transform = [f.default for f in gp._ops.LOGIT_TRANSFORM_FIELDS]  # the identity
    rec = ops.vocab_linear_stats(x, d["weight"], d["bias"], y, off, slice_, options, 1 << 20,
                                 True, transform)
    return (torch.tensor(1.0), x, d["weight"], d["bias"], y, off, rec[None], None, None, None,
            None, None, slice_, options, 1 << 20, [True, False, False], True, transform)


@pytest.mark.parametrize("acc, cause, message", [
    (torch.zeros(V, H - 1), ValueError, r"grad_weight_acc must be \[V, H\]"),
    (torch.zeros(V, H, dtype=torch.float64), TypeError, "grad_weight_acc must be float32 or"),
    (torch.zeros(H, V).t(), ValueError, "grad_weight_acc must be contiguous"),
])
def test_the_operator_refuses_bad_accumulators(acc, cause, message):
    args = op_args(inputs(6, torch.bfloat16))
    with pytest.raises(cause, match=message):
        ops.vocab_linear_accumulate(*args, acc, None)


def test_opcheck():
    d = inputs(7, torch.float32)
    torch.library.opcheck(ops.vocab_linear_accumulate,
                          op_args(d) + (torch.zeros(V, H), torch.zeros(V)))
