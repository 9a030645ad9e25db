"""geopref_torch.trl: geopref's fused LM head against TRL 1.16.0's own
(trl.trainer.utils.add_fused_lm_head), on a tiny randomly initialised Llama
(tests/tiny_lm.py; nothing downloaded), and the stock DPOTrainer,
GRPOTrainer and SFTTrainer run with either head.

Tolerances (float32 on CPU throughout). TRL's head projects in float32
tiles and folds the statistics in float32 (trl/kernels/chunked_logprob.py,
its torch fold on CPU); geopref's CPU operator works in double from the same
float32 hidden states and weight. Per-token outputs therefore differ by
float32 rounding of sums of V = 19 terms of size |z'| < 10: 1e-5 relative
and absolute bounds it with a margin of ~10. Parameter gradients go through
the float32 backbone's backward from slightly different upstreams: 1e-4
relative and 1e-5 of the tensor's largest element absolute (an element is a
sum of products that cancel; its error is relative to the largest terms), as
test_trl.py argues for the same model. Trainer losses and logged metrics are
smooth functions of those outputs: 1e-5 relative (1e-6 absolute near 0).
After several steps the parameters are compared with plain SGD (optim
"sgd", lr 0.5): each step moves them by lr times gradients that agree to
the bound above, so k steps agree to about k times 1e-5 of the largest
element (2e-4 of it absolute for k = 3, with a margin for the drift of the
later gradients), while a wrong head moves them by ~1e-2 of it.
"""
import copy
import math
import tempfile
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
pytest.importorskip("tokenizers")

import tiny_lm  # noqa: E402
from trl.trainer import utils as trl_utils  # noqa: E402

import geopref_torch.trl as gtrl  # noqa: E402

ALL = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
OUT_TOL = dict(rtol=1e-5, atol=1e-5)


def _grad_close(got, want, what):
    assert set(got) == set(want), what
    for name, g in want.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-5 * scale + 1e-7,
                                   msg=lambda m, n=name: f"{what}, {n} (max |g| {scale:.3g}): {m}")


@pytest.fixture(scope="module")
def tok():
    assert trl.__version__ == "1.16.0", "these tests and docs/trl.md describe TRL 1.16.0"
    return tiny_lm.tokenizer()


def _batch(tok):
    texts = ["the cat sat on the mat", "a dog ran", "the big red dog ran fast on a log"]
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a prompt of two tokens, not scored
    return ids, mask, labels


def _both_heads(model, **kw):
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    trl_utils.add_fused_lm_head(a, **kw)
    gtrl.add_fused_lm_head(b, **kw)
    return a, b


CONFIGS = {
    "plain": ({}, dict(temperature=1.0)),
    "scaled+capped, T=0.7": (dict(logit_scale=1.7, final_logit_softcapping=3.0),
                             dict(temperature=0.7)),
    "logits_scaling, fp32 head": (dict(logits_scaling=2.0),
                                  dict(temperature=1.3, cast_lm_head_to_fp32=True)),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_head_matches_trl_forward_and_backward(tok, case):
    config, kw = CONFIGS[case]
    model = tiny_lm.tiny_llama(len(tok), **config)
    trl_model, gp_model = _both_heads(model, outputs=ALL, **kw)
    ids, mask, labels = _batch(tok)
    results = []
    for m in (trl_model, gp_model):
        out = m(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        # Upstreams on the loss (the log-probs) and on the entropy, as GRPO's bonus.
        (out.loss + 0.3 * (out.entropy * torch.linspace(0.5, 1.5, out.entropy.shape[1])).sum()
         ).backward()
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (want, want_grads), (got, got_grads) = results
    assert type(got) is type(want) is trl_utils.FusedCausalLMOutput
    assert got.log_probs.shape == (3, ids.shape[1] - 1)
    assert torch.equal(got.label_mask, want.label_mask)
    for name in ALL:
        w, g = getattr(want, name), getattr(got, name)
        if name == "is_top1":
            assert torch.equal(g, w)
        else:
            torch.testing.assert_close(g, w, **OUT_TOL, msg=lambda m, n=name: f"{n}: {m}")
        assert not g[~got.label_mask].any(), name
    torch.testing.assert_close(got.loss, want.loss, **OUT_TOL)
    assert got.aux_loss is None and want.aux_loss is None
    _grad_close(got_grads, want_grads, case)


def test_head_options_follow_trl(tok):
    """shift_labels scored unshifted, num_items_in_batch, only the outputs
    asked for, and fused_lm_head=False (generation) left to the model."""
    model = tiny_lm.tiny_llama(len(tok))
    trl_model, gp_model = _both_heads(model, temperature=0.9, outputs=("log_probs", "entropy"))
    ids, mask, labels = _batch(tok)
    shift = torch.full_like(labels, -100)
    shift[:, :-1] = labels[:, 1:]
    for kwargs in (dict(labels=labels, num_items_in_batch=7), dict(shift_labels=shift)):
        want = trl_model(input_ids=ids, attention_mask=mask, fused_lm_head=True, **kwargs)
        got = gp_model(input_ids=ids, attention_mask=mask, fused_lm_head=True, **kwargs)
        assert got.log_probs.shape == want.log_probs.shape
        for name in ("loss", "log_probs", "entropy"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **OUT_TOL)
        assert got.mean_logits is None and got.is_top1 is None and got.log_sum_sq_probs is None
    plain = model(input_ids=ids, attention_mask=mask, labels=labels)
    patched = gp_model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(patched.logits, plain.logits, rtol=0, atol=0)
    torch.testing.assert_close(patched.loss, plain.loss, rtol=0, atol=0)
    # All labels ignored: a zero loss still connected to the model.
    out = gp_model(input_ids=ids, attention_mask=mask, labels=torch.full_like(labels, -100),
                   fused_lm_head=True)
    assert out.loss.item() == 0.0 and out.loss.requires_grad and not out.label_mask.any()
    out.loss.backward()


def test_bad_input(tok):
    model = tiny_lm.tiny_llama(len(tok))
    backbone = model.model  # a LlamaModel: no output embedding
    with pytest.raises(ValueError, match="no output embedding"):
        gtrl.add_fused_lm_head(backbone)
    with pytest.raises(ValueError, match="unknown outputs"):
        gtrl.add_fused_lm_head(model, outputs=("log_probs", "logits"))
    with pytest.raises(TypeError, match="sequence of names"):
        gtrl.add_fused_lm_head(model, outputs="entropy")
    gtrl.add_fused_lm_head(model)
    ids, mask, labels = _batch(tok)
    with pytest.raises(ValueError, match=r"labels must be \[B, T\]"):
        model(input_ids=ids, attention_mask=mask, labels=labels[:, 1:], fused_lm_head=True)
    with pytest.raises(ValueError, match=r"shift_labels must be \[B, T\]"):
        model(input_ids=ids, attention_mask=mask, shift_labels=labels[:2], fused_lm_head=True)
    with pytest.raises(ValueError, match="needs labels"):
        model(input_ids=ids, attention_mask=mask, fused_lm_head=True)


def test_install_patches_the_trainers_names():
    from trl.trainer import dpo_trainer, grpo_trainer, sft_trainer
    original = trl_utils.add_fused_lm_head
    with gtrl.use_geopref_head():
        for module in (trl_utils, dpo_trainer, grpo_trainer, sft_trainer):
            assert module.add_fused_lm_head is gtrl.add_fused_lm_head, module.__name__
    for module in (trl_utils, dpo_trainer, grpo_trainer, sft_trainer):
        assert module.add_fused_lm_head is original, module.__name__


# ---- The stock trainers, with TRL's head and with geopref's.

class _FirstGrads(transformers.TrainerCallback):
    """The parameter gradients of the first optimizer step (after clipping,
    which max_grad_norm = 1e9 makes a no-op)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def _common(steps):
    return dict(output_dir=tempfile.mkdtemp(), report_to="none", bf16=False, fp16=False,
                use_cpu=True, max_steps=steps, logging_steps=1, save_strategy="no",
                optim="sgd", learning_rate=0.5, lr_scheduler_type="constant",
                warmup_steps=0, max_grad_norm=1e9, seed=1234, dataloader_num_workers=0)


def _dpo(tok, steps):
    policy, ref = tiny_lm.policy_and_reference(len(tok))
    args = trl.DPOConfig(per_device_train_batch_size=4, beta=0.1, **_common(steps))
    ds = datasets.Dataset.from_dict(tiny_lm.PREFERENCES)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds,
                          processing_class=tok)


def _reward(completions, **kwargs):
    # Rewards the words "cat" and "dog", penalises length: a varied signal.
    return [c.count("cat") + c.count("dog") - 0.1 * len(c.split()) for c in completions]


def _grpo(tok, steps):
    model = tiny_lm.tiny_llama(len(tok))
    args = trl.GRPOConfig(per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=6, temperature=0.7, use_vllm=False,
                          **_common(steps))
    ds = datasets.Dataset.from_dict({"prompt": ["the cat", "a dog", "the big", "a red"]})
    return trl.GRPOTrainer(model=model, reward_funcs=_reward, args=args, train_dataset=ds,
                           processing_class=tok)


def _sft(tok, steps):
    model = tiny_lm.tiny_llama(len(tok))
    args = trl.SFTConfig(per_device_train_batch_size=3, max_length=16, **_common(steps))
    ds = datasets.Dataset.from_dict({"text": ["the cat sat on the mat", "a dog ran fast",
                                              "the big red dog ran on a log",
                                              "a small blue cat sat", "the green mat"]})
    return trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)


TRAINERS = {"dpo": _dpo, "grpo": _grpo, "sft": _sft}


def _train(build, tok, steps, geopref):
    first = _FirstGrads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gtrl.use_geopref_head() if geopref else _no_patch():
            trainer = build(tok, steps)
        # The head the trainer's __init__ added: geopref's, or TRL's.
        for m in (trainer.model, getattr(trainer, "ref_model", None)):
            if m is not None:
                code = m.forward.__func__.__code__.co_name
                assert code == ("_geopref_fused_forward" if geopref else "_fused_forward"), code
        trainer.add_callback(first)
        trainer.train()
    # Every logged number but the clocks (step_time, runtimes, rates).
    logs = [{k: v for k, v in h.items() if isinstance(v, (int, float)) and "time" not in k
             and "per_second" not in k}
            for h in trainer.state.log_history if "loss" in h]
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return logs, first.grads, params


class _no_patch:
    def __enter__(self):
        assert trl_utils.add_fused_lm_head.__module__ == "trl.trainer.utils"

    def __exit__(self, *exc):
        return False


def _logs_close(got, want, what):
    assert len(got) == len(want) and len(want) > 0, what
    for step, (g, w) in enumerate(zip(got, want)):
        assert set(g) == set(w), (what, step, set(g) ^ set(w))
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (what, step, key)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_stock_trainers_one_and_several_steps(tok, name):
    build = TRAINERS[name]
    trl_logs, trl_grads, trl_params = _train(build, tok, 3, geopref=False)
    gp_logs, gp_grads, gp_params = _train(build, tok, 3, geopref=True)
    # The first step: loss, every logged metric, the parameter gradients.
    assert math.isfinite(trl_logs[0]["loss"])
    _logs_close(gp_logs[:1], trl_logs[:1], f"{name}, step 1")
    _grad_close(gp_grads, trl_grads, f"{name}, step 1 gradients")
    # Three steps: every step's logs, the parameters at the end.
    _logs_close(gp_logs, trl_logs, f"{name}, 3 steps")
    for n, w in trl_params.items():
        scale = w.abs().max().item()
        torch.testing.assert_close(gp_params[n], w, rtol=1e-4, atol=2e-4 * scale,
                                   msg=lambda m, n=n: f"{name}, parameter {n}: {m}")
