"""geopref_torch.token_logps, the per-token primitive, against PyTorch's
selective log-softmax (log_softmax + gather, as TRL computes per-token
log-probs): values, entropies and gradients per logits dtype, ignore_index,
gradcheck in float64, opcheck, torch.compile(fullgraph=True), bad inputs.
Runs on CPU; on CUDA too when a GPU is visible and the CUDA kernels are built.
"""
import pytest
import torch

import geopref_torch as gp

ops = torch.ops.geopref


def plain_token_logps(logits, labels, ignore_index=-100):
    """TRL's selective_log_softmax with the ignored rows set to 0, in float64."""
    z = logits.double()
    mask = labels != ignore_index
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    logp = torch.log_softmax(z, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logp, torch.zeros_like(logp))


def plain_entropy(logits, labels, ignore_index=-100):
    logp = torch.log_softmax(logits.double(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    return torch.where(labels != ignore_index, h, torch.zeros_like(h))


def make(seed, shape=(3, 7), V=13, dtype=torch.float32, device="cpu", ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    logits = ((torch.rand(*shape, V, generator=g, dtype=torch.float64) * 2 - 1) * 3).to(dtype)
    labels = torch.randint(0, V, shape, generator=g)
    labels[torch.rand(shape, generator=g) < 0.25] = ignore_index
    return logits.to(device), labels.to(device)


# Per-dtype tolerances. The CPU kernel is the CPU reference in double on the
# given logits, rounded to float32 (~6e-8 relative) or, for the gradient, to
# the logits dtype (2^-8 bf16, 2^-11 fp16) from the float32 lse it saves.
# CUDA accumulates in float32 over V = 13: a few ulps more.
TOL = {
    torch.float64: dict(value=(1e-12, 1e-12), grad=(1e-12, 1e-12)),
    torch.float32: dict(value=(2e-6, 2e-6), grad=(1e-6, 1e-5)),
    torch.bfloat16: dict(value=(2e-6, 2e-6), grad=(1e-5, 2 ** -8)),
    torch.float16: dict(value=(2e-6, 2e-6), grad=(1e-6, 2 ** -10)),
}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_matches_selective_log_softmax(dtype, ignore_index, device):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 logits are CPU only")
    logits, labels = make(1, dtype=dtype, device=device, ignore_index=ignore_index)
    z1 = logits.clone().requires_grad_(True)
    logps, ent = gp.token_logps(z1, labels, ignore_index, return_entropy=True)
    assert logps.shape == labels.shape and ent.shape == labels.shape
    assert logps.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = plain_token_logps(logits, labels, ignore_index)
    atol, rtol = TOL[dtype]["value"]
    torch.testing.assert_close(logps.double(), want, atol=atol, rtol=rtol)
    torch.testing.assert_close(ent.double(), plain_entropy(logits, labels, ignore_index),
                               atol=10 * atol, rtol=10 * rtol)
    # A GRPO-like upstream: any per-token weights.
    w = torch.linspace(-2, 3, labels.numel(), device=device).reshape(labels.shape)
    (logps * w).sum().backward()
    z2 = logits.double().clone().requires_grad_(True)
    (plain_token_logps(z2, labels, ignore_index) * w.double()).sum().backward()
    assert z1.grad.dtype == dtype
    atol, rtol = TOL[dtype]["grad"]
    torch.testing.assert_close(z1.grad.double(), z2.grad, atol=atol, rtol=rtol)
    # Ignored rows: exactly zero gradient.
    assert (z1.grad[labels == ignore_index] == 0).all()


def test_gradcheck_float64():
    logits, labels = make(3, shape=(9,), V=6, dtype=torch.float64)
    w = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: gp.token_logps(x, labels) * w, (z,), eps=1e-6,
                                    atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype, device):
    logits, labels = make(5, shape=(11,), dtype=dtype, device=device)
    z = logits.clone().requires_grad_(True)
    identity, capped = [1.0, 0.0, 1.0], [1.5, 4.0, 0.8]  # (scale, softcap, temperature)
    torch.library.opcheck(ops.token_logps, (z, labels, -100, True, True, identity))
    other = torch.where(labels == -100, torch.full_like(labels, 4), labels).int()
    torch.library.opcheck(ops.token_logps, (z, other, 4, False, True, capped))
    _, lse, *_ = ops.token_logps(logits, labels, -100, False, True, capped)
    torch.library.opcheck(ops.token_logps_grad,
                          (logits, labels, lse, torch.linspace(-1, 1, 11, device=device), -100,
                           True, capped))


def _grpo_like(z, y, old, adv):
    logp = gp.token_logps(z, y)
    ratio = torch.exp(logp - old)
    loss = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    mask = (y != -100).to(loss.dtype)
    return (loss * mask).sum() / mask.sum(), logp


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    logits, labels = make(7, device=device)
    g = torch.Generator().manual_seed(8)
    old = (plain_token_logps(logits, labels).float()
           + 0.1 * torch.randn(labels.shape, generator=g).to(device))
    adv = torch.randn(labels.shape, generator=g).to(device)
    explanation = torch._dynamo.explain(_grpo_like)(logits.clone().requires_grad_(True), labels,
                                                    old, adv)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(_grpo_like, fullgraph=True, backend=backend)
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    got = compiled(z1, labels, old, adv)
    want = _grpo_like(z2, labels, old, adv)
    got[0].backward()
    want[0].backward()
    # The geopref operators give the same bits; inductor may fuse the caller's
    # elementwise math differently: a float32 ulp or two.
    tol = dict(atol=0, rtol=0) if backend == "aot_eager" else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(z1.grad, z2.grad, **tol)


def test_bad_inputs(device):
    logits, labels = make(9, device=device)
    bad = labels.clone()
    bad[1, 2] = logits.shape[-1]
    with pytest.raises(IndexError, match="label out of range"):
        gp.token_logps(logits, bad)
    with pytest.raises(ValueError, match="labels must have shape"):
        gp.token_logps(logits, labels[:, :3])
    with pytest.raises(TypeError, match="labels must be int32 or int64"):
        gp.token_logps(logits, labels.float())
    z = logits.clone().requires_grad_(True)
    logp = gp.token_logps(z, labels)
    with pytest.raises(RuntimeError):  # mean_logits is for logging: not differentiable
        gp.token_logps(z, labels, outputs=("mean_logits",)).mean_logits.sum().backward()
    logp.sum().backward()
