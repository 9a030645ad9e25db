"""The fast CPU path of linear_token_logps (csrc/cpu_linear.h: float32 tiles
by ATen's GEMM and an online fold per row) against the float64 path of the
same operator (the CPU reference, double throughout) on the same inputs:
log-probs, lse, entropy and the gradients of hidden, weight and bias, for
float32, bfloat16 and float16 inputs, with and without the logit transform,
V = 1, V not a multiple of the tile, ignored rows, a budget that forces many
tiles, bitwise repeatability, and the reference's errors."""
import pytest
import torch

import geopref_torch as gp
from geopref_torch.api import _logit_transform

ops = torch.ops.geopref
IGNORE = -100
# A budget of one row of logits (the least the operators accept): the tile is
# MIN_TILE_COLS = 256 columns (cpu_linear.h) by budget / (4·256) rows, so
# V = 1000 is 4 column chunks (the last one 232 wide) and the 41 scored rows
# of N = 48 are blocks of 3 (float32) or of 1 (16-bit inputs: half the budget).
N, H, V = 48, 40, 1000

TRANSFORMS = {
    "identity": dict(logit_scale=1.0, softcap=0.0, temperature=1.0),
    "cap": dict(logit_scale=1.3, softcap=4.0, temperature=0.7),
}

# Tolerances. The logits are float32 GEMM sums of H = 40 products of inputs
# exactly representable in float32 (16-bit inputs are widened, not rounded),
# |z′| <= ~12: their error is ~H·2^-24·|z| < 1e-5, the fold's (float32 exp,
# double sums) is smaller, so the per-token outputs (float32 whatever the
# input dtype) are within 2e-5 of the float64 path for every dtype. The
# gradients are also formed in float32 and then rounded to the input dtype:
# relative error up to half its epsilon (2^-8 bfloat16, 2^-11 float16, and for
# float32 the 1e-5-sized error above), plus an absolute floor of 1e-5·max|ref|
# for the entries that cancel towards 0.
TOKEN_ATOL = 2e-5
GRAD_REL = {torch.float32: 2e-5, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def inputs(dtype, n=N, v=V, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, H, generator=g).to(dtype)
    w = (torch.randn(v, H, generator=g) * 0.5).to(dtype)
    b = torch.randn(v, generator=g).to(dtype) if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    y[::7] = IGNORE  # ignored rows throughout
    up = torch.randn(n, generator=g)
    return h, w, b, y, up


def run(h, w, b, y, up, transform, chunk_bytes=1 << 30):
    """logps, lse and TRL's statistics (forward) and grad hidden, weight, bias
    (backward at upstream `up` on the log-probs and a fixed one on the
    entropy), by the operators themselves."""
    tr = _logit_transform(**transform)
    logps, lse, ent, lssp, mean, top1 = ops.linear_token_logps(
        h, w, b, y, IGNORE, True, chunk_bytes, True, tr, True, True, True)
    e_up = torch.randn(y.shape[0], generator=torch.Generator().manual_seed(99)).to(lse.dtype)
    gh, gw, gb = ops.linear_token_logps_grad(h, w, b, y, lse, up.to(lse.dtype), IGNORE,
                                             chunk_bytes, [True, True, b is not None], True, tr,
                                             e_up, ent)
    return dict(logps=logps, lse=lse, entropy=ent, log_sum_sq_probs=lssp, mean_logits=mean,
                is_top1=top1, grad_hidden=gh, grad_weight=gw,
                grad_bias=gb if b is not None else None)


def reference(h, w, b, y, up, transform):
    """The float64 path (the CPU reference) on the same (already rounded) values."""
    return run(h.double(), w.double(), None if b is None else b.double(), y, up.double(),
               transform)


def one_row_budget(v, dtype):
    elem = torch.empty((), dtype=dtype).element_size()
    per16 = 16 // elem
    return (v + per16 - 1) // per16 * per16 * elem


def assert_close_to_reference(got, ref, dtype,
                              keys=("logps", "lse", "entropy", "log_sum_sq_probs", "mean_logits")):
    for k in keys:
        assert got[k].dtype == torch.float32, k
        err = (got[k].double() - ref[k]).abs().max().item()
        assert err <= TOKEN_ATOL, f"{k}: max |Δ| = {err}"
    # The first arg-max of float32 logits against double ones: equal unless
    # two columns are within float32 rounding of each other (none are in
    # these seeded draws).
    assert torch.equal(got["is_top1"], ref["is_top1"])
    for k in ("grad_hidden", "grad_weight", "grad_bias"):
        if ref[k] is None:
            continue
        assert got[k].dtype == dtype, k
        r = ref[k]
        bound = GRAD_REL[dtype] * r.abs() + 1e-5 * r.abs().max()
        excess = ((got[k].double() - r).abs() - bound).max().item()
        assert excess <= 0, f"{k}: exceeds its bound by {excess} (max |ref| {r.abs().max()})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("budget", ["one_tile", "many_tiles"])
def test_matches_float64_reference(dtype, name, budget):
    h, w, b, y, up = inputs(dtype)
    chunk = 1 << 30 if budget == "one_tile" else one_row_budget(V, dtype)
    got = run(h, w, b, y, up, TRANSFORMS[name], chunk)
    ref = reference(h, w, b, y, up, TRANSFORMS[name])
    assert_close_to_reference(got, ref, dtype)
    # The fast path ran: the reference on float32 / 16-bit inputs would give
    # the float64 results rounded once, to the bit; float32 tiles do not.
    assert not torch.equal(got["logps"], ref["logps"].float())
    assert not torch.equal(got["grad_weight"], ref["grad_weight"].to(dtype))
    # Ignored rows: zero outputs, zero gradient rows.
    ign = y == IGNORE
    assert ign.any()
    for k in ("logps", "lse", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"):
        assert (got[k][ign] == 0).all()
    assert (got["grad_hidden"][ign] == 0).all()


def test_without_bias_and_wide_tile():
    # No bias; V = 3000 with a budget of ~two rows: 256-column tiles (V = 11·256
    # + 184), one row per tile block.
    h, w, _, y, up = inputs(torch.float32, v=3000, bias=False, seed=1)
    got = run(h, w, None, y, up, TRANSFORMS["cap"], 2 * one_row_budget(3000, torch.float32))
    assert_close_to_reference(got, reference(h, w, None, y, up, TRANSFORMS["cap"]),
                              torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_column_vocabulary(dtype):
    # V = 1: p = 1, ℓ = 0, H = 0, every gradient 0; lse = z′ itself.
    h, w, b, y, up = inputs(dtype, v=1, seed=2)
    got = run(h, w, b, y, up, TRANSFORMS["cap"])
    ref = reference(h, w, b, y, up, TRANSFORMS["cap"])
    assert_close_to_reference(got, ref, dtype)
    assert (ref["lse"][y != IGNORE].abs() > 0.1).any()  # lse is not trivially 0


def test_all_rows_ignored_and_empty():
    h, w, b, y, up = inputs(torch.float32)
    y = torch.full_like(y, IGNORE)
    got = run(h, w, b, y, up, TRANSFORMS["identity"])
    for k, x in got.items():
        assert (x == 0).all(), k
    got = run(h[:0], w, b, y[:0], up[:0], TRANSFORMS["identity"])
    assert got["logps"].shape == (0,) and got["grad_hidden"].shape == (0, H)
    assert (got["grad_weight"] == 0).all()


def test_statistics_through_the_api():
    # linear_token_logps (the public function) with autograd, bfloat16: every
    # statistic, upstreams on the log-probs and the entropy (the 16-bit
    # weight's gradient through the float32 accumulator of
    # linear_token_logps_accumulate, on the fast path).
    h, w, b, y, up = inputs(torch.bfloat16, seed=3)
    hh, ww, bb = (x.clone().requires_grad_() for x in (h, w, b))
    out = gp.linear_token_logps(hh, ww, y, IGNORE, bias=bb, softcap=4.0, logit_scale=1.3,
                                temperature=0.7,
                                outputs=("log_probs", "entropy", "log_sum_sq_probs",
                                         "mean_logits", "is_top1"))
    e_up = torch.randn(y.shape[0], generator=torch.Generator().manual_seed(99))
    ((out.log_probs * up).sum() + (out.entropy * e_up).sum()).backward()
    ref = reference(h, w, b, y, up, TRANSFORMS["cap"])
    got = dict(logps=out.log_probs, entropy=out.entropy,
               log_sum_sq_probs=out.log_sum_sq_probs, mean_logits=out.mean_logits,
               is_top1=out.is_top1.to(ref["is_top1"].dtype), grad_hidden=hh.grad,
               grad_weight=ww.grad, grad_bias=bb.grad)
    assert_close_to_reference(got, ref, torch.bfloat16,
                              keys=("logps", "entropy", "log_sum_sq_probs", "mean_logits"))


def test_sequence_logps_backward_uses_it():
    # fused_linear_logps (linear_sequence_logps) has the same per-token backward.
    h, w, b, y, _ = inputs(torch.float32, seed=4)
    off = torch.tensor([0, 20, 31, N])

    def grads(dtype):
        hh, ww, bb = (x.to(dtype).clone().requires_grad_() for x in (h, w, b))
        seq = gp.fused_linear_logps(hh, ww, y, off, bias=bb, softcap=4.0)
        (seq * torch.tensor([1.0, -2.0, 0.5], dtype=dtype)).sum().backward()
        return hh.grad, ww.grad, bb.grad

    for got, ref in zip(grads(torch.float32), grads(torch.float64)):
        bound = GRAD_REL[torch.float32] * ref.abs() + 1e-5 * ref.abs().max()
        assert ((got.double() - ref).abs() <= bound).all()


def test_bitwise_repeatable():
    # The fold's sums have a fixed order whatever the thread count; the GEMMs
    # are ATen's (MKL's), fixed for a given thread count only (cpu_linear.h).
    h, w, b, y, up = inputs(torch.float32, n=300, v=1500, seed=5)
    chunk = 64 * one_row_budget(1500, torch.float32)  # several row blocks and column chunks
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            first = run(h, w, b, y, up, TRANSFORMS["cap"], chunk)
            again = run(h, w, b, y, up, TRANSFORMS["cap"], chunk)
            for k in first:
                assert torch.equal(first[k], again[k]), (threads, k)
    finally:
        torch.set_num_threads(before)


def test_errors_match_the_reference():
    h, w, b, y, up = inputs(torch.float32)
    tr = _logit_transform(**TRANSFORMS["identity"])
    bad = y.clone()
    bad[1] = V
    for dt in (torch.float32, torch.float64):
        with pytest.raises(IndexError, match="label"):
            ops.linear_token_logps(h.to(dt), w.to(dt), b.to(dt), bad, IGNORE, False, 1 << 30,
                                   True, tr)
    lse = ops.linear_token_logps(h, w, b, y, IGNORE, False, 1 << 30, True, tr)[1]
    g = up.clone()
    g[1] = float("nan")
    with pytest.raises(ValueError, match="upstream"):
        ops.linear_token_logps_grad(h, w, b, y, lse, g, IGNORE, 1 << 30, [True, True, True],
                                    True, tr)
