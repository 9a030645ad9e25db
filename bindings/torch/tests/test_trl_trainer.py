"""GeoprefDPOTrainer (geopref_torch.trl) against TRL 1.16.0's own DPOTrainer.

Both trainers get the same tiny Llama (test_trl.py's builders: random weights,
a word-level tokenizer, no download), the same four preference pairs and the
same configuration, in float32 on CPU. For each configuration in CASES the
first batch's loss, every metric TRL logs (and no other metric name) and
every parameter's gradient must agree; a few configurations also train three
SGD steps and compare the logged losses and the parameters. The token metrics
(entropy, logits/*, mean_token_accuracy) and WPO's weights read geopref's
per-token statistics (linear_token_logps with outputs=).

Tolerances (as test_trl.py's, whose reasoning applies): TRL folds float32
logits tile by tile; geopref forms the logits from the same float32 hidden
states and reduces in double. The log-probs agree to about 1e-7 relative, the
losses and metrics (smooth in them) to 1e-5 relative / 1e-6 absolute, a
hundred times that; gradients, through the float32 backbone, to 1e-4 relative
and 1e-5 of the tensor's largest entry. A wrong form (summed instead of
averaged, a dropped term, a missing transform or weight) moves the loss by
1e-2 or more here. rewards/accuracies and mean_token_accuracy are compared
exactly (no margin or top-1 logit of this batch lies within 1e-4 of a tie).
"""
import copy
import math
import tempfile
import warnings

import pytest
import torch
import torch.nn.functional as F

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import geopref_torch  # noqa: E402
from geopref_torch.trl import (GeoprefDPOConfig, GeoprefDPOTrainer,  # noqa: E402
                               GeoprefPreferenceCollator)
from test_trl import BETA, DATA, TRL_VERSION, _models, _tokenizer  # noqa: E402

CASES = {
    "sigmoid": dict(loss_type=["sigmoid"]),
    "hinge": dict(loss_type=["hinge"]),
    "ipo (a string)": dict(loss_type="ipo"),
    "sigmoid_norm": dict(loss_type=["sigmoid_norm"]),
    "exo_pair": dict(loss_type=["exo_pair"], label_smoothing=1e-3),
    "nca_pair": dict(loss_type=["nca_pair"]),
    "robust": dict(loss_type=["robust"], label_smoothing=0.1),
    "bco_pair": dict(loss_type=["bco_pair"]),
    "sppo_hard": dict(loss_type=["sppo_hard"]),
    "aot": dict(loss_type=["aot"], label_smoothing=0.2),
    "aot_unpaired": dict(loss_type=["aot_unpaired"], label_smoothing=0.2),
    "apo_zero": dict(loss_type=["apo_zero"]),
    "apo_down": dict(loss_type=["apo_down"]),
    "discopop": dict(loss_type=["discopop"], discopop_tau=0.05),
    "sft": dict(loss_type=["sft"]),
    "sigmoid+ipo+sft": dict(loss_type=["sigmoid", "ipo", "sft"], loss_weights=[1.0, 0.3, 0.5]),
    "sigmoid js": dict(loss_type=["sigmoid"], f_divergence_type="js_divergence"),
    "sigmoid forward_kl": dict(loss_type=["sigmoid"], f_divergence_type="forward_kl"),
    "hinge alpha 0.3": dict(loss_type=["hinge"], f_divergence_type="alpha_divergence",
                            f_alpha_divergence_coef=0.3),
    "robust alpha 1": dict(loss_type=["robust"], label_smoothing=0.1,
                           f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0),
    # geopref averages before the transform: these run TRL's order in torch.
    "ipo js": dict(loss_type=["ipo"], f_divergence_type="js_divergence"),
    "sigmoid_norm+sft forward_kl": dict(loss_type=["sigmoid_norm", "sft"],
                                        f_divergence_type="forward_kl"),
    # TRL's coefficient above 1 (a negative geopref f_alpha): in torch too.
    "sigmoid+discopop alpha 1.5": dict(loss_type=["sigmoid", "discopop"],
                                       f_divergence_type="alpha_divergence",
                                       f_alpha_divergence_coef=1.5),
    # (TRL 1.16.0's use_weighting with "sft" raises in its own loss code.)
    "use_weighting": dict(loss_type=["sigmoid", "ipo"], use_weighting=True),
    "use_weighting exo_pair js": dict(loss_type=["exo_pair"], label_smoothing=0.01,
                                      use_weighting=True, f_divergence_type="js_divergence"),
    "ld_alpha": dict(loss_type=["sigmoid"], ld_alpha=0.5),
    "ld_alpha ipo+sft": dict(loss_type=["ipo", "sft"], ld_alpha=0.3),
    "precompute": dict(loss_type=["sigmoid"], precompute_ref_log_probs=True),
    "precompute ipo ld_alpha": dict(loss_type=["ipo"], precompute_ref_log_probs=True,
                                    ld_alpha=0.5),
}


@pytest.fixture(scope="module")
def setup():
    assert trl.__version__ == TRL_VERSION
    return _tokenizer(), datasets.Dataset.from_dict(DATA)


def _trainer(setup, cls, same_models=False, data=None, trainer_kwargs=None, model_config=None,
             **config):
    tok, ds = setup
    policy, ref = _models(len(tok))
    for m in (policy, ref):
        for key, value in (model_config or {}).items():
            setattr(m.config, key, value)
    if same_models:
        ref = copy.deepcopy(policy)
    if config.get("reference_free"):
        ref = None
    cfg_cls = GeoprefDPOConfig if cls is GeoprefDPOTrainer else trl.DPOConfig
    base = dict(output_dir=tempfile.mkdtemp(), report_to="none", bf16=False, use_cpu=True,
                per_device_train_batch_size=4, beta=BETA, disable_tqdm=True, save_strategy="no")
    base.update(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model=policy, ref_model=ref, args=cfg_cls(**base),
                   train_dataset=datasets.Dataset.from_dict(data) if data else ds,
                   processing_class=tok, **(trainer_kwargs or {}))


def _first_step(trainer, batch=None):
    """compute_loss on the first batch (TRL's data order is seeded), then
    backward: (loss, {metric: last value}, {parameter: grad}, batch)."""
    if batch is None:
        torch.manual_seed(0)
        batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
             if p.grad is not None}
    return loss.detach(), metrics, grads, batch


def _assert_same(case, trl_step, gp_step, same_keys=True):
    """Loss, metrics and gradients agree. same_keys: the two trainers log the
    same metric names (the stock DPOTrainer's); else (the recipes, whose
    trainers log names of their own) only TRL's, which geopref must log."""
    t_loss, t_metrics, t_grads, _ = trl_step
    g_loss, g_metrics, g_grads, _ = gp_step
    assert math.isfinite(t_loss.item())
    assert g_loss.item() == pytest.approx(t_loss.item(), rel=1e-5, abs=1e-6), case
    assert set(t_metrics) <= set(g_metrics), (case, set(t_metrics) - set(g_metrics))
    if same_keys:
        assert set(g_metrics) == set(t_metrics), (case, set(g_metrics) ^ set(t_metrics))
    for key, value in t_metrics.items():
        if key in ("rewards/accuracies", "mean_token_accuracy", "num_tokens"):
            assert g_metrics[key] == value, (case, key)
        else:
            assert g_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (case, key)
    assert set(g_grads) == set(t_grads)
    for name, g in t_grads.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(g_grads[name].float(), g, rtol=1e-4,
                                   atol=1e-5 * scale + 1e-7,
                                   msg=lambda m: f"{case}, {name} (max |g| {scale:.3g}): {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_first_step_matches_trl(setup, case):
    trl_step = _first_step(_trainer(setup, trl.DPOTrainer, **CASES[case]))
    # Each trainer's own batch (with precompute_ref_log_probs, its own reference log-probs).
    gp_step = _first_step(_trainer(setup, GeoprefDPOTrainer, **CASES[case]))
    assert torch.equal(gp_step[3]["input_ids"], trl_step[3]["input_ids"])
    _assert_same(case, trl_step, gp_step)


@pytest.mark.parametrize("config", [dict(loss_type=["sigmoid", "sft"]),
                                    dict(loss_type=["sigmoid"], use_weighting=True)])
def test_the_models_logit_transform(setup, config):
    """A soft-cap and a logit scale in the model's config (Gemma's
    final_logit_softcapping, Granite's logits_scaling, read as TRL 1.16.0's
    head reads them) reach geopref's loss, the reference, WPO's weights and
    the token metrics (entropy and logits/* of the transformed logits)."""
    cfg = dict(final_logit_softcapping=0.5, logits_scaling=0.8)
    kw = dict(config, model_config=cfg)
    trl_step = _first_step(_trainer(setup, trl.DPOTrainer, **kw))
    gp_step = _first_step(_trainer(setup, GeoprefDPOTrainer, **kw))
    _assert_same("logit transform", trl_step, gp_step)
    plain = _first_step(_trainer(setup, trl.DPOTrainer, **config))
    assert plain[0].item() != pytest.approx(trl_step[0].item(), rel=1e-2)  # the transform bites
    for key in ("entropy", "logits/chosen", "logits/rejected"):  # on the metrics too
        assert plain[1][key] != pytest.approx(trl_step[1][key], rel=1e-2), key


@pytest.mark.parametrize("case", ["sigmoid+ipo+sft", "ld_alpha ipo+sft", "use_weighting"])
def test_three_sgd_steps_match_trl(setup, case):
    """Losses logged at each step and the parameters after three SGD steps."""
    kw = dict(CASES[case], optim="sgd", learning_rate=0.1, max_steps=3, logging_steps=1,
              seed=7)
    runs = []
    for cls in (trl.DPOTrainer, GeoprefDPOTrainer):
        t = _trainer(setup, cls, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.train()
        logs = [h for h in t.state.log_history if "loss" in h]
        runs.append((logs, {n: p.detach().clone() for n, p in t.model.named_parameters()}))
    (t_logs, t_params), (g_logs, g_params) = runs
    assert len(t_logs) == len(g_logs) == 3
    for t, g in zip(t_logs, g_logs):
        for key in ("loss", "rewards/margins", "logps/chosen", "entropy", "logits/rejected"):
            assert g[key] == pytest.approx(t[key], rel=1e-4, abs=1e-5), (case, key)
    for name, p in t_params.items():
        # Three steps of lr 0.1 times gradients that agree to 1e-4 relative.
        torch.testing.assert_close(g_params[name], p, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{case}, {name}: {m}")


def test_a_wrong_form_is_caught(setup):
    """The comparison has teeth: TRL 0.28's IPO recipe (un-averaged) against
    TRL 1.16.0's averaged IPO is far off."""
    trl_step = _first_step(_trainer(setup, trl.DPOTrainer, loss_type=["ipo"]))
    gp = _trainer(setup, GeoprefDPOTrainer, loss_type=["ipo"],
                  geopref_kwargs=dict(average_logps=False))
    gp._plan = ([((False, False, "completion"), ["ipo"], [1.0])], [])
    gp_loss = _first_step(gp, batch=trl_step[3])[0]
    assert gp_loss.item() != pytest.approx(trl_step[0].item(), rel=1e-2)


def test_evaluate_and_a_plain_dpo_config(setup):
    """A trl.DPOConfig is accepted (geopref's options at their defaults), and
    evaluate() (TRL's prediction_step, no grad) logs the same eval metrics."""
    tok, ds = setup
    results = []
    for cls in (trl.DPOTrainer, GeoprefDPOTrainer):
        policy, ref = _models(len(tok))
        args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), report_to="none", bf16=False,
                             use_cpu=True, per_device_eval_batch_size=4, beta=BETA,
                             loss_type=["sigmoid_norm", "sft"], disable_tqdm=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = cls(model=policy, ref_model=ref, args=args, train_dataset=ds, eval_dataset=ds,
                    processing_class=tok)
            results.append(t.evaluate())
    trl_eval, gp_eval = results
    for key in ("eval_loss", "eval_rewards/margins", "eval_logps/chosen", "eval_entropy",
                "eval_logits/chosen", "eval_mean_token_accuracy"):
        assert gp_eval[key] == pytest.approx(trl_eval[key], rel=1e-5, abs=1e-6), key


# ---- what TRL lacks -------------------------------------------------------

SOFT = [1.0, 0.8, 0.3, 0.0]


def _soft_data(p):
    return dict(DATA, soft_label=list(p))


def test_soft_labels_reach_the_loss(setup):
    """gdpo with soft labels from the dataset column, through TRL's column
    filtering and the collator: the trainer's loss equals geopref's dpo_loss
    on the policy's logits with those labels, and p = 0.5 everywhere gives
    log 2 and no gradient (the margin is multiplied by 2p - 1 = 0)."""
    t = _trainer(setup, GeoprefDPOTrainer, data=_soft_data(SOFT), loss_type=["gdpo"])
    loss, metrics, _, batch = _first_step(t)
    assert "soft_label" in batch and sorted(batch["soft_label"].tolist()) == sorted(SOFT)
    labels = t._labels(batch)
    policy, ref = t.model, t.ref_model
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        ref_logps = geopref_torch.sequence_logps(ref(**kw).logits, labels)
        out = geopref_torch.dpo_loss(policy(**kw).logits, labels, loss_type="gdpo", beta=BETA,
                                     ref_logps=ref_logps, soft_labels=batch["soft_label"])
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    assert metrics["calibration_error"] == pytest.approx(out.metrics["calibration_error"].item(),
                                                         rel=1e-5)
    dpo = geopref_torch.dpo_loss(policy(**kw).logits, labels, beta=BETA, ref_logps=ref_logps)
    assert loss.item() != pytest.approx(dpo.loss.item(), rel=1e-2)  # not DPO in disguise

    half = _trainer(setup, GeoprefDPOTrainer, data=_soft_data([0.5] * 4), loss_type=["gdpo"])
    h_loss, _, h_grads, _ = _first_step(half)
    assert h_loss.item() == pytest.approx(math.log(2), rel=1e-7)  # a float32 loss
    assert all(g.abs().max().item() == 0 for g in h_grads.values())


def test_soft_labels_train_end_to_end(setup):
    """gdpo and cdpo with soft labels, and a geometric hinge, train two steps."""
    for loss_type, extra in ((["gdpo", "sft"], {}), (["cdpo"], {}),
                             (["hinge"], dict(geometric=True))):
        t = _trainer(setup, GeoprefDPOTrainer, data=_soft_data(SOFT), loss_type=loss_type,
                     optim="sgd", learning_rate=0.1, max_steps=2, logging_steps=1, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.train()
        logs = [h for h in t.state.log_history if "loss" in h]
        assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs), loss_type
        assert all("calibration_error" in h for h in logs)


def test_soft_label_column_out_of_range(setup):
    with pytest.raises(ValueError, match="soft-label column 'soft_label'.*\\[0, 1\\]"):
        _trainer(setup, GeoprefDPOTrainer, data=_soft_data([1.0, 1.5, 0.0, 0.5]),
                 loss_type=["gdpo"])
    collator = GeoprefPreferenceCollator(pad_token_id=0, soft_label_column="soft_label")
    example = dict(prompt_ids=[3], chosen_ids=[4], rejected_ids=[5])
    with pytest.raises(ValueError, match="soft-label column 'soft_label'.*-0.1"):
        collator([dict(example, soft_label=0.5), dict(example, soft_label=-0.1)])
    with pytest.raises(ValueError, match="soft-label column"):
        collator([dict(example, soft_label=float("nan"))])


def test_a_soft_label_loss_without_the_column(setup):
    """gdpo with no soft labels in the batch (no column, or a caller's
    collator that drops it) is an error, never DPO."""
    t = _trainer(setup, GeoprefDPOTrainer, loss_type=["gdpo"])
    with pytest.raises(ValueError, match="reads soft labels.*'soft_label'"):
        _first_step(t)


def test_own_margin_loss(setup):
    """A caller's margin loss, here DPO's: ["sft"] + margin_loss equals TRL's
    ["sigmoid", "sft"] in loss and gradients."""
    trl_step = _first_step(_trainer(setup, trl.DPOTrainer, loss_type=["sigmoid", "sft"]))

    def dpo(h, p):
        return -F.logsigmoid(BETA * h)
    gp = _trainer(setup, GeoprefDPOTrainer, loss_type=["sft"],
                  trainer_kwargs=dict(margin_loss=dpo))
    _assert_same("margin_loss", trl_step, _first_step(gp, batch=trl_step[3]))


# ---- what users hit with TRL 0.28's recipe ----------------------------------

@pytest.mark.parametrize("config", [dict(loss_type=["sigmoid"]),
                                    dict(loss_type=["ipo", "sft"]),
                                    dict(loss_type=["sigmoid"], precompute_ref_log_probs=True)])
def test_ties_count_as_inaccurate(setup, config):
    """With the policy equal to its reference every reward is exactly 0 and
    TRL logs rewards/accuracies 0 (chosen > rejected is false on a tie); the
    policy's and the reference's log-probs come from the same geopref path,
    so no rounding noise turns ties into wins."""
    t = _trainer(setup, GeoprefDPOTrainer, same_models=True, **config)
    _, metrics, _, _ = _first_step(t)
    assert metrics["rewards/accuracies"] == 0.0
    assert metrics["rewards/margins"] == 0.0 and metrics["rewards/chosen"] == 0.0


def test_bf16_runs_under_the_trainers_autocast(setup):
    """TRL 1.16.0 defaults to bf16, also on CPU. The backbone's forward and
    the head must run under the trainer's autocast, as TRL's do: a hook on the
    first decoder layer sees autocast on and a bfloat16 output in both
    trainers, and one bf16 step logs the same loss to bf16's precision
    (2^-8 relative per rounding; 2e-2 is a few of them)."""
    seen = {}
    losses = {}
    for cls in (trl.DPOTrainer, GeoprefDPOTrainer):
        t = _trainer(setup, cls, loss_type=["sigmoid"], bf16=True, max_steps=1, logging_steps=1,
                     optim="sgd")
        layer = t.model.model.layers[0].self_attn.q_proj

        def hook(module, args, output, name=cls.__name__):
            out = output[0] if isinstance(output, tuple) else output
            seen.setdefault(name, set()).add((torch.is_autocast_enabled("cpu"), out.dtype))
        layer.register_forward_hook(hook)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.train()
        losses[cls.__name__] = [h for h in t.state.log_history if "loss" in h][0]["loss"]
    assert seen["DPOTrainer"] == {(True, torch.bfloat16)}
    assert seen["GeoprefDPOTrainer"] == {(True, torch.bfloat16)}
    assert losses["GeoprefDPOTrainer"] == pytest.approx(losses["DPOTrainer"], rel=2e-2)


# ---- bad input ----------------------------------------------------------------

def test_bad_configurations(setup):
    with pytest.raises(ValueError, match="unknown loss_type 'sigmoidd'"):
        _trainer(setup, GeoprefDPOTrainer, loss_type=["sigmoidd"])
    with pytest.raises(ValueError, match="no f-divergence form of 'nca_pair'"):
        _trainer(setup, GeoprefDPOTrainer, loss_type=["nca_pair"],
                 f_divergence_type="js_divergence")
    with pytest.raises(NotImplementedError, match="geometric=True with 'ipo'"):
        _trainer(setup, GeoprefDPOTrainer, loss_type=["ipo"], geometric=True,
                 f_divergence_type="js_divergence")
    with pytest.raises(ValueError, match="sft_labels"):
        _trainer(setup, GeoprefDPOTrainer, sft_labels="prompt")


def test_a_batch_of_the_wrong_shape(setup):
    """A caller's collator with a mask of another shape, or soft labels that
    are not one per pair: clear errors naming the problem."""
    t = _trainer(setup, GeoprefDPOTrainer, data=_soft_data(SOFT), loss_type=["gdpo"])
    torch.manual_seed(0)
    batch = next(iter(t.get_train_dataloader()))
    with pytest.raises(ValueError, match="completion_mask / attention_mask of their shape"):
        _first_step(t, batch=dict(batch, completion_mask=batch["completion_mask"][:, 1:]))
    with pytest.raises(ValueError, match=r"must give \[P\] = \[4\] values"):
        _first_step(t, batch=dict(batch, soft_label=batch["soft_label"][:3]))
    with pytest.raises(ValueError, match=r"must give \[P\] = \[4\] values in \[0, 1\]"):
        _first_step(t, batch=dict(batch, soft_label=batch["soft_label"] + 1))


def test_a_model_without_an_output_embedding(setup):
    t = _trainer(setup, GeoprefDPOTrainer)
    t.model.get_output_embeddings = lambda: None
    with pytest.raises(ValueError, match="no output embedding"):
        _first_step(t)


# ---- recipes: TRL 1.16.0's experimental CPO (and SimPO) and ORPO trainers ----

RECIPES = {
    # name: (trainer module, its config keywords, GeoprefDPOConfig keywords)
    "cpo": ("cpo", dict(), dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])),
    "cpo ipo alpha 0.5": ("cpo", dict(loss_type="ipo", cpo_alpha=0.5),
                          dict(loss_type=["ipo", "sft"], loss_weights=[1.0, 0.5])),
    "cpo hinge": ("cpo", dict(loss_type="hinge"),
                  dict(loss_type=["hinge", "sft"], loss_weights=[1.0, 1.0])),
    "simpo": ("cpo", dict(loss_type="simpo", simpo_gamma=0.5),
              dict(loss_type=["simpo", "sft"], geopref_kwargs=dict(gamma=0.5))),
    "orpo": ("orpo", dict(), dict(loss_type=["orpo", "sft"], sft_labels="prompt_and_completion")),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipes_match_trl_experimental(setup, recipe):
    """Reference-free recipes against TRL 1.16.0's trl.experimental CPOTrainer
    and ORPOTrainer on the same tokens (their tokenisation gives the same
    sequences here; checked): loss, rewards/logps metrics (in the form those
    trainers log them) and gradients, with test_trl's tolerances."""
    module, theirs, ours = RECIPES[recipe]
    exp = pytest.importorskip(f"trl.experimental.{module}")
    tok, ds = setup
    trainer_cls = exp.CPOTrainer if module == "cpo" else exp.ORPOTrainer
    config_cls = exp.CPOConfig if module == "cpo" else exp.ORPOConfig
    policy, _ = _models(len(tok))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = trainer_cls(model=policy, args=config_cls(
            output_dir=tempfile.mkdtemp(), report_to="none", bf16=False, use_cpu=True,
            per_device_train_batch_size=4, beta=BETA, **theirs), train_dataset=ds,
            processing_class=tok)
        torch.manual_seed(0)
        batch = next(iter(t.get_train_dataloader()))
        t.model.train()
        loss, metrics = t.get_batch_loss_metrics(t.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters()}
    metrics = {k: float(v) for k, v in metrics.items() if k.startswith(("rewards/", "logps/"))}

    gp = _trainer(setup, GeoprefDPOTrainer, reference_free=True, **ours)
    assert gp.ref_model is None
    g_loss, g_metrics, g_grads, g_batch = _first_step(gp)
    n = batch["chosen_input_ids"].shape[0]
    assert torch.equal(g_batch["input_ids"][0, :batch["chosen_input_ids"].shape[1]],
                       batch["chosen_input_ids"][0])
    assert g_batch["input_ids"].shape[0] == 2 * n
    _assert_same(recipe, (loss.detach(), metrics, grads, batch),
                 (g_loss, g_metrics, g_grads, g_batch), same_keys=False)


@pytest.mark.parametrize("token_metrics,use_weighting", [(True, False), (False, True),
                                                         (False, False), (True, True)])
def test_only_the_statistics_needed(setup, monkeypatch, token_metrics, use_weighting):
    """One geopref call of linear_token_logps per step, asking only for what
    the configuration reads (WPO's weights: log_sum_sq_probs; the metrics:
    entropy, mean_logits, is_top1), none without either; token_metrics=False
    logs none of TRL's token metrics and keeps WPO's loss TRL's."""
    import geopref_torch.trl.trainer as module
    calls = []

    def recording(*args, **kwargs):
        calls.append(tuple(kwargs.get("outputs") or ()))
        return geopref_torch.linear_token_logps(*args, **kwargs)
    monkeypatch.setattr(module, "linear_token_logps", recording)
    kw = dict(loss_type=["sigmoid"], use_weighting=use_weighting)
    gp = _first_step(_trainer(setup, GeoprefDPOTrainer, token_metrics=token_metrics, **kw))
    wanted = (({"log_probs", "log_sum_sq_probs"} if use_weighting else set())
              | ({"entropy", "mean_logits", "is_top1"} if token_metrics else set()))
    assert [set(c) for c in calls] == ([wanted] if wanted else [])
    trl_step = _first_step(_trainer(setup, trl.DPOTrainer, **kw))
    token_keys = {"entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy"}
    assert token_keys <= set(trl_step[1])
    if token_metrics:
        _assert_same("statistics", trl_step, gp)
    else:
        assert set(gp[1]) == set(trl_step[1]) - token_keys
        assert gp[0].item() == pytest.approx(trl_step[0].item(), rel=1e-5, abs=1e-6)
