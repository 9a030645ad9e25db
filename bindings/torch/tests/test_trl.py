"""geopref's losses against the real TRL 1.x DPOTrainer (the pinned release,
installed by scripts/test-torch.sh; skipped when TRL is absent).

A tiny Llama built here (random weights, a word-level tokenizer, no download)
and four preference pairs. For each TRL configuration in CASES, TRL's own
DPOTrainer.compute_loss gives the loss, its logged metrics and the policy's
parameter gradients; geopref computes the same loss from the policy's logits
(dpo_loss, with the options docs/math.md's table "TRL v1.16.0, loss by loss"
names) and the reference model's (sequence_logps). The two must agree: this is
the table checked against the package it describes.

Tolerances. TRL folds the per-token log-probs in float32 from its own tiled
H·Wᵀ (trl/kernels/chunked_logprob.py); geopref's CPU operator reads the
float32 logits of the model's forward and works in double. Each log-prob
carries a float32 rounding of about 1e-7 relative (V = 20 terms, |log p| <
10), a sequence sums at most 9 of them and the losses are smooth in them:
1e-5 relative (and 1e-6 absolute near 0) is about a hundred times that and
far below any real difference (a wrong form or transform moves the loss by
1e-2 or more here). Gradients pass through the same float32 backbone twice
(TRL's backward and torch's through geopref's logit gradient): 1e-4
relative, and 1e-5 of the tensor's largest component absolute (an element
is a sum of products that cancel: its float32 error is relative to the
largest terms, not to itself).
"""
import math
import tempfile
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

import geopref_torch  # noqa: E402
import tiny_lm  # noqa: E402

TRL_VERSION = "1.16.0"  # the pin in scripts/test-torch.sh; docs/math.md describes it

BETA = 0.1
_tokenizer = tiny_lm.tokenizer


def _models(vocab_size):
    return tiny_lm.policy_and_reference(vocab_size)


DATA = tiny_lm.PREFERENCES


def same_name(*names, trl=None, geopref=None):
    """Cases of losses that TRL and geopref call by the same name, each with
    TRL's keywords trl and geopref's keywords geopref besides loss_type, a
    reference, and TRL's rewards/* metrics in geopref's form."""
    return {n: (dict(loss_type=[n], **(trl or {})), dict(loss_type=n, **(geopref or {})), True,
                True) for n in names}


# (TRL DPOConfig keywords, geopref dpo_loss keywords, whether a reference is
# read, whether TRL's rewards/* metrics are in geopref's form)
CASES = {
    "sigmoid": (dict(loss_type=["sigmoid"]), dict(loss_type="dpo"), True, True),
    **same_name("hinge", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down"),
    **same_name("aot", "aot_unpaired", trl=dict(label_smoothing=0.2),
                geopref=dict(soft_labels=0.8)),
    "ipo": (dict(loss_type=["ipo"]), dict(loss_type="ipo", average_logps=True), True, False),
    "sigmoid_norm": (dict(loss_type=["sigmoid_norm"]), dict(loss_type="dpo", average_logps=True),
                     True, False),
    "exo_pair": (dict(loss_type=["exo_pair"], label_smoothing=1e-3),
                 dict(loss_type="exo_pair", epsilon=1e-3), True, True),
    "robust": (dict(loss_type=["robust"], label_smoothing=0.1),
               dict(loss_type="robust", epsilon=0.1), True, True),
    "discopop": (dict(loss_type=["discopop"], discopop_tau=0.05),
                 dict(loss_type="discopop", tau=0.05), True, True),
    "sft": (dict(loss_type=["sft"]), dict(loss_type="sft"), False, True),
    "sigmoid+sft": (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
                    dict(loss_type=["dpo", "sft"], loss_weights=[1.0, 0.5]), True, True),
    "sigmoid js_divergence": (dict(loss_type=["sigmoid"], f_divergence_type="js_divergence"),
                              dict(loss_type="dpo", margin_transform="js"), True, True),
    "sigmoid forward_kl": (dict(loss_type=["sigmoid"], f_divergence_type="forward_kl"),
                           dict(loss_type="dpo", margin_transform="alpha", f_alpha=1.0),
                           True, True),
    "hinge alpha_divergence 0.3": (
        dict(loss_type=["hinge"], f_divergence_type="alpha_divergence",
             f_alpha_divergence_coef=0.3),
        dict(loss_type="hinge", margin_transform="alpha", f_alpha=0.7), True, True),
    "robust alpha_divergence 1": (
        dict(loss_type=["robust"], label_smoothing=0.1, f_divergence_type="alpha_divergence",
             f_alpha_divergence_coef=1.0),
        dict(loss_type="robust", epsilon=0.1), True, True),
}


@pytest.fixture(scope="module")
def setup():
    assert trl.__version__ == TRL_VERSION, (
        f"TRL {trl.__version__} installed; these tests and docs/math.md describe {TRL_VERSION}")
    tok = _tokenizer()
    ds = datasets.Dataset.from_dict(DATA)
    return tok, ds


def _trl_step(setup, trl_kwargs):
    """TRL's loss, metrics and policy gradients on the first batch of 4 pairs."""
    tok, ds = setup
    policy, ref = _models(len(tok))
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), report_to="none", bf16=False,
                         use_cpu=True, per_device_train_batch_size=4, beta=BETA,
                         **trl_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds,
                                 processing_class=tok)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
             if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    # The same weights, untouched by TRL (it trains nothing in compute_loss).
    return loss.detach(), metrics, grads, batch, trainer.model, trainer.ref_model


def _geopref_step(batch, policy, ref, gp_kwargs, with_ref):
    """geopref's loss from the policy's logits and the reference's log-probs."""
    ids, mask = batch["input_ids"], batch["completion_mask"]
    labels = torch.full_like(ids, -100)
    # Row t scores token t + 1 when that token is in the completion.
    labels[:, :-1] = torch.where(mask[:, 1:] == 1, ids[:, 1:], torch.full_like(ids[:, 1:], -100))
    policy.zero_grad(set_to_none=True)
    logits = policy(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    ref_logps = None
    if with_ref:
        with torch.no_grad():
            ref_logits = ref(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        ref_logps = geopref_torch.sequence_logps(
            ref_logits, labels, average_logps=bool(gp_kwargs.get("average_logps", False)))
    out = geopref_torch.dpo_loss(logits, labels, beta=BETA, ref_logps=ref_logps, **gp_kwargs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in policy.named_parameters()
             if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("case", list(CASES))
def test_dpo_trainer_loss_and_gradients(setup, case):
    trl_kwargs, gp_kwargs, with_ref, same_metric_form = CASES[case]
    trl_loss, trl_metrics, trl_grads, batch, policy, ref = _trl_step(setup, trl_kwargs)
    out, gp_grads = _geopref_step(batch, policy, ref, dict(gp_kwargs), with_ref)
    assert math.isfinite(trl_loss.item())
    assert out.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6), case
    assert set(gp_grads) == set(trl_grads)
    for name, g in trl_grads.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(gp_grads[name], g, rtol=1e-4, atol=1e-5 * scale + 1e-7,
                                   msg=lambda m: f"{case}, {name} (max |g| {scale:.3g}): {m}")
    if with_ref and same_metric_form:
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                    "logps/rejected"):
            assert out.metrics[key].item() == pytest.approx(trl_metrics[key], rel=1e-5,
                                                             abs=1e-6), (case, key)
        assert out.metrics["rewards/accuracies"].item() == trl_metrics["rewards/accuracies"]


def test_a_wrong_mapping_is_caught(setup):
    """The comparison has teeth: ipo without averaging (TRL 0.28's recipe
    under TRL 1.x) and sigmoid_norm as plain dpo are both far off."""
    for trl_kwargs, gp_kwargs in ((dict(loss_type=["ipo"]), dict(loss_type="ipo",
                                                                   average_logps=False)),
                                  (dict(loss_type=["sigmoid_norm"]), dict(loss_type="dpo"))):
        trl_loss, _, _, batch, policy, ref = _trl_step(setup, trl_kwargs)
        out, _ = _geopref_step(batch, policy, ref, gp_kwargs, True)
        assert out.loss.item() != pytest.approx(trl_loss.item(), rel=1e-3)
