"""geopref's preference loss inside TRL 1.x's DPOTrainer (written against TRL 1.16.0).

    from geopref_torch.trl import GeoprefDPOConfig, GeoprefDPOTrainer

    args = GeoprefDPOConfig(output_dir="out", loss_type=["gdpo"], beta=0.1)
    trainer = GeoprefDPOTrainer(model=model, args=args, train_dataset=ds,   # ds has a "soft_label"
                                processing_class=tokenizer)                 # column, p in [0, 1]
    trainer.train()

GeoprefDPOTrainer is TRL 1.16.0's DPOTrainer with its loss step replaced: the
policy's (and the reference model's) last hidden states go, with the lm_head's
weight and bias, to geopref's fused_linear_preference_loss, which forms the
logits one chunk at a time and returns the loss with its gradient. The
dataset, tokenisation, collator, reference model, precomputed reference
log-probs, PEFT handling, optimiser and logging are TRL's. docs/trl.md is the
user's page; docs/math.md §5 maps every TRL 1.16.0 loss.

What the subclass adds to TRL: soft preference labels from a dataset column
(kept through TRL's column filtering and its collator), geopref's own losses
(gdpo, cdpo, gipo, cipo, ropo, gropo, simpo, orpo: geopref_torch.loss_types()),
the geometric form of any margin loss (`geometric=True`), a caller's own margin
loss (`margin_loss=`), reference-free training (CPO / SimPO / ORPO recipes) and
an sft term over prompt and completion (ORPO's NLL).
"""
import contextlib
import dataclasses
import functools
import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
import trl
import trl.trainer.dpo_trainer
from accelerate.utils import is_peft_model
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import use_adapter

from ..api import (fused_linear_logps, fused_linear_preference_loss, linear_token_logps,
                   loss_types)
from .head import _scatter, head_logit_transform

# TRL 1.16.0's loss_type names -> (geopref's name, whether the term reads
# length-averaged log-probs). TRL's ipo and sigmoid_norm divide the
# (transformed) log-ratios by the completion length; the others read sums.
_TRL_TERMS = {
    "sigmoid": ("dpo", False), "hinge": ("hinge", False), "ipo": ("ipo", True),
    "sigmoid_norm": ("dpo", True), "exo_pair": ("exo_pair", False),
    "nca_pair": ("nca_pair", False), "robust": ("robust", False),
    "bco_pair": ("bco_pair", False), "sppo_hard": ("sppo_hard", False), "aot": ("aot", False),
    "aot_unpaired": ("aot_unpaired", False), "apo_zero": ("apo_zero", False),
    "apo_down": ("apo_down", False), "discopop": ("discopop", False), "sft": ("sft", False),
}
# TRL 1.16.0 refuses an f-divergence other than reverse_kl with any other of its losses.
_TRL_F_DIVERGENCE_TERMS = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust",
                           "discopop", "sft"}
# geopref's losses that read the soft label p (the others ignore it).
_SOFT_LABEL_TERMS = {"gdpo", "gipo", "gropo", "cdpo", "cipo", "aot", "aot_unpaired"}
# geopref's losses that always read averaged log-probs and no reference.
_AVERAGED_TERMS = {"simpo", "orpo"}
# geopref's terms that read no reference (a call of only these takes none).
_REFERENCE_FREE_TERMS = {"simpo", "orpo", "sft"}
# Keywords of the fused call a caller may set through GeoprefDPOConfig.geopref_kwargs.
_EXTRA_KEYWORDS = {"alpha", "gamma", "bco_delta", "average_logps"}
_F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# Batch keys that are not model inputs.
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


@dataclass
class GeoprefDPOConfig(trl.DPOConfig):
    """TRL 1.16.0's DPOConfig with geopref's options.

    loss_type: TRL's names (a string or a list) and geopref's own
      (geopref_torch.loss_types(): gdpo, cdpo, gipo, ...), mixed freely, with
      loss_weights as TRL's.
    soft_label_column: the dataset column of soft preference labels p =
      P(chosen > rejected) in [0, 1]; kept through TRL's column filtering and
      collator. A loss that reads p (gdpo, cdpo, gipo, gropo, cipo; aot without
      label_smoothing) refuses to run without it. None: no soft labels.
    geometric: geopref's geometric form f((2p - 1) h) of every margin term.
    reference_free: no reference model; margins from the policy's log-probs
      (CPO, SimPO, ORPO).
    sft_labels: the tokens of an "sft" term: "completion" (TRL's DPOTrainer
      and CPOTrainer) or "prompt_and_completion" (TRL's ORPOTrainer's NLL).
    geopref_kwargs: further keywords of fused_linear_preference_loss: alpha,
      gamma (simpo's gamma, ropo's), bco_delta, average_logps.
    token_metrics: log TRL's entropy, logits/chosen, logits/rejected and
      mean_token_accuracy (geopref's per-token statistics of the completion
      tokens, linear_token_logps with outputs=, no grad).
    """
    soft_label_column: Optional[str] = field(default="soft_label")
    geometric: bool = field(default=False)
    reference_free: bool = field(default=False)
    sft_labels: str = field(default="completion")
    geopref_kwargs: Optional[Dict[str, Any]] = field(default=None)
    token_metrics: bool = field(default=True)


def _install_hidden_forward(model):
    """model(..., geopref_hidden=True) returns the backbone's last hidden
    state [B, T, H] (no lm_head); any other call is the model's forward as it
    was. Called through the trainer's (possibly wrapped) model, so data
    parallel wrappers see the forward. Idempotent."""
    if getattr(model, "_geopref_hidden_forward", False):
        return
    previous = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, geopref_hidden=False, **kwargs):
        if not geopref_hidden:
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        # A PEFT wrapper passes its own keywords through (labels=None, ...);
        # the backbone takes none of them.
        for key in ("labels", "shift_labels", "num_items_in_batch", "fused_lm_head"):
            kwargs.pop(key, None)
        return getattr(self, "base_model")(*args, **kwargs).last_hidden_state

    model.forward = types.MethodType(forward, model)
    model._geopref_hidden_forward = True


@contextlib.contextmanager
def _no_reference_model(active, policy_is_path):
    """While TRL 1.16.0's DPOTrainer.__init__ runs, keep it from loading a
    reference model (reference_free): it loads one from the policy's name
    whenever none is given and nothing is precomputed. The policy itself is
    loaded by the first call when it is given as a path."""
    if not active:
        yield
        return
    module = trl.trainer.dpo_trainer
    original = module.create_model_from_path
    calls = []

    def create(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs) if policy_is_path and len(calls) == 1 else None

    module.create_model_from_path = create
    try:
        yield
    finally:
        module.create_model_from_path = original


def _default_of(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _soft_label_tensor(values, column):
    """A batch's soft labels as float64 [P], each finite and in [0, 1]."""
    try:
        p = torch.tensor([float(v) for v in values], dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"geopref: the soft-label column {column!r} must hold numbers in [0, 1]: "
                         f"{e}") from None
    bad = ~(torch.isfinite(p) & (p >= 0) & (p <= 1))
    if bad.any():
        raise ValueError(f"geopref: the soft-label column {column!r} must hold values in [0, 1]; "
                         f"got {p[bad][0].item()!r}")
    return p


@dataclass
class GeoprefPreferenceCollator(DataCollatorForPreference):
    """TRL 1.16.0's DataCollatorForPreference that also keeps the soft-label
    column (float64 [P], checked to lie in [0, 1]) and the precomputed
    reference log-probs in float64 (TRL's collator makes them float32)."""
    soft_label_column: Optional[str] = None

    def torch_call(self, examples):
        out = super().torch_call(examples)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([float(e[key]) for e in examples], dtype=torch.float64)
        col = self.soft_label_column
        if col is not None and col in examples[0]:
            out[col] = _soft_label_tensor([e[col] for e in examples], col)
        return out


def _f_divergence(args):
    """TRL's f_divergence_type and f_alpha_divergence_coef -> geopref's
    (margin_transform, f_alpha), or None where geopref has no such transform
    (TRL's alpha coefficient above 1: geopref's exponent would be negative)."""
    kind, coef = args.f_divergence_type, float(args.f_alpha_divergence_coef)
    if kind not in _F_DIVERGENCES:
        raise ValueError(f"geopref: unknown f_divergence_type {kind!r}; TRL 1.16.0's: "
                         f"{list(_F_DIVERGENCES)}")
    if kind == "reverse_kl":
        return "reverse_kl", 1.0
    if kind == "js_divergence":
        return "js", 1.0
    if kind == "forward_kl":
        return "alpha", 1.0
    if not math.isfinite(coef):
        raise ValueError(f"geopref: f_alpha_divergence_coef must be finite, got {coef}")
    if abs(coef - 1.0) < 1e-6:  # TRL's limit: the reverse KL
        return "reverse_kl", 1.0
    if coef < 1.0:
        return "alpha", 1.0 - coef
    return None


def _phi(rho, args):
    """The f-divergence's score of log-ratios rho (float64) with TRL 1.16.0's
    constants (log 2 for js_divergence, 1 for forward_kl, -1/(c - 1) for
    alpha_divergence): they cancel in a summed margin but not in ipo's and
    sigmoid_norm's, which divide each response's score by its own length.
    For the pair losses computed here in torch (TRL's alpha coefficient above
    1, or ipo / sigmoid_norm under a transform). The exponent is capped at
    float64's overflow limit, as geopref caps it in double."""
    kind, coef = args.f_divergence_type, float(args.f_alpha_divergence_coef)
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(coef - 1.0) < 1e-6):
        return rho
    if kind == "js_divergence":
        return math.log(2.0) + F.logsigmoid(rho)
    c = 0.0 if kind == "forward_kl" else coef
    cap = math.log(torch.finfo(torch.float64).max)
    return torch.expm1(torch.clamp((c - 1.0) * rho, max=cap)) / (c - 1.0)


def _pair_loss(name, h, beta, eps, tau):
    """TRL 1.16.0's per-pair loss of a margin h (float64 [P]) for the margin
    losses it allows under an f-divergence."""
    z = beta * h
    if name in ("sigmoid", "sigmoid_norm"):
        return -F.logsigmoid(z)
    if name == "hinge":
        return torch.relu(1 - z)
    if name == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if name == "robust":
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    if name == "exo_pair":
        s = torch.sigmoid(z)
        return (s * (F.logsigmoid(z) - math.log1p(-eps))
                + (1 - s) * (F.logsigmoid(-z) - math.log(eps)))
    if name == "discopop":
        m = torch.sigmoid(z / tau)
        return (1 - m) * -F.logsigmoid(z) + m * torch.exp(-z)
    raise NotImplementedError(f"geopref: no torch form of {name!r} under an f-divergence")


class GeoprefDPOTrainer(trl.DPOTrainer):
    """TRL 1.16.0's DPOTrainer whose loss is geopref's, from the hidden
    states and the lm_head (see the module's docstring and docs/trl.md).

    margin_loss: a caller's own pair loss, margin_loss(h, p) -> [P], where h
      [P] (float64, differentiable) is the margin of TRL's form, phi(rho_w) -
      phi(rho_l) of the summed log-ratios under the f-divergence, and p [P]
      the soft labels (None without a soft-label column); added to the loss as
      margin_loss_weight * mean(margin_loss(h, p) * pair weights).
    Every other argument is DPOTrainer's; args may be a DPOConfig (then the
    geopref options take their defaults) or a GeoprefDPOConfig.
    """

    def __init__(self, model, ref_model=None, args=None, *rest,
                 margin_loss: Optional[Callable] = None, margin_loss_weight: float = 1.0,
                 **kwargs):
        if args is None:  # TRL's default configuration, with geopref's options
            name = model if isinstance(model, str) else (
                getattr(model.config, "_name_or_path", "") or type(model).__name__)
            args = GeoprefDPOConfig(f"{name.rstrip('/').split('/')[-1]}-DPO")
        elif not isinstance(args, GeoprefDPOConfig):
            # The fields the caller changed (a copy of the others would
            # repeat TrainingArguments' deprecation warnings).
            values = {f.name: getattr(args, f.name) for f in dataclasses.fields(trl.DPOConfig)
                      if f.init and getattr(args, f.name) != _default_of(f)}
            args = GeoprefDPOConfig(**values)
        if args.reference_free and (ref_model is not None or args.precompute_ref_log_probs):
            raise ValueError("geopref: reference_free=True takes no ref_model and no "
                             "precompute_ref_log_probs")
        self._plan = self._plan_of(args)
        self.margin_loss, self.margin_loss_weight = margin_loss, float(margin_loss_weight)
        if margin_loss is not None and not callable(margin_loss):
            raise TypeError("geopref: margin_loss must be callable (h, p) -> [P] pair losses")
        self._check_soft_label_column(args, kwargs.get("train_dataset",
                                                       rest[1] if len(rest) > 1 else None))
        # TRL refuses an f-divergence with geopref's names; geopref's check
        # (_plan_of) replaces it, so TRL's sees reverse_kl during its __init__.
        f_div = args.f_divergence_type
        args.f_divergence_type = "reverse_kl"
        try:
            with _no_reference_model(args.reference_free, isinstance(model, str)):
                super().__init__(model, ref_model, args, *rest, **kwargs)
        finally:
            args.f_divergence_type = f_div
        self.f_divergence_type = f_div
        if self.aux_loss_enabled:
            raise NotImplementedError("geopref: GeoprefDPOTrainer does not add a "
                                      "Mixture-of-Experts router loss; set "
                                      "router_aux_loss_coef=0")
        if getattr(self, "_is_vision_dataset", False):
            raise NotImplementedError("geopref: GeoprefDPOTrainer covers text-only datasets")
        col = self.args.soft_label_column
        if isinstance(self.data_collator, DataCollatorForPreference) and not isinstance(
                self.data_collator, GeoprefPreferenceCollator):
            c = self.data_collator
            self.data_collator = GeoprefPreferenceCollator(
                pad_token_id=c.pad_token_id, max_length=c.max_length,
                truncation_mode=c.truncation_mode, pad_to_multiple_of=c.pad_to_multiple_of,
                soft_label_column=col)

    # ---- configuration -------------------------------------------------
    @staticmethod
    def _check_soft_label_column(args, dataset):
        col = getattr(args, "soft_label_column", None)
        if col is None or dataset is None or not hasattr(dataset, "column_names"):
            return
        if col in (dataset.column_names or []):
            _soft_label_tensor(dataset[col], col)

    @staticmethod
    def _plan_of(args):
        """The loss's terms, grouped into fused calls: [(key, names, weights)]
        with key = (average_logps, token_weighted, sft_labels), plus the terms
        computed in torch from differentiable log-probs."""
        types_ = args.loss_type if not isinstance(args.loss_type, str) else [args.loss_type]
        if not isinstance(types_, (list, tuple)) or not types_:
            raise ValueError(f"geopref: loss_type must be a name or a non-empty list of names, "
                             f"got {args.loss_type!r}")
        weights = args.loss_weights or [1.0] * len(types_)
        if len(weights) != len(types_):
            raise ValueError(f"geopref: {len(weights)} loss_weights for {len(types_)} losses")
        if args.sft_labels not in ("completion", "prompt_and_completion"):
            raise ValueError(f"geopref: sft_labels must be 'completion' or "
                             f"'prompt_and_completion', got {args.sft_labels!r}")
        extra = set(args.geopref_kwargs or {}) - _EXTRA_KEYWORDS
        if extra:
            raise ValueError(f"geopref: geopref_kwargs takes {sorted(_EXTRA_KEYWORDS)}, got "
                             f"{sorted(extra)}")
        transform = _f_divergence(args)
        known = set(loss_types())
        fused, torch_terms = {}, []
        for name, w in zip(types_, weights):
            if name in _TRL_TERMS:
                gp_name, avg = _TRL_TERMS[name]
                if args.f_divergence_type != "reverse_kl" and name not in _TRL_F_DIVERGENCE_TERMS:
                    raise ValueError(f"geopref: TRL 1.16.0 defines no f-divergence form of "
                                     f"{name!r}; use f_divergence_type='reverse_kl' with it")
            elif name in known:
                gp_name, avg = name, False
            else:
                raise ValueError(f"geopref: unknown loss_type {name!r}; TRL 1.16.0's: "
                                 f"{sorted(_TRL_TERMS)}; geopref's: {sorted(known)}")
            # TRL transforms the summed log-ratios and then divides by the
            # length; geopref averages first. They agree under reverse_kl only.
            needs_torch = gp_name != "sft" and (
                transform is None or (avg and args.f_divergence_type != "reverse_kl"))
            if needs_torch:
                if name not in _TRL_F_DIVERGENCE_TERMS:
                    raise NotImplementedError(
                        f"geopref: {name!r} under f_divergence_type={args.f_divergence_type!r} "
                        f"with f_alpha_divergence_coef={args.f_alpha_divergence_coef}: geopref "
                        "has no such transform and no torch form of this loss")
                if args.geometric:
                    raise NotImplementedError(
                        f"geopref: geometric=True with {name!r} under "
                        f"f_divergence_type={args.f_divergence_type!r}: not expressible")
                torch_terms.append((name, float(w)))
                continue
            if args.reference_free and gp_name in ("aot", "aot_unpaired"):
                raise ValueError(f"geopref: {name!r} needs a reference model")
            sft = gp_name == "sft"
            # geopref's simpo and orpo always read averaged log-probs.
            avg = (avg or gp_name in _AVERAGED_TERMS
                   or bool((args.geopref_kwargs or {}).get("average_logps", False)))
            key = (False if sft else avg, not sft and args.ld_alpha is not None,
                   args.sft_labels if sft else "completion")
            names, ws = fused.setdefault(key, ([], []))
            names.append(gp_name)
            ws.append(float(w))
        return [(k, n, w) for k, (n, w) in fused.items()], torch_terms

    # ---- the forward passes --------------------------------------------
    def _hidden(self, model, model_kwargs, seq_len):
        unwrapped = self.accelerator.unwrap_model(model)
        base = unwrapped.get_base_model() if is_peft_model(unwrapped) else unwrapped
        _install_hidden_forward(base)
        with self.accelerator.autocast():
            hidden = model(**model_kwargs, geopref_hidden=True)
        head = base.get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise ValueError(f"geopref: {type(base).__name__} has no output embedding (lm_head) "
                             "to compute the log-probs from")
        # Prompt-learning PEFT prepends virtual tokens; keep the real positions.
        hidden = hidden[:, -seq_len:]
        transform = head_logit_transform(base.config.get_text_config())  # as TRL's head reads it
        return hidden.to(head.weight.device), head.weight, head.bias, transform

    @staticmethod
    def _labels(inputs, scope="completion"):
        """geopref's shifted labels [B, T]: row t scores input_ids[t + 1]
        where that token is a completion token (or any real token for the
        prompt_and_completion scope); the last row and the rest -100."""
        ids = inputs["input_ids"]
        mask = inputs["completion_mask"] if scope == "completion" else inputs["attention_mask"]
        if ids.dim() != 2 or ids.shape[0] % 2 or mask.shape != ids.shape:
            raise ValueError(f"geopref: the batch must hold [2P, T] input_ids (chosen first) and "
                             f"a completion_mask / attention_mask of their shape; got input_ids "
                             f"{list(ids.shape)} and a mask {list(mask.shape)}")
        labels = torch.full_like(ids, -100)
        labels[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return labels

    def _token_weights(self, labels):
        """LD-DPO's per-token weights (TRL's ld_alpha): 1 on the first
        min(n_chosen, n_rejected) scored tokens of each response, ld_alpha
        after them; None without ld_alpha."""
        if self.args.ld_alpha is None:
            return None
        scored = labels != -100
        pos = scored.cumsum(dim=1)
        n_c, n_r = scored.sum(dim=1).chunk(2)
        shared = torch.minimum(n_c, n_r).repeat(2).unsqueeze(1)
        return torch.where(pos <= shared, 1.0, float(self.args.ld_alpha)).to(torch.float32)

    def _sequence_logps(self, model, inputs, labels, tw, grad=False):
        """Summed (token-weighted) log-probs [2P] of the model: geopref's
        fused_linear_logps from its hidden states, float64 on CPU."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in self._non_model_keys()}
        hidden, weight, bias, transform = self._hidden(model, model_kwargs, labels.shape[1])
        with self.accelerator.autocast():
            return fused_linear_logps(hidden, weight, labels, bias=bias, token_weights=tw,
                                      average_logps=False, **transform)

    def _token_outputs(self):
        """The per-token statistics this configuration reads (linear_token_logps'
        outputs; empty: none): WPO's weights read log_probs and
        log_sum_sq_probs, the metrics entropy (entropy), mean_logits
        (logits/chosen, logits/rejected) and is_top1 (mean_token_accuracy)."""
        wanted = ()
        if self.args.use_weighting:
            wanted += ("log_probs", "log_sum_sq_probs")
        if self.args.token_metrics:
            wanted += ("entropy", "mean_logits", "is_top1")
        return wanted

    def _non_model_keys(self):
        keys = set(_NON_MODEL_KEYS)
        if self.args.soft_label_column is not None:
            keys.add(self.args.soft_label_column)
        return keys

    def compute_ref_log_probs(self, model, inputs):
        """The reference model's summed (LD-weighted) log-probs, chosen and
        rejected, from geopref (also what precompute_ref_log_probs stores)."""
        labels = self._labels(inputs)
        tw = self._token_weights(labels)
        ctx = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            ctx = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config
                              else None)
        with torch.no_grad(), ctx:
            logps = self._sequence_logps(model, inputs, labels, tw)
        return logps.chunk(2, dim=0)

    def _reference(self, inputs, labels, tw):
        if self.args.reference_free:
            return None
        if self.precompute_ref_logps:
            return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(
                device=labels.device, dtype=torch.float64)
        model = self.ref_model if self.ref_model is not None else self.model
        return torch.cat(self.compute_ref_log_probs(model, inputs)).to(torch.float64)

    def _soft_labels(self, inputs, names):
        col = self.args.soft_label_column
        p = inputs.get(col) if col is not None else None
        reads_p = self.args.geometric or any(n in _SOFT_LABEL_TERMS for n in names)
        aot_smoothing = self.args.label_smoothing and any(n in ("aot", "aot_unpaired")
                                                          for n in names)
        if p is not None and aot_smoothing:
            raise ValueError("geopref: aot with both label_smoothing and a soft-label column: "
                             "give one")
        if p is None and aot_smoothing:
            return float(1.0 - self.args.label_smoothing)
        if p is None and reads_p and not (set(names) <= {"aot", "aot_unpaired"}
                                          and not self.args.geometric):
            raise ValueError(f"geopref: {sorted(set(names) & _SOFT_LABEL_TERMS) or 'geometric'} "
                             f"reads soft labels, but the batch has no {col!r} column (a "
                             "custom data_collator must keep it; soft_label_column names it)")
        if p is not None:
            p = torch.as_tensor(p, dtype=torch.float64, device=inputs["input_ids"].device)
            pairs = inputs["input_ids"].shape[0] // 2
            if p.shape != (pairs,) or ((p < 0) | (p > 1) | ~torch.isfinite(p)).any():
                raise ValueError(f"geopref: the soft-label column {col!r} must give [P] = "
                                 f"[{pairs}] values in [0, 1]; got shape {list(p.shape)}")
        return p

    # ---- the loss -------------------------------------------------------
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        args, beta = self.args, self.beta
        model_kwargs = {k: v for k, v in inputs.items() if k not in self._non_model_keys()}
        labels = self._labels(inputs)
        hidden, weight, bias, transform = self._hidden(model, model_kwargs, labels.shape[1])
        tw = self._token_weights(labels)
        scored = labels != -100
        n = scored.sum(dim=1).to(torch.float64)                      # [2P] scored tokens
        ref = self._reference(inputs, labels, tw)                    # [2P] summed, or None
        groups, torch_terms = self._plan
        all_names = [nm for _, names, _ in groups for nm in names] + [t for t, _ in torch_terms]
        p = self._soft_labels(inputs, all_names)
        margin_transform, f_alpha = _f_divergence(args) or ("reverse_kl", 1.0)
        extra = {k: v for k, v in (args.geopref_kwargs or {}).items() if k != "average_logps"}

        stats = None
        wanted = self._token_outputs()
        if wanted:
            # geopref's per-token statistics of the scored rows only (the
            # prompt's are never formed), no grad: TRL 1.16.0 detaches them.
            rows = scored.reshape(-1)
            with torch.no_grad(), self.accelerator.autocast():
                flat = linear_token_logps(hidden.reshape(-1, hidden.shape[-1])[rows], weight,
                                          labels.reshape(-1)[rows], bias=bias,
                                          outputs=wanted, **transform)
            stats = _scatter(flat, scored)
        pair_weights = None
        if args.use_weighting:
            # WPO: per response exp(mean over its tokens of log p_t - log sum_v p_v^2), no grad.
            mean = ((stats["log_probs"] - stats["log_sum_sq_probs"]).double().sum(1)
                    / n.clamp(min=1))
            w_c, w_r = torch.exp(mean).chunk(2)
            pair_weights = w_c * w_r

        loss = hidden.new_zeros((), dtype=torch.float32)
        sources = []          # (averaged?, logps [2P] detached, only sft?) for the metrics
        calibration = None
        for (avg, weighted, scope), names, ws in groups:
            lab = labels if scope == "completion" else self._labels(inputs, scope)
            r = None
            if ref is not None and not set(names) <= _REFERENCE_FREE_TERMS:
                r = torch.where(n > 0, ref / n.clamp(min=1), 0.0) if avg else ref
            with self.accelerator.autocast():
                out = fused_linear_preference_loss(
                    hidden, weight, lab, bias=bias, loss_type=names, loss_weights=ws, beta=beta,
                    ref_logps=r, soft_labels=p, weights=pair_weights,
                    token_weights=tw if weighted else None, average_logps=avg,
                    epsilon=float(args.label_smoothing), tau=float(args.discopop_tau),
                    margin_transform=margin_transform, f_alpha=f_alpha,
                    geometric=bool(args.geometric), **extra, **transform)
            loss = loss + out.loss
            if (weighted or args.ld_alpha is None) and scope == "completion":
                sources.append((avg, out.logps.detach().to(torch.float64), names == ["sft"]))
            if isinstance(p, torch.Tensor) and calibration is None:
                # Soft labels from the dataset (not aot's constant 1 - label_smoothing,
                # where TRL 1.16.0 logs no such metric).
                calibration = out.metrics["calibration_error"]

        if torch_terms or self.margin_loss is not None:
            with self.accelerator.autocast():
                L = fused_linear_logps(hidden, weight, labels, bias=bias, token_weights=tw,
                                       average_logps=False, **transform).to(torch.float64)
            rho = L - ref if ref is not None else L
            phi = _phi(rho, args)
            nc = n.clamp(min=1)
            for name, w in torch_terms:
                h = phi / nc if name in ("ipo", "sigmoid_norm") else phi
                h_w, h_l = h.chunk(2)
                per_pair = _pair_loss(name, h_w - h_l, beta, float(args.label_smoothing),
                                      float(args.discopop_tau))
                if pair_weights is not None:
                    per_pair = per_pair * pair_weights
                loss = loss + w * per_pair.mean()
            if self.margin_loss is not None:
                h_w, h_l = phi.chunk(2)
                per_pair = self.margin_loss(h_w - h_l, p)
                if per_pair.shape != h_w.shape:
                    raise ValueError(f"geopref: margin_loss must return [P] = {list(h_w.shape)} "
                                     f"pair losses, got {list(per_pair.shape)}")
                if pair_weights is not None:
                    per_pair = per_pair * pair_weights
                loss = loss + self.margin_loss_weight * per_pair.mean()
            sources.append((False, L.detach(), False))
        metric_logps = self._metric_source(sources)
        if metric_logps is None:
            with torch.no_grad(), self.accelerator.autocast():
                metric_logps = (fused_linear_logps(hidden, weight, labels, bias=bias,
                                                   token_weights=tw, average_logps=False,
                                                   **transform).to(torch.float64), False)

        self._log_metrics(mode, inputs, labels, n, ref, metric_logps, stats, calibration)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _metric_source(self, sources):
        """The log-probs the metrics read: TRL's DPOTrainer logs the summed
        ones (a summed group's, else an averaged one's times the length); the
        experimental CPOTrainer and ORPOTrainer, reference-free, log them in the
        form their loss reads (averaged for simpo, orpo, ipo): with
        reference_free, the first margin group's form."""
        if not sources:
            return None
        if self.args.reference_free:
            pick = next((s for s in sources if not s[2]), sources[0])
        else:
            pick = next((s for s in sources if not s[0]), sources[0])
        return pick[1], pick[0]

    def _log_metrics(self, mode, inputs, labels, n, ref, metric_logps, stats, calibration):
        """TRL 1.16.0's DPOTrainer metrics, in its form: rewards and logps from
        the summed (LD-weighted) log-probs whatever the loss, token statistics
        over the completion tokens, gathered over processes."""
        acc, metrics, beta = self.accelerator, self._metrics[mode], self.beta
        logps, averaged = metric_logps
        if ref is None:  # reference-free: in the form the loss reads (see _metric_source)
            rewards, sums = beta * logps, logps
        elif averaged:
            # n * (L/n - R/n): exactly 0 where the policy's and the reference's
            # log-probs are the same bits (TRL's tie: no accuracy).
            rbar = torch.where(n > 0, ref / n.clamp(min=1), 0.0)
            rewards, sums = beta * n * (logps - rbar), logps * n
        else:
            rewards, sums = beta * (logps - ref), logps
        chosen_rewards, rejected_rewards = rewards.chunk(2)
        chosen_logps, rejected_logps = sums.chunk(2)
        if self.args.token_metrics:
            scored = labels != -100
            total = acc.gather_for_metrics(scored.sum()).sum()
            ent = acc.gather_for_metrics((stats["entropy"].double() * scored).sum()).sum()
            metrics["entropy"].append((ent / total).item() if total > 0 else 0.0)
        if mode == "train":
            tokens = acc.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        if self.args.token_metrics:
            mask_c, mask_r = (labels != -100).chunk(2)
            ml_c, ml_r = stats["mean_logits"].double().chunk(2)
            for key, ml, m in (("logits/chosen", ml_c, mask_c), ("logits/rejected", ml_r, mask_r)):
                tot = acc.gather_for_metrics((ml * m).sum()).sum().item()
                cnt = acc.gather_for_metrics(m.sum()).sum().item()
                metrics[key].append(tot / cnt if cnt > 0 else 0.0)
            top1_c, _ = stats["is_top1"].chunk(2)
            correct = acc.gather_for_metrics((top1_c & mask_c).sum()).sum()
            cnt = acc.gather_for_metrics(mask_c.sum()).sum()
            metrics["mean_token_accuracy"].append((correct / cnt).item() if cnt > 0 else 0.0)
        g_c, g_r = acc.gather(chosen_rewards), acc.gather(rejected_rewards)
        metrics["rewards/chosen"].append(g_c.mean().item())
        metrics["rewards/rejected"].append(g_r.mean().item())
        metrics["rewards/accuracies"].append((g_c > g_r).double().mean().item())
        metrics["rewards/margins"].append((g_c - g_r).mean().item())
        metrics["logps/chosen"].append(acc.gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(acc.gather(rejected_logps).mean().item())
        if calibration is not None:
            metrics["calibration_error"].append(acc.gather(calibration.reshape(1)).mean().item())

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        col = self.args.soft_label_column
        if col is not None and col not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + [col]
