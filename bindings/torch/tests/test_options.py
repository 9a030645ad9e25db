"""The options (GEOPREF_OPTIONS_FIELDS) through geopref_torch: every field of
the library's list is a keyword of dpo_loss and fused_linear_preference_loss
(checked here against OPTIONS_FIELDS, read from the compiled library) and is
listed in the package's README; the options the package reaches since the
list (weighted combinations, the margin transform, the geometric form,
bco_delta, the data-parallel nll_tokens / nll_weight) against their
definitions in docs/math.md §5 and docs/distributed.md, in float64, with the
gradients with respect to the logits; gradcheck in float64. CPU.
"""
import inspect
import os

import pytest
import torch
import torch.nn.functional as F

import geopref_torch as gp
import plain

P, T, V = 3, 5, 7


def problem(seed=5):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2 * P, T, V, generator=g, dtype=torch.float64) * 2.0)
    labels = torch.randint(0, V, (2 * P, T), generator=g)
    labels[torch.rand(2 * P, T, generator=g) < 0.25] = -100
    labels[:, 0] = 1  # every sequence scores a token
    ref = torch.randn(2 * P, generator=g, dtype=torch.float64) * 2.0
    soft = torch.rand(P, generator=g, dtype=torch.float64)
    return logits, labels, ref, soft


def flat(logits, labels):
    off = torch.arange(2 * P + 1) * T
    return logits.reshape(-1, V), labels.reshape(-1), off


def value_and_grad(fn, logits):
    z = logits.clone().requires_grad_(True)
    loss = fn(z)
    loss.sum().backward()
    return loss.detach(), z.grad


# ---- reachability: one keyword per field, each in the README.

def test_every_field_of_the_list_is_a_keyword():
    assert len(gp.OPTIONS_FIELDS) == 19  # a new field: a new keyword, and this count
    for fn in (gp.dpo_loss, gp.fused_linear_preference_loss):
        params = inspect.signature(fn).parameters
        missing = [f.name for f in gp.OPTIONS_FIELDS if f.keyword not in params]
        assert not missing, f"{fn.__name__} has no keyword for the fields {missing}"
        assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in gp.OPTIONS_KEYWORDS)
    # The packed list is as wide as the library says, and its defaults are
    # the library's (options{}).
    assert len(gp.pack_options()) == sum(f.width for f in gp.OPTIONS_FIELDS)


def test_the_readme_lists_every_option():
    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    for field in gp.OPTIONS_FIELDS:
        assert f"`{field.keyword}`" in text, f"README.md does not list `{field.keyword}`"
        assert f"`{field.name}`" in text, f"README.md does not name the field `{field.name}`"


def test_bad_option_values():
    logits, labels, ref, _ = problem()
    with pytest.raises(ValueError, match="margin_transform must be one of"):
        gp.dpo_loss(logits, labels, ref_logps=ref, margin_transform="kl")
    with pytest.raises(ValueError, match="2 loss_weights for 3 losses"):
        gp.dpo_loss(logits, labels, ref_logps=ref, loss_type=["dpo", "ipo", "sft"],
                    loss_weights=[1, 2])
    with pytest.raises(ValueError, match="at most 8 losses"):
        gp.dpo_loss(logits, labels, ref_logps=ref, loss_type=["dpo"] * 9)
    with pytest.raises(ValueError, match="invalid loss option"):
        gp.dpo_loss(logits, labels, ref_logps=ref, margin_transform="alpha", f_alpha=0.0)
    with pytest.raises(ValueError, match="invalid loss option"):
        gp.dpo_loss(logits, labels, ref_logps=ref, loss_type="nca_pair", geometric=True)
    # The raw operator checks the packed list itself.
    z, y, off = flat(logits, labels)
    bad = gp.pack_options()
    bad[0] = 0.5  # the loss type, not an index
    with pytest.raises(ValueError, match="options field type must be an integer"):
        torch.ops.geopref.pref_loss(z, y, off, None, None, ref, None, None, bad, True,
                                    [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="options must hold"):
        torch.ops.geopref.pref_loss(z, y, off, None, None, ref, None, None, bad[:-1], True,
                                    [1.0, 0.0, 1.0])


# ---- values and gradients against definitions.

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_combination_is_the_weighted_sum_of_its_terms(reduction):
    logits, labels, ref, soft = problem(7)
    terms, ws = ["dpo", "ipo", "sft", "bco_pair"], [0.5, 2.0, 0.25, -1.0]
    kw = dict(soft_labels=soft, reduction=reduction, average_logps=False, beta=0.3,
              bco_delta=0.2)
    both, g_both = value_and_grad(
        lambda z: gp.dpo_loss(z, labels, ref_logps=ref, loss_type=terms, loss_weights=ws,
                              **kw).loss, logits)
    total, g_total = 0.0, torch.zeros_like(logits)
    for t, w in zip(terms, ws):
        r = None if t == "sft" else ref  # sft alone takes no reference
        v, g = value_and_grad(lambda z: gp.dpo_loss(z, labels, ref_logps=r, loss_type=t,
                                                    **kw).loss, logits)
        total, g_total = total + w * v, g_total + w * g
    torch.testing.assert_close(both, total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_both, g_total, rtol=1e-12, atol=1e-12)
    # A list of one name without weights is a combination of one term: the loss itself.
    one = gp.dpo_loss(logits, labels, ref_logps=ref, loss_type=["dpo"], **kw).loss
    torch.testing.assert_close(one, gp.dpo_loss(logits, labels, ref_logps=ref, loss_type="dpo",
                                                 **kw).loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("plain_loss,geometric_loss", [("dpo", "gdpo"), ("ipo", "gipo"),
                                                        ("ropo", "gropo")])
def test_geometric_is_the_g_loss(plain_loss, geometric_loss):
    logits, labels, ref, soft = problem(9)
    kw = dict(ref_logps=ref, soft_labels=soft, average_logps=False, beta=0.4, alpha=0.8,
              gamma=0.3)
    a, ga = value_and_grad(lambda z: gp.dpo_loss(z, labels, loss_type=plain_loss,
                                                 geometric=True, **kw).loss, logits)
    b, gb = value_and_grad(lambda z: gp.dpo_loss(z, labels, loss_type=geometric_loss,
                                                 **kw).loss, logits)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def against_formula(loss_of, formula, logits, labels, ref):
    """loss_of(logits) (geopref's loss) against formula(rho), rho = L - ref
    the log-ratios of the sequences' plain log-probs L (not averaged): the
    value and the gradient with respect to the logits, both differentiated
    in float64 (hence 1e-10 / 1e-9 relative: the same sums in another
    order)."""
    _, y, off = flat(logits, labels)

    def expected(zz):
        L, _ = plain.sequence_logps(zz.reshape(-1, V), y, off, False)
        return formula(L - ref)

    got, g_got = value_and_grad(loss_of, logits)
    want, g_want = value_and_grad(expected, logits)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)


def phi(rho, transform, a):
    # docs/math.md §5, margin transforms (no exponent reaches the cap here).
    if transform == "js":
        return F.logsigmoid(rho)
    if transform == "alpha":
        return -torch.exp(-a * rho) / a
    return rho


@pytest.mark.parametrize("transform,f_alpha", [("reverse_kl", 1.0), ("js", 1.0), ("alpha", 1.0),
                                               ("alpha", 0.5)])
@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_margin_transform_against_its_formula(transform, f_alpha, loss):
    logits, labels, ref, soft = problem(11)
    beta = 0.6

    def formula(rho):
        h = phi(rho[:P], transform, f_alpha) - phi(rho[P:], transform, f_alpha)
        f = plain.MARGIN_LOSSES[loss](h, soft, dict(beta=beta, alpha=1.0, gamma=0.0,
                                                    epsilon=0.0, tau=0.05))
        return f.mean()

    against_formula(lambda zz: gp.dpo_loss(
        zz, labels, ref_logps=ref, soft_labels=soft, loss_type=loss, beta=beta,
        average_logps=False, margin_transform=transform, f_alpha=f_alpha).loss, formula,
        logits, labels, ref)


@pytest.mark.parametrize("delta", [0.0, 0.7, -1.2])
def test_bco_delta_against_its_formula(delta):
    logits, labels, ref, _ = problem(13)
    beta = 0.5

    def formula(rho):
        # docs/math.md §5: −log σ(z_w − δ) − log σ(δ − z_l), z = β ρ
        return (F.softplus(-(beta * rho[:P] - delta)) + F.softplus(beta * rho[P:] - delta)).mean()

    against_formula(lambda zz: gp.dpo_loss(
        zz, labels, ref_logps=ref, loss_type="bco_pair", beta=beta, bco_delta=delta).loss,
        formula, logits, labels, ref)


@pytest.mark.parametrize("terms", [["sft"], ["dpo", "sft"]])
def test_nll_tokens_and_weight_sum_over_ranks(terms):
    """Two simulated ranks, each with some of the pairs: with the global token
    count and weight sum (docs/distributed.md) and reduction normalizer = the
    global pair count, the ranks' losses and gradients sum to the one-process
    mean."""
    logits, labels, ref, _ = problem(17)
    z, y, off = flat(logits, labels)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    ws = [1.0] * len(terms)
    r = None if terms == ["sft"] else ref
    kw = dict(ref_logps=r, loss_type=terms, loss_weights=ws, average_logps=False)
    whole, g_whole = value_and_grad(lambda zz: gp.dpo_loss(zz, y, off, weights=weights,
                                                           **kw).loss, z)
    counts = (y.reshape(2 * P, T) != -100).sum(1).double()
    n_g, w_g = float(counts[:P].sum()), float(weights.sum())
    total, g_total = 0.0, torch.zeros_like(z)
    for ranks in ([0], [1, 2]):
        pairs = torch.tensor([[i, P + i] for i in ranks])
        v, g = value_and_grad(lambda zz: gp.dpo_loss(
            zz, y, off, pairs=pairs, weights=weights[ranks], normalizer=float(P),
            nll_tokens=n_g, nll_weight=w_g, **kw).loss, z)
        total, g_total = total + v, g_total + g
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_total, g_whole, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="invalid reduction"):
        gp.dpo_loss(z, y, off, reduction="none", nll_tokens=n_g, nll_weight=w_g, **kw)


def test_fused_linear_reaches_the_options():
    """fused_linear_preference_loss with the new options equals dpo_loss on
    hidden · weightᵀ (the CPU path forms the logits whole)."""
    g = torch.Generator().manual_seed(3)
    H = 6
    hidden = torch.randn(2 * P, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    _, labels, ref, soft = problem(19)
    for kw in (dict(loss_type=["dpo", "ipo"], loss_weights=[1.0, 0.3], margin_transform="js",
                    geometric=True),
               dict(loss_type=["dpo", "sft", "bco_pair"], bco_delta=0.4, normalizer=2.0,
                    nll_tokens=9.0, nll_weight=2.5, margin_transform="alpha", f_alpha=0.5)):
        kw.update(ref_logps=ref, soft_labels=soft, average_logps=False, beta=0.4)
        a = gp.fused_linear_preference_loss(hidden, weight, labels, **kw).loss
        b = gp.dpo_loss(hidden @ weight.T, labels, **kw).loss
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    logits, labels, ref, soft = problem(23)
    z = logits[:, :3].clone().requires_grad_(True)
    y = labels[:, :3]

    # (ipo under the alpha transform reaches values of 1e7 on these logits:
    # a finite difference cannot check it; its value and gradient are checked
    # against the formula above.)
    for kw in (dict(loss_type=["dpo", "ipo"], margin_transform="js", geometric=True),
               dict(loss_type=["dpo", "gdpo"], margin_transform="alpha", f_alpha=0.7),
               dict(loss_type=["dpo", "sft", "bco_pair"], margin_transform="js", bco_delta=0.3)):
        def fn(zz):
            return gp.dpo_loss(zz, y, ref_logps=ref, soft_labels=soft, loss_weights=[1.0, 0.5, 2.0][
                :len(kw["loss_type"])], average_logps=False, **kw).loss

        assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_compile_with_the_new_options():
    logits, labels, ref, soft = problem(29)

    def fn(z):
        return gp.dpo_loss(z, labels, ref_logps=ref, soft_labels=soft, loss_type=["dpo", "ipo"],
                           loss_weights=[1.0, 0.5], margin_transform="js",
                           average_logps=False).loss

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, ga = value_and_grad(compiled, logits)
    b, gb = value_and_grad(fn, logits)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
