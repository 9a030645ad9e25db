"""The geopref losses in TRL's terms.

    import geopref_torch as gp
    out = gp.dpo_loss(logits, labels, loss_type="sigmoid", beta=0.1,
                      ref_logps=ref, soft_labels=p)   # logits [2P, T, V] or [N, V] + offsets
    out.loss.backward()                               # into logits.grad (fused on CUDA)
    out.logps                                         # [2P] per-sequence log-probs
    out.metrics["rewards/accuracies"]                 # TRL's metric names, 0-dim tensors

    # From the last hidden states and lm_head instead of the logits (never whole):
    out = gp.fused_linear_preference_loss(hidden, lm_head.weight, labels, bias=lm_head.bias,
                                          loss_type="gdpo", soft_labels=p, ref_logps=ref)

Sequences follow TRL's concatenated layout: the first P are the chosen
responses, the last P the rejected ones (or pass `pairs`). Labels are already
shifted (row t scores labels[t]; TRL: labels = input_ids[:, 1:] against
logits[:, :-1]) and -100 (ignore_index) marks prompt and padding tokens.
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from ._ops import (LOGIT_TRANSFORM_FIELDS, OPTIONS_FIELDS, TOKEN_STATS, VOCAB_SLICE_FIELDS, ops,
                   pack_options)

# The order of the metrics tensor (geopref::metrics), with TRL's names; the
# last one is geopref's soft-label calibration, mean |sigmoid(beta h) - p|.
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "calibration_error",
)

# TRL's DPOConfig.loss_type names (and CPOTrainer's "simpo") whose loss the
# library computes exactly, with geopref's name. dpo_loss reads label_smoothing
# as TRL v0.28 did: cDPO's smoothing for "sigmoid", epsilon for "robust" and
# "exo_pair" (TRL v1.16.0: docs/math.md's table; geopref_torch.trl maps it).
TRL_LOSS_TYPES = {
    "sigmoid": "dpo",
    "hinge": "hinge",
    "ipo": "ipo",
    "robust": "robust",
    "exo_pair": "exo_pair",
    "discopop": "discopop",
    "simpo": "simpo",
}


# Read once from the compiled library (also keeps the call out of traced code).
_LOSS_NAMES = tuple(ops.loss_names())


def loss_types() -> Tuple[str, ...]:
    """Every loss name the compiled library knows (geopref's names), in its
    order. A loss added to the library appears here, and dpo_loss accepts it,
    without a change to this package."""
    return _LOSS_NAMES


# The keywords of the logit transform, one per field of the library's list
# (LOGIT_TRANSFORM_FIELDS), in its order: logit_scale, softcap, temperature.
LOGIT_TRANSFORM_KEYWORDS = tuple(f.keyword for f in LOGIT_TRANSFORM_FIELDS)


def _logit_transform(**values):
    """The operators' logit_transform argument from a function's keywords:
    their values in the field list's order. Every function that reads logits
    passes all of its transform keywords here, so a field the library adds
    without a keyword here is a TypeError at the first call (and the test of
    the signatures fails), never a silent default."""
    if set(values) != set(LOGIT_TRANSFORM_KEYWORDS):
        raise TypeError(f"geopref: the logit transform takes {list(LOGIT_TRANSFORM_KEYWORDS)}, "
                        f"got {sorted(values)}")
    return [float(values[k]) for k in LOGIT_TRANSFORM_KEYWORDS]


# The order of the metric_sums tensor (geopref::metric_sums): the metrics'
# sums over this call's pairs, then the pair count P.
METRIC_SUM_NAMES = METRIC_NAMES + ("pairs",)


class DPOOutput(NamedTuple):
    loss: torch.Tensor                 # [] (mean, sum, normalizer) or [P] (none)
    logps: torch.Tensor                # [S] per-sequence log-probs (L_s, or L_s / n_s if averaged)
    metrics: Dict[str, torch.Tensor]   # METRIC_NAMES -> 0-dim float64 tensors (no host sync)
    metric_sums: torch.Tensor          # [8] float64: the metrics as sums, then P (METRIC_SUM_NAMES)


def metrics_from_sums(metric_sums: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The metrics of the global batch from metric_sums [8] after a data-parallel
    all-reduce (sum) of every rank's DPOOutput.metric_sums: each sum divided by
    the pair count, all zero when it is 0 (geopref::metrics_from_sums)::

        dist.all_reduce(out.metric_sums)
        metrics = gp.metrics_from_sums(out.metric_sums)
    """
    if metric_sums.shape != (len(METRIC_SUM_NAMES),):
        raise ValueError(f"geopref: metric_sums must be [{len(METRIC_SUM_NAMES)}], "
                         f"got {list(metric_sums.shape)}")
    sums, pairs = metric_sums[:-1], metric_sums[-1]
    means = torch.where(pairs > 0, sums / torch.where(pairs > 0, pairs, 1.0),
                        torch.zeros_like(sums))
    return dict(zip(METRIC_NAMES, means.unbind(0)))


def _token_weights(token_weights, labels):
    """Per-token weights shaped like the labels ([B, T] or [N]) -> [N]."""
    if token_weights is None:
        return None
    if token_weights.shape != labels.shape:
        raise ValueError(f"geopref: token_weights must have the labels' shape "
                         f"{list(labels.shape)}, got {list(token_weights.shape)}")
    return token_weights.reshape(-1)


def _tokens(logits, labels, offsets, what="logits"):
    """[B, T, X] + [B, T] (padded rows: offsets = b * T) or [N, X] + [N] + offsets;
    X is V for logits, H for hidden states (`what` names them in errors)."""
    x = "V" if what == "logits" else "H"
    if logits.dim() == 3:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"geopref: labels must be [B, T] = {list(logits.shape[:2])} for "
                             f"[B, T, {x}] {what}, got {list(labels.shape)}")
        if offsets is not None:
            raise ValueError(f"geopref: offsets are implied by [B, T, {x}] {what}; "
                             f"pass [N, {x}] {what} for a packed layout")
        b, t = logits.shape[0], logits.shape[1]
        offsets = torch.arange(b + 1, device=logits.device, dtype=torch.int64) * t
        return logits.reshape(b * t, logits.shape[2]), labels.reshape(b * t), offsets
    if logits.dim() == 2:
        if offsets is None:
            raise ValueError(f"geopref: [N, {x}] {what} need offsets [S + 1] "
                             "(sequence s owns rows offsets[s]:offsets[s+1])")
        return logits, labels, offsets
    raise ValueError(f"geopref: {what} must be [B, T, {x}] or "
                     f"[N, {x}], got {list(logits.shape)}")


# The keywords of the options, one per field of the library's list
# (OPTIONS_FIELDS; the three fields of a loss or combination share loss_type),
# in the list's order: loss_type, beta, ..., margin_transform, ..., nll_weight.
OPTIONS_KEYWORDS = tuple(dict.fromkeys(f.keyword for f in OPTIONS_FIELDS))

# The defaults of the keywords (dpo_loss's and fused_linear_preference_loss's
# signatures): the library's, except where TRL's differ or depend on the loss
# (None: chosen by _resolve).
OPTIONS_DEFAULTS = {f.keyword: (f.choices[int(f.default[0])] if f.choices else
                                bool(f.default[0]) if f.kind == "boolean" else
                                int(f.default[0]) if f.kind == "integer" else f.default[0])
                    for f in OPTIONS_FIELDS if f.kind in ("real", "boolean", "integer", "enum")}
OPTIONS_DEFAULTS.update(loss_type="sigmoid", loss_weights=None, epsilon=None, normalizer=None,
                        average_logps=None)


def _resolve_name(loss_type):
    known = loss_types()
    if loss_type in TRL_LOSS_TYPES:
        return TRL_LOSS_TYPES[loss_type]
    if loss_type in known:
        return loss_type
    raise ValueError(f"geopref: unknown loss_type {loss_type!r}; TRL names: "
                     f"{sorted(TRL_LOSS_TYPES)}; geopref names: {list(known)}")


def _resolve(loss_type, label_smoothing, soft_labels, epsilon, average_logps):
    """TRL's name(s) and label_smoothing -> (geopref losses, soft labels, epsilon, average)."""
    combination = not isinstance(loss_type, str)
    names = [_resolve_name(t) for t in (loss_type if combination else [loss_type])]
    if combination and not names:
        raise ValueError("geopref: loss_type is an empty list")
    if label_smoothing:
        if combination:
            raise ValueError("geopref: label_smoothing with a list of losses: pass soft labels "
                             "or epsilon instead")
        if loss_type == "sigmoid":
            # cDPO: -(1-ls) log sigmoid(beta h) - ls log sigmoid(-beta h) is geopref's
            # cdpo with soft label 1 - ls.
            if soft_labels is not None:
                raise ValueError("geopref: label_smoothing with soft_labels: pass soft labels "
                                 "and loss_type='cdpo' instead")
            names, soft_labels = ["cdpo"], float(1.0 - label_smoothing)
        elif loss_type in ("robust", "exo_pair"):
            if epsilon is not None:
                raise ValueError("geopref: give label_smoothing or epsilon, not both")
            epsilon = float(label_smoothing)
        else:
            raise ValueError(f"geopref: label_smoothing has no meaning for {loss_type!r}")
    if epsilon is None:
        # TRL v0.28's exo_pair used 1e-3 when label_smoothing was 0 (TRL v1.16.0
        # refuses 0; geopref_torch.trl.GeoprefDPOTrainer passes TRL's value).
        epsilon = 1e-3 if "exo_pair" in names else 0.0
    if average_logps is None:
        average_logps = loss_type == "ipo"  # TRL's IPO uses length-averaged log-probs
    return names, soft_labels, epsilon, average_logps


def _loss_config(offsets, pairs, device, soft_labels, label_smoothing, **keywords):
    """The option keywords of dpo_loss (and fused_linear_preference_loss) ->
    (soft labels as a tensor or None, the operators' packed `options`: every
    field of OPTIONS_FIELDS in its order). Every function passes all of its
    option keywords here, so a field the library adds without a keyword is a
    TypeError at the first call (and the test of the signatures fails)."""
    if set(keywords) != set(OPTIONS_KEYWORDS):
        raise TypeError(f"geopref: the options take {sorted(OPTIONS_KEYWORDS)}, "
                        f"got {sorted(keywords)}")
    k = dict(keywords)
    names, soft_labels, k["epsilon"], k["average_logps"] = _resolve(
        k["loss_type"], label_smoothing, soft_labels, k["epsilon"], k["average_logps"])
    n_seqs = offsets.shape[0] - 1
    n_pairs = pairs.shape[0] if pairs is not None else n_seqs // 2
    if isinstance(soft_labels, (int, float)):
        soft_labels = torch.full((n_pairs,), float(soft_labels), device=device)
    reduction, normalizer = k["reduction"], k["normalizer"]
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"geopref: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if normalizer is not None:
        if reduction != "mean":
            raise ValueError("geopref: normalizer replaces the mean; leave reduction='mean'")
        reduction = "normalizer"
    # A list of losses, or loss weights: a weighted combination (TRL's
    # loss_type list with loss_weights; weights default to 1).
    combination = not isinstance(k["loss_type"], str) or k["loss_weights"] is not None
    weights = k["loss_weights"]
    if weights is None:
        weights = [1.0] * len(names)
    weights = [float(w) for w in weights]
    if len(weights) != len(names):
        raise ValueError(f"geopref: {len(weights)} loss_weights for {len(names)} losses")
    fields = {f.name: k[f.keyword] for f in OPTIONS_FIELDS
              if f.kind in ("real", "boolean", "integer", "enum")}
    fields.update(type=names[0], reduce=reduction, normalizer=float(normalizer or 0.0))
    if combination:
        if len(names) > _MAX_TERMS:
            raise ValueError(f"geopref: at most {_MAX_TERMS} losses in a combination, "
                             f"got {len(names)}")
        fields.update(n_terms=len(names), terms=names, term_weights=weights)
    return soft_labels, pack_options(**fields)


_MAX_TERMS = next(f.width for f in OPTIONS_FIELDS if f.name == "terms")


def _options_of(local):
    """The option keywords among a function's arguments (its locals())."""
    return {k: local[k] for k in OPTIONS_KEYWORDS}


def dpo_loss(logits: torch.Tensor, labels: torch.Tensor, offsets: Optional[torch.Tensor] = None,
             *, loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
             ref_logps: Optional[torch.Tensor] = None,
             soft_labels: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
             pairs: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None,
             token_weights: Optional[torch.Tensor] = None,
             reduction: str = "mean", normalizer: Optional[float] = None,
             average_logps: Optional[bool] = None, ignore_index: int = -100,
             alpha: float = 1.0, gamma: float = 0.0, epsilon: Optional[float] = None,
             tau: float = 0.05, bco_delta: float = 0.0, margin_transform: str = "reverse_kl",
             f_alpha: float = 1.0, geometric: bool = False,
             loss_weights: Optional[Sequence[float]] = None, nll_tokens: float = 0.0,
             nll_weight: float = 0.0, logit_scale: float = 1.0, softcap: float = 0.0,
             temperature: float = 1.0, check: bool = True) -> DPOOutput:
    """A DPO-family loss from the policy's logits, forward and backward fused.

    logits: [B, T, V] (B = 2P sequences, chosen first) with labels [B, T], or
      [N, V] packed rows with labels [N] and offsets [S + 1]; float32, float16,
      bfloat16 (float64 on CPU). Differentiable.
    loss_type: a TRL name ("sigmoid", "ipo", "hinge", "robust", "exo_pair",
      "discopop", "simpo") or any geopref name from loss_types() ("gdpo",
      "cdpo", "gipo", "ropo", ...); or a list of them (at most 8), with
      loss_weights (default 1 each): their weighted sum, TRL's list of loss
      types with loss_weights, in one pass.
    beta: TRL's beta. ref_logps: [S] the reference model's log-probs in the
      same form (sequence_logps of its logits), None: reference-free.
    soft_labels: [P] (or a float) p = P(chosen > rejected) in [0, 1]; None: 1.
    label_smoothing: TRL v0.28's: cDPO for "sigmoid", epsilon for
      "robust"/"exo_pair" (TRL v1.16.0's "sigmoid" has no smoothing; its
      aot's is soft_labels = 1 - label_smoothing).
    pairs: [P, 2] explicit (first, second) sequence indices; weights: [P] >= 0.
    token_weights: per-token weights shaped like labels (LD-DPO's length
      desensitisation): L_s = sum of w_t log p_t over the scored rows; finite;
      not differentiable. None: all 1.
    reduction: "mean" (TRL's), "sum" or "none"; normalizer: divide the sum by
      this count instead (gradient accumulation / data parallel).
    average_logps: margins from L_s / n_s (default: TRL's choice, True for ipo;
      simpo always averages). alpha, gamma: ropo/gropo weights, simpo's gamma
      (TRL's simpo_gamma); epsilon: robust/exo_pair; tau: discopop (TRL's
      discopop_tau); bco_delta: bco_pair's reward offset (0: TRL 1.16's
      bco_pair).
    margin_transform: "reverse_kl" (default), "js" or "alpha" (with f_alpha
      > 0): the transform phi of every margin term, h = phi(rho_w) -
      phi(rho_l) (TRL's f_divergence_type; f_alpha is 1 - TRL 1.16's
      f_alpha_divergence_coef, docs/math.md 5).
    geometric: the soft-label geometric form f((2p - 1) h) of every margin
      term (geometric=True with "sigmoid" is "gdpo").
    nll_tokens, nll_weight: data parallel, for an sft term: the global sum
      of the chosen responses' token counts and of the pair weights over the
      live pairs of every rank (0: this rank's batch is the whole batch).
    logit_scale, softcap, temperature: the logit transform, applied to every
      logit z before the softmax: z' = softcap * tanh(logit_scale * z /
      softcap) / temperature, or logit_scale * z / temperature with softcap 0
      (the default, identity). Gemma's final_logit_softcapping is softcap,
      Granite's / Cohere's logit scale logit_scale, a sampling temperature
      temperature. The log-probs, loss and metrics are those of z'; the
      gradient is with respect to the logits given. logit_scale and
      temperature must be finite and > 0, softcap finite and >= 0
      (ValueError otherwise).
    check: on CUDA, read the kernels' verdict on the data (labels, offsets,
      soft labels...) after the call; it synchronises, so pass False inside
      CUDA graphs.

    Returns DPOOutput(loss, logps [S], metrics {TRL name: 0-dim tensor},
    metric_sums [8]: the metrics as sums over the pairs, then P, for a
    data-parallel all-reduce and metrics_from_sums).
    Bad inputs raise ValueError (shapes, values, loss parameters), IndexError
    (a label or pair index out of range) or TypeError (dtypes), with geopref's
    message.
    """
    tw = _token_weights(token_weights, labels)
    z, y, off = _tokens(logits, labels, offsets)
    soft_labels, options = _loss_config(off, pairs, z.device, soft_labels, label_smoothing,
                                        **_options_of(locals()))
    transform = _logit_transform(logit_scale=logit_scale, softcap=softcap,
                                 temperature=temperature)
    value, seq_logps, metrics, _, _, _, sums = ops.pref_loss(
        z, y, off, pairs, soft_labels, ref_logps, weights, tw, options, bool(check), transform)
    return DPOOutput(value, seq_logps, dict(zip(METRIC_NAMES, metrics.unbind(0))), sums)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor,
                   offsets: Optional[torch.Tensor] = None, *,
                   loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
                   token_weights: Optional[torch.Tensor] = None,
                   reduction: str = "mean", normalizer: Optional[float] = None,
                   average_logps: Optional[bool] = None, ignore_index: int = -100,
                   alpha: float = 1.0, gamma: float = 0.0, epsilon: Optional[float] = None,
                   tau: float = 0.05, bco_delta: float = 0.0,
                   margin_transform: str = "reverse_kl", f_alpha: float = 1.0,
                   geometric: bool = False, loss_weights: Optional[Sequence[float]] = None,
                   nll_tokens: float = 0.0, nll_weight: float = 0.0, logit_scale: float = 1.0,
                   softcap: float = 0.0, temperature: float = 1.0,
                   check: bool = True) -> torch.Tensor:
    """[S] per-sequence log-probs L_s = sum of w_t log softmax(z_t)[y_t] over
    scored rows (L_s / n_s when averaged; 0 for a sequence with no scored row).
    The reference model's pass (its output is dpo_loss's ref_logps), and a
    differentiable primitive for a loss of one's own.

    Takes dpo_loss's option keywords (every field of the library's options),
    so one set of keywords serves both calls: with the same loss_type and
    average_logps as dpo_loss the log-probs are in the form its margin uses
    (averaged for "ipo" by default, as TRL, and always for simpo and orpo).
    Of the options only that and ignore_index change the result; the others
    are validated as dpo_loss validates them.
    token_weights: per-token weights shaped like labels, as dpo_loss's.
    logit_scale, softcap, temperature: the logit transform, as dpo_loss's
    (a reference model's log-probs take its own model's transform)."""
    tw = _token_weights(token_weights, labels)
    z, y, off = _tokens(logits, labels, offsets)
    _, options = _loss_config(off, None, z.device, None, 0.0, **_options_of(locals()))
    transform = _logit_transform(logit_scale=logit_scale, softcap=softcap,
                                 temperature=temperature)
    return ops.sequence_logps(z, y, off, tw, options, bool(check), transform)[0]


# The per-token outputs token_logps and linear_token_logps compute on request
# (outputs=...), TRL 1.16.0's names (FusedCausalLMOutput's per-token fields).
TOKEN_OUTPUTS = ("log_probs",) + TOKEN_STATS


class TokenStats(NamedTuple):
    """token_logps / linear_token_logps with outputs=...: every field shaped
    like the labels, 0 (False) on ignored rows; None for a statistic not asked
    for. Differentiable: log_probs and entropy (one fused backward takes
    both upstreams); log_sum_sq_probs, mean_logits and is_top1 are not."""
    log_probs: torch.Tensor                   # log softmax(z')[y_t], float32 (float64 for float64)
    entropy: Optional[torch.Tensor]           # -sum_v p log p of softmax(z')
    log_sum_sq_probs: Optional[torch.Tensor]  # log sum_v p_v^2 (no gradient)
    mean_logits: Optional[torch.Tensor]       # (1/V) sum_v z'_v, the transformed logits (no gradient)
    is_top1: Optional[torch.Tensor]           # bool: y_t is the FIRST arg-max of the row (no gradient)


def _token_outputs(outputs, return_entropy):
    """The statistics to compute: {name: bool} for TOKEN_STATS, from outputs
    (a sequence of TOKEN_OUTPUTS' names, or None) and return_entropy."""
    if outputs is None:
        return {n: (n == "entropy" and bool(return_entropy)) for n in TOKEN_STATS}
    if isinstance(outputs, str) or not all(isinstance(o, str) for o in outputs):
        raise TypeError(f"geopref: outputs must be a sequence of names among "
                        f"{list(TOKEN_OUTPUTS)} (e.g. (\"log_probs\", \"entropy\")), got "
                        f"{outputs!r}")
    unknown = [o for o in outputs if o not in TOKEN_OUTPUTS]
    if unknown:
        raise ValueError(f"geopref: unknown outputs {unknown}; known: {list(TOKEN_OUTPUTS)}")
    return {n: n in outputs or (n == "entropy" and bool(return_entropy)) for n in TOKEN_STATS}


def _token_result(shape, logps, stats, want, outputs, return_entropy):
    """What token_logps / linear_token_logps return: TokenStats with outputs,
    else logps (and the entropy with return_entropy), shaped like the labels."""
    if outputs is None:
        if return_entropy:
            return logps.reshape(shape), stats[0].reshape(shape)
        return logps.reshape(shape)
    return TokenStats(logps.reshape(shape),
                      *(x.reshape(shape) if want[n] else None for n, x in zip(TOKEN_STATS, stats)))


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, *,
                return_entropy: bool = False, outputs: Optional[Sequence[str]] = None,
                logit_scale: float = 1.0, softcap: float = 0.0,
                temperature: float = 1.0, check: bool = True):
    """Per-token log-probs of the selected tokens, log softmax(z_t)[y_t], the
    way TRL's selective_log_softmax computes them but fused (no [N, V]
    log-softmax is ever held): the building block for a loss kept in one's
    own code (GRPO's clipped ratios, KTO, SFT).

    logits: [..., V] (e.g. [B, T, V]) with labels [...] (already shifted);
      float32, float16, bfloat16 (float64 on CPU). Differentiable: the
      backward is one fused pass, grad_t (1[v = y_t] - softmax_t).
    ignore_index: rows with this label get log-prob 0 and zero gradient.
    return_entropy: also return the per-token entropy -sum_v p log p (0 on
      ignored rows; differentiable; a second read of the logits).
    outputs: TRL 1.16.0's per-token statistics to compute, a sequence of
      names among TOKEN_OUTPUTS: "log_probs" (always computed), "entropy",
      "log_sum_sq_probs" (log sum_v p_v^2), "mean_logits" (the mean
      transformed logit), "is_top1" (the label is the row's first arg-max: a
      tie with an earlier column does not count, TRL's rule). With outputs
      the result is a TokenStats (None for what was not asked for; each
      statistic costs one shared second read of the logits). Differentiable:
      log_probs and entropy, their upstreams in one fused backward
      (g_t (1[v = y_t] - p_v) - e_t p_v (log p_v + H_t)); the other three
      are not.
    logit_scale, softcap, temperature: the logit transform, as dpo_loss's:
      log-probs and entropy of softmax(z') (GRPO's sampling temperature is
      temperature), the gradient with respect to the logits given.
    check: on CUDA, read the kernels' verdict on the data (labels out of
      range, a non-finite upstream gradient) after the forward and after the
      backward; each read synchronises the stream, so a training loop that
      validates its labels elsewhere passes False (and must inside CUDA graphs).
    Returns logps shaped like labels (float32; float64 for float64 logits),
    and the entropy likewise with return_entropy; a TokenStats with outputs.
    """
    if logits.dim() < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(f"geopref: labels must have shape logits.shape[:-1] = "
                         f"{list(logits.shape[:-1])}, got {list(labels.shape)}")
    want = _token_outputs(outputs, return_entropy)
    shape = labels.shape
    z = logits.reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    transform = _logit_transform(logit_scale=logit_scale, softcap=softcap,
                                 temperature=temperature)
    logps, _, *stats = ops.token_logps(z, y, int(ignore_index), want["entropy"], bool(check),
                                       transform, log_sum_sq_probs=want["log_sum_sq_probs"],
                                       mean_logits=want["mean_logits"], is_top1=want["is_top1"])
    return _token_result(shape, logps, stats, want, outputs, return_entropy)


# The library's default budget for one chunk of logits (geopref::cuda::linear_inputs).
DEFAULT_CHUNK_BYTES = 1 << 30


def _grad_mask(*tensors):
    """Which of hidden, weight, bias the backward will need a gradient for."""
    on = torch.is_grad_enabled()
    return [bool(on and t is not None and t.requires_grad) for t in tensors]


def _as_host(values, like, name):
    """A caller's host copy (a CPU tensor or a list) as the CPU int64 tensor
    the operators take, in the shape of what it copies."""
    h = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.int64)
    if h.device.type != "cpu":
        raise ValueError(f"geopref: {name} must be a CPU tensor or a list (a host copy), "
                         f"got a tensor on {h.device}")
    return h.to(torch.int64).reshape(like.shape)


def _host_layout(x, padded, off, pairs, check, host_offsets=None, host_pairs=None):
    """The host copies of offsets and pairs that opt fused_linear_step in to
    its one pass (CPU int64; None: not given, two passes):
      offsets: for the padded [B, T, H] layout (padded = (B, T)) built on the
        host as s * T, no device read; else the caller's host_offsets; else a
        .cpu() copy of the offsets when they are already host memory, or when
        check=True (which synchronises the stream anyway); else None.
      pairs: None for TRL's layout (pairs None); else the caller's host_pairs;
        else a .cpu() copy under the same rule (host memory, check=True, or
        host_offsets given: the caller accepted the read); else None.
    The CPU kernels compare the copies with offsets and pairs; on CUDA the
    library does, on the device (host_layout_mismatch, raised with check)."""
    on_host = x.device.type == "cpu"
    if padded is not None:
        b, t = padded
        h_off = torch.arange(b + 1, dtype=torch.int64) * t
    elif host_offsets is not None:
        h_off = _as_host(host_offsets, off, "host_offsets")
    elif on_host or check:
        h_off = off.to(device="cpu", dtype=torch.int64)
    else:
        h_off = None
    if pairs is None:
        if host_pairs is not None:
            raise ValueError("geopref: host_pairs is given without pairs (TRL's layout needs none)")
        h_pairs = None
    elif host_pairs is not None:
        h_pairs = _as_host(host_pairs, pairs, "host_pairs")
    elif on_host or check or host_offsets is not None:
        h_pairs = pairs.to(device="cpu", dtype=torch.int64)
    else:
        h_pairs = None
    return h_off, h_pairs


def _autocast(hidden, weight, bias):
    """Under torch.autocast, the dtype autocast would give the lm_head's
    F.linear (float32 master weights with bfloat16 activations, say): one
    dtype for all three, as the operators need. Differentiable casts, so
    weight.grad stays in the weight's dtype."""
    dev = hidden.device.type
    if not torch.is_autocast_enabled(dev):
        return hidden, weight, bias
    dt = torch.get_autocast_dtype(dev)
    return tuple(None if t is None else t.to(dt) for t in (hidden, weight, bias))


def fused_linear_preference_loss(
        hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
        offsets: Optional[torch.Tensor] = None, *, bias: Optional[torch.Tensor] = None,
        loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
        ref_logps: Optional[torch.Tensor] = None,
        soft_labels: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
        pairs: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None,
        token_weights: Optional[torch.Tensor] = None,
        reduction: str = "mean", normalizer: Optional[float] = None,
        average_logps: Optional[bool] = None, ignore_index: int = -100, alpha: float = 1.0,
        gamma: float = 0.0, epsilon: Optional[float] = None, tau: float = 0.05,
        bco_delta: float = 0.0, margin_transform: str = "reverse_kl", f_alpha: float = 1.0,
        geometric: bool = False, loss_weights: Optional[Sequence[float]] = None,
        nll_tokens: float = 0.0, nll_weight: float = 0.0, logit_scale: float = 1.0,
        softcap: float = 0.0, temperature: float = 1.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES, check: bool = True,
        host_offsets=None, host_pairs=None,
        grad_weight_accumulator: Optional[torch.Tensor] = None,
        grad_bias_accumulator: Optional[torch.Tensor] = None) -> DPOOutput:
    """dpo_loss from the last hidden states and the output projection (the
    lm_head's weight and bias) instead of the logits, which never exist whole:
    on CUDA they are formed one chunk of rows at a time (at most chunk_bytes),
    with the loss, the metrics and the gradients with respect to hidden,
    weight and bias computed in the same call (geopref's fused_linear_step).
    Replaces `dpo_loss(lm_head(hidden), labels, ...)`:

        out = gp.fused_linear_preference_loss(hidden, lm_head.weight, labels,
                                              bias=lm_head.bias, loss_type="gdpo",
                                              soft_labels=p, ref_logps=ref)
        out.loss.backward()   # hidden.grad (into the model), lm_head.weight.grad, .bias.grad

    hidden: [B, T, H] (B = 2P sequences, chosen first) with labels [B, T], or
      [N, H] packed rows with labels [N] and offsets [S + 1]. weight: [V, H],
      bias: [V] or None; one dtype for all three: float32, float16, bfloat16
      (float64 on CPU), or under torch.autocast the autocast dtype (all three
      cast to it, as autocast casts an F.linear). Differentiable with respect
      to all three.
    Every other argument is dpo_loss's (loss_type, beta, ref_logps,
      soft_labels, label_smoothing, pairs, weights, token_weights, reduction, normalizer,
      average_logps, ignore_index, alpha, gamma, epsilon, tau, bco_delta,
      margin_transform, f_alpha, geometric, loss_weights, nll_tokens,
      nll_weight, logit_scale, softcap, temperature, check); the logit transform applies to the
      logits hidden·weightᵀ + bias, the gradients are with respect to hidden,
      weight and bias.
    chunk_bytes: the CUDA path's budget for one chunk of logits (whole rows of
      V rounded up to 16 bytes; less than one row is a ValueError). The
      workspace is about this much plus O(N); the result does not depend on
      it beyond float rounding. On CPU the logits are formed whole.
    host_offsets, host_pairs: host copies (CPU tensors or lists) of packed
      offsets [S + 1] and of pairs [P, 2], for the one-pass path below.
    grad_weight_accumulator: [V, H] float32 (or the weight's dtype), a
      master gradient buffer kept across micro-batches: the backward adds
      upstream * dLoss/dweight into it (the library's grad_weight_float32
      and accumulate: the chunks' sums in float32, no [V, H] temporary)
      instead of giving the weight a .grad; grad_bias_accumulator: [V]
      float32, the same for the bias (needed when the bias requires grad).
      The backward then runs the step again with the upstream gradient (one
      more logits GEMM per chunk), as for reduction "none"; the forward
      computes the loss only. Eager mode (not for torch.compile).

    One pass or two (CUDA). With host copies of the offsets (and of the
    pairs, when given) the library knows on the host which rows each chunk
    holds, and for losses that do not couple the batch (all but aot,
    aot_unpaired and an sft term) runs one pass of three GEMMs per chunk
    (logits, grad_hidden, grad_weight) instead of two passes and four. The
    copies cost nothing for [B, T, H] hidden states (the offsets are s * T,
    built on the host; pairs, if given, as below). For packed offsets and for
    pairs on CUDA, reading them is a device-to-host synchronisation, so they
    are copied only when check=True (which synchronises after the call
    anyway) or when host_offsets is given (then pairs too, unless host_pairs
    is); with check=False and no host_offsets the call stays free of host
    reads and runs two passes. A training loop that builds its offsets and
    pairs on the host passes them here and keeps check=False. The copies are
    compared with the device arrays (on CUDA by the kernels: a difference is
    reported with check=True; on CPU at once): a wrong copy raises ValueError.
    A call with host copies cannot be captured in a CUDA graph.
    fused_linear_one_pass(...) says which path a call takes.

    Returns DPOOutput(loss, logps [S], metrics). Unlike dpo_loss's, logps
    here is not differentiable (a gradient through it would cost another pass
    over the logits): use fused_linear_logps for that.

    The gradients are computed in the forward (for an upstream gradient of 1)
    when hidden, weight or bias requires grad and grad mode is on, and held
    until backward, which multiplies them by the upstream gradient (as
    Liger-Kernel's fused-linear losses do): between the two, the memory of
    grad_hidden [N, H] and grad_weight [V, H] is in use. With reduction
    "none" the backward runs the step again with the per-pair upstream.
    """
    args = _linear_pref_args(hidden, weight, labels, offsets, bias, ref_logps, soft_labels,
                             label_smoothing, pairs, weights, token_weights, chunk_bytes, check,
                             host_offsets, host_pairs,
                             _logit_transform(logit_scale=logit_scale, softcap=softcap,
                                              temperature=temperature),
                             _options_of(locals()),
                             accumulate=(grad_weight_accumulator is not None
                                         or grad_bias_accumulator is not None))
    if grad_weight_accumulator is not None or grad_bias_accumulator is not None:
        value, seq_logps, metrics, sums = _linear_accumulate(
            args, grad_weight_accumulator, grad_bias_accumulator)
    else:
        value, seq_logps, metrics, _, _, _, sums = ops.linear_pref_loss(**args)
    return DPOOutput(value, seq_logps, dict(zip(METRIC_NAMES, metrics.unbind(0))), sums)


def _linear_pref_args(hidden, weight, labels, offsets, bias, ref_logps, soft_labels,
                      label_smoothing, pairs, weights, token_weights, chunk_bytes, check,
                      host_offsets, host_pairs, transform, keywords, accumulate=False):
    """fused_linear_preference_loss's arguments -> linear_pref_loss's, by the
    names of its schema."""
    hidden, weight, bias = _autocast(hidden, weight, bias)
    padded = tuple(hidden.shape[:2]) if hidden.dim() == 3 else None
    if padded is not None and (host_offsets is not None):
        raise ValueError("geopref: host_offsets are implied by [B, T, H] hidden states")
    tw = _token_weights(token_weights, labels)
    x, y, off = _tokens(hidden, labels, offsets, what="hidden states")
    soft_labels, options = _loss_config(off, pairs, x.device, soft_labels, label_smoothing,
                                        **keywords)
    # Gradients in the forward only where the backward scales them; a
    # per-pair upstream (reduction "none") and the accumulators need the
    # step again anyway.
    mask = (_grad_mask(x, weight, bias) if keywords["reduction"] != "none" and not accumulate
            else [False] * 3)
    h_off, h_pairs = _host_layout(x, padded, off, pairs, bool(check), host_offsets, host_pairs)
    return dict(hidden=x, weight=weight, bias=bias, labels=y, offsets=off, pairs=pairs,
                soft_labels=soft_labels, ref_logps=ref_logps, weights=weights, token_weights=tw,
                options=options, chunk_bytes=int(chunk_bytes), grad_mask=mask,
                check=bool(check), logit_transform=transform, host_offsets=h_off,
                host_pairs=h_pairs)


class _LinearAccumulate(torch.autograd.Function):
    """fused_linear_preference_loss with the caller's gradient accumulators:
    the forward computes the loss (linear_pref_loss without gradients), the
    backward runs linear_pref_loss_accumulate with the upstream gradient,
    which adds into the accumulators and returns grad_hidden. Only hidden
    gets an autograd gradient."""

    # weight and bias are inputs so that the backward runs when only they
    # require grad (a frozen body); they get no autograd gradient.
    @staticmethod
    def forward(ctx, hidden, weight, bias, args, acc_w, acc_b):
        args = dict(args, hidden=hidden, weight=weight, bias=bias)
        value, seq_logps, metrics, _, _, _, sums = ops.linear_pref_loss(**args)
        ctx.args, ctx.acc = args, (acc_w, acc_b)
        ctx.mark_non_differentiable(seq_logps, metrics, sums)
        return value, seq_logps, metrics, sums

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grad_hidden = None
        if grad_loss is not None:
            args = dict(ctx.args, grad_mask=[bool(ctx.needs_input_grad[0]), False, False])
            grad_hidden = ops.linear_pref_loss_accumulate(
                grad_loss, **args, grad_weight_acc=ctx.acc[0], grad_bias_acc=ctx.acc[1])
            if not ctx.needs_input_grad[0]:
                grad_hidden = None
        return grad_hidden, None, None, None, None, None


def _linear_accumulate(args, acc_w, acc_b):
    bias = args["bias"]
    if acc_w is None and args["weight"].requires_grad:
        raise ValueError("geopref: grad_bias_accumulator without grad_weight_accumulator for a "
                         "weight that requires grad: give both, or neither")
    if acc_b is None and bias is not None and bias.requires_grad:
        raise ValueError("geopref: grad_weight_accumulator with a bias that requires grad: "
                         "give grad_bias_accumulator too ([V] float32)")
    if not torch.is_grad_enabled():
        # No backward will run: the loss alone, as without accumulators.
        value, seq_logps, metrics, _, _, _, sums = ops.linear_pref_loss(**args)
        return value, seq_logps, metrics, sums
    return _LinearAccumulate.apply(args["hidden"], args["weight"], bias, args, acc_w, acc_b)


def fused_linear_one_pass(
        hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
        offsets: Optional[torch.Tensor] = None, **kwargs) -> bool:
    """Whether fused_linear_preference_loss with these arguments (the same
    ones, in the same grad mode: the one pass needs a gradient asked for)
    runs the one-pass path on CUDA: a host-side query of the library
    (geopref_fused_linear_one_pass; no kernel, no allocation beyond the
    arguments' own conversion). Always False on CPU, where the reference
    forms the logits whole. For tests and benchmarks; not traceable."""
    names = ("bias", "ref_logps", "soft_labels", "label_smoothing", "pairs", "weights",
             "token_weights", "chunk_bytes", "check", "host_offsets", "host_pairs")
    unknown = set(kwargs) - set(names) - set(LOGIT_TRANSFORM_KEYWORDS) - set(OPTIONS_KEYWORDS)
    if unknown:
        raise TypeError(f"geopref.fused_linear_one_pass: unknown arguments {sorted(unknown)}")
    defaults = dict(bias=None, ref_logps=None, soft_labels=None, label_smoothing=0.0, pairs=None,
                    weights=None, token_weights=None, chunk_bytes=DEFAULT_CHUNK_BYTES, check=True,
                    host_offsets=None, host_pairs=None)
    defaults.update({f.keyword: f.default for f in LOGIT_TRANSFORM_FIELDS})
    defaults.update(OPTIONS_DEFAULTS)
    defaults.update(kwargs)
    transform = _logit_transform(**{k: defaults[k] for k in LOGIT_TRANSFORM_KEYWORDS})
    args = _linear_pref_args(hidden, weight, labels, offsets, *(defaults[n] for n in names),
                             transform, {k: defaults[k] for k in OPTIONS_KEYWORDS})
    return bool(ops.linear_one_pass(**args))


def fused_linear_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       offsets: Optional[torch.Tensor] = None, *,
                       bias: Optional[torch.Tensor] = None,
                       loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
                       token_weights: Optional[torch.Tensor] = None,
                       reduction: str = "mean", normalizer: Optional[float] = None,
                       average_logps: Optional[bool] = None, ignore_index: int = -100,
                       alpha: float = 1.0, gamma: float = 0.0, epsilon: Optional[float] = None,
                       tau: float = 0.05, bco_delta: float = 0.0,
                       margin_transform: str = "reverse_kl", f_alpha: float = 1.0,
                       geometric: bool = False, loss_weights: Optional[Sequence[float]] = None,
                       nll_tokens: float = 0.0, nll_weight: float = 0.0,
                       logit_scale: float = 1.0, softcap: float = 0.0, temperature: float = 1.0,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES, check: bool = True) -> torch.Tensor:
    """sequence_logps from hidden states and the output projection, the
    logits never whole (one chunk of at most chunk_bytes at a time on CUDA):
    the reference model's pass, whose output is fused_linear_preference_loss's
    ref_logps (with the same average_logps), e.g.

        with torch.no_grad():
            ref = gp.fused_linear_logps(ref_hidden, ref_lm_head.weight, labels)

    Shapes, dtypes and the logit transform (logit_scale, softcap,
    temperature) as fused_linear_preference_loss; the option keywords and
    token_weights as sequence_logps's (the same keywords as the loss give
    the log-probs in the form its margin uses). Differentiable with
    respect to hidden, weight and bias (a backward pass of three GEMMs per
    chunk: the logits again, grad_hidden, grad_weight)."""
    hidden, weight, bias = _autocast(hidden, weight, bias)
    tw = _token_weights(token_weights, labels)
    x, y, off = _tokens(hidden, labels, offsets, what="hidden states")
    _, options = _loss_config(off, None, x.device, None, 0.0, **_options_of(locals()))
    transform = _logit_transform(logit_scale=logit_scale, softcap=softcap,
                                 temperature=temperature)
    return ops.linear_sequence_logps(x, weight, bias, y, off, tw, options, int(chunk_bytes),
                                     bool(check), transform)[0]


def linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       ignore_index: int = -100, *, bias: Optional[torch.Tensor] = None,
                       return_entropy: bool = False, outputs: Optional[Sequence[str]] = None,
                       logit_scale: float = 1.0, softcap: float = 0.0, temperature: float = 1.0,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES, check: bool = True):
    """token_logps from the last hidden states and the output projection, the
    logits never whole (one chunk of at most chunk_bytes at a time on CUDA):
    log softmax(hidden·weightᵀ + bias)[y_t] per token, for a loss kept in
    one's own code (GRPO, KTO, SFT) without the [..., V] logits.

    hidden: [..., H] with labels [...]; weight [V, H], bias [V] or None; one
      dtype for all three (float32, float16, bfloat16; float64 on CPU), or the
      autocast dtype. Differentiable with respect to hidden, weight and bias:
      the backward is geopref's linear_token_logps_grad (the logits again per
      chunk, then grad_hidden, grad_weight, grad_bias); for a float16 /
      bfloat16 weight, its gradient sums every chunk in float32 and is
      rounded once (the library's grad_weight_float32, as TRL 1.16.0's fused
      head accumulates it).
    ignore_index, return_entropy, outputs (TRL's statistics, a TokenStats;
      the entropy differentiable), the logit transform and check:
      token_logps's; chunk_bytes: fused_linear_preference_loss's.
    Returns logps shaped like labels (and the entropy likewise with
    return_entropy); a TokenStats with outputs.
    """
    if hidden.dim() < 1 or labels.shape != hidden.shape[:-1]:
        raise ValueError(f"geopref: labels must have shape hidden.shape[:-1] = "
                         f"{list(hidden.shape[:-1])}, got {list(labels.shape)}")
    want = _token_outputs(outputs, return_entropy)
    hidden, weight, bias = _autocast(hidden, weight, bias)
    shape = labels.shape
    transform = _logit_transform(logit_scale=logit_scale, softcap=softcap,
                                 temperature=temperature)
    logps, _, *stats = ops.linear_token_logps(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, labels.reshape(-1),
        int(ignore_index), want["entropy"], int(chunk_bytes), bool(check), transform,
        log_sum_sq_probs=want["log_sum_sq_probs"], mean_logits=want["mean_logits"],
        is_top1=want["is_top1"])
    return _token_result(shape, logps, stats, want, outputs, return_entropy)


def metrics_to_floats(metrics: Dict[str, torch.Tensor], prefix: str = "") -> Dict[str, float]:
    """The metrics as {prefix + name: float}, as TRL logs them (copies to the host)."""
    values = torch.stack(list(metrics.values())).tolist()
    return {prefix + k: v for k, v in zip(metrics.keys(), values)}


# ---- Vocab parallelism (docs/distributed.md §1): the logits, or the
# lm_head's weight, split by vocabulary columns over K ranks. Each rank calls
# *_stats on its slice, all-gathers the records with its own collective, and
# calls the step with the gathered [K, N, 4]:
#
#     sl = gp.even_slice(V, rank, K)                 # VocabSlice(begin, total, rank, n_ranks)
#     rec = gp.vocab_parallel_stats(my_logits, labels, vocab_slice=sl)
#     gathered = torch.empty((K,) + rec.shape, dtype=rec.dtype, device=rec.device)
#     dist.all_gather_into_tensor(gathered, rec)
#     out = gp.vocab_parallel_loss(my_logits, labels, gathered, vocab_slice=sl, ...)
#     out.loss.backward()                            # my_logits.grad: this rank's slice

class VocabSlice(NamedTuple):
    """Where a rank's slice lies in the vocabulary (geopref_vocab_slice)."""
    begin: int    # the slice's first global column
    total: int    # V, the whole vocabulary (labels are global columns)
    rank: int     # 0 <= rank < n_ranks; records are combined in rank order
    n_ranks: int  # K


# The operators' vocab_slice list is VocabSlice's fields in this order, read
# from the compiled library (the fields of geopref_vocab_slice).
if VocabSlice._fields != VOCAB_SLICE_FIELDS:
    raise ImportError(f"geopref_torch: VocabSlice {VocabSlice._fields} is not the library's "
                      f"vocab slice {VOCAB_SLICE_FIELDS}")


def even_slice(total: int, rank: int, n_ranks: int) -> Tuple[VocabSlice, int]:
    """The library's even split (geopref::cuda::even_slice): rank r owns
    [r·⌊V/K⌋, (r+1)·⌊V/K⌋), the last rank up to V. Returns (slice, width)."""
    per = total // n_ranks
    width = total - per * rank if rank == n_ranks - 1 else per
    return VocabSlice(per * rank, total, rank, n_ranks), width


def _vocab_slice(vocab_slice):
    return [int(x) for x in VocabSlice(*vocab_slice)]


def vocab_parallel_stats(logits: torch.Tensor, labels: torch.Tensor,
                         offsets: Optional[torch.Tensor] = None, *, vocab_slice: VocabSlice,
                         ignore_index: int = -100, logit_scale: float = 1.0, softcap: float = 0.0,
                         temperature: float = 1.0, check: bool = True) -> torch.Tensor:
    """This rank's records [N, 4] from its slice of the logits ([B, T, V_r]
    with labels [B, T], or [N, V_r] with labels [N] and offsets): one record
    per row (the slice's log-sum-exp state and, when the slice owns the label,
    its logit), to all-gather into [K, N, 4] for vocab_parallel_loss /
    vocab_parallel_logps. An opaque tensor: int32 on CUDA (the library's
    16-byte record), float64 on CPU (the reference's); gather it as it is.
    Labels are global columns; the logit transform is dpo_loss's."""
    z, y, off = _tokens(logits, labels, offsets)
    return ops.vocab_parallel_stats(
        z, y, off, _vocab_slice(vocab_slice), pack_options(ignore_index=int(ignore_index)),
        bool(check), _logit_transform(logit_scale=logit_scale, softcap=softcap,
                                      temperature=temperature))


def vocab_parallel_loss(logits: torch.Tensor, labels: torch.Tensor, records: torch.Tensor,
                        offsets: Optional[torch.Tensor] = None, *, vocab_slice: VocabSlice,
                        loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
                        ref_logps: Optional[torch.Tensor] = None,
                        soft_labels: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                        pairs: Optional[torch.Tensor] = None,
                        weights: Optional[torch.Tensor] = None,
                        token_weights: Optional[torch.Tensor] = None, reduction: str = "mean",
                        normalizer: Optional[float] = None, average_logps: Optional[bool] = None,
                        ignore_index: int = -100, alpha: float = 1.0, gamma: float = 0.0,
                        epsilon: Optional[float] = None, tau: float = 0.05,
                        bco_delta: float = 0.0, margin_transform: str = "reverse_kl",
                        f_alpha: float = 1.0, geometric: bool = False,
                        loss_weights: Optional[Sequence[float]] = None, nll_tokens: float = 0.0,
                        nll_weight: float = 0.0, logit_scale: float = 1.0, softcap: float = 0.0,
                        temperature: float = 1.0, check: bool = True) -> DPOOutput:
    """dpo_loss for one rank of a vocab-parallel step (geopref's
    vocab_parallel_train_step): from this rank's slice of the logits and the
    gathered records [K, N, 4] (every rank's vocab_parallel_stats, slots in
    any order), the loss, log-probs and metrics of the whole vocabulary (the
    same bits on every rank) and, in the backward, the gradient with respect
    to this rank's slice only (computed in the forward, scaled by the
    upstream gradient, as fused_linear_preference_loss). Every other keyword
    is dpo_loss's. out.logps is not differentiable."""
    tw = _token_weights(token_weights, labels)
    z, y, off = _tokens(logits, labels, offsets)
    soft_labels, options = _loss_config(off, pairs, z.device, soft_labels, label_smoothing,
                                        **_options_of(locals()))
    grad = bool(torch.is_grad_enabled() and z.requires_grad and reduction != "none")
    value, seq_logps, metrics, sums, _ = ops.vocab_parallel_train_step(
        z, y, off, records, pairs, soft_labels, ref_logps, weights, tw,
        _vocab_slice(vocab_slice), options, grad, bool(check),
        _logit_transform(logit_scale=logit_scale, softcap=softcap, temperature=temperature))
    return DPOOutput(value, seq_logps, dict(zip(METRIC_NAMES, metrics.unbind(0))), sums)


def vocab_parallel_logps(logits: torch.Tensor, labels: torch.Tensor, records: torch.Tensor,
                         offsets: Optional[torch.Tensor] = None, *, vocab_slice: VocabSlice,
                         loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
                         token_weights: Optional[torch.Tensor] = None, reduction: str = "mean",
                         normalizer: Optional[float] = None,
                         average_logps: Optional[bool] = None, ignore_index: int = -100,
                         alpha: float = 1.0, gamma: float = 0.0, epsilon: Optional[float] = None,
                         tau: float = 0.05, bco_delta: float = 0.0,
                         margin_transform: str = "reverse_kl", f_alpha: float = 1.0,
                         geometric: bool = False, loss_weights: Optional[Sequence[float]] = None,
                         nll_tokens: float = 0.0, nll_weight: float = 0.0,
                         logit_scale: float = 1.0, softcap: float = 0.0, temperature: float = 1.0,
                         check: bool = True) -> torch.Tensor:
    """sequence_logps for one rank of a vocab-parallel pass (the reference
    model's): [S] per-sequence log-probs of the whole vocabulary from this
    rank's slice and the gathered records, the same on every rank. The
    keywords are sequence_logps's. Not differentiable."""
    tw = _token_weights(token_weights, labels)
    z, y, off = _tokens(logits, labels, offsets)
    _, options = _loss_config(off, None, z.device, None, 0.0, **_options_of(locals()))
    return ops.vocab_parallel_logps(
        z, y, off, records, tw, _vocab_slice(vocab_slice), options, bool(check),
        _logit_transform(logit_scale=logit_scale, softcap=softcap, temperature=temperature))[0]


def vocab_linear_stats(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       offsets: Optional[torch.Tensor] = None, *, vocab_slice: VocabSlice,
                       bias: Optional[torch.Tensor] = None, ignore_index: int = -100,
                       logit_scale: float = 1.0, softcap: float = 0.0, temperature: float = 1.0,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES, check: bool = True) -> torch.Tensor:
    """vocab_parallel_stats from the hidden states (the same on every rank)
    and this rank's rows of the lm_head, weight [V_r, H] and bias [V_r]
    (geopref's vocab_linear_stats: the logits one chunk at a time on CUDA)."""
    hidden, weight, bias = _autocast(hidden, weight, bias)
    x, y, off = _tokens(hidden, labels, offsets, what="hidden states")
    return ops.vocab_linear_stats(
        x, weight, bias, y, off, _vocab_slice(vocab_slice),
        pack_options(ignore_index=int(ignore_index)), int(chunk_bytes), bool(check),
        _logit_transform(logit_scale=logit_scale, softcap=softcap, temperature=temperature))


def vocab_linear_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      records: torch.Tensor, offsets: Optional[torch.Tensor] = None, *,
                      vocab_slice: VocabSlice, bias: Optional[torch.Tensor] = None,
                      loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
                      ref_logps: Optional[torch.Tensor] = None,
                      soft_labels: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                      pairs: Optional[torch.Tensor] = None,
                      weights: Optional[torch.Tensor] = None,
                      token_weights: Optional[torch.Tensor] = None, reduction: str = "mean",
                      normalizer: Optional[float] = None, average_logps: Optional[bool] = None,
                      ignore_index: int = -100, alpha: float = 1.0, gamma: float = 0.0,
                      epsilon: Optional[float] = None, tau: float = 0.05,
                      bco_delta: float = 0.0, margin_transform: str = "reverse_kl",
                      f_alpha: float = 1.0, geometric: bool = False,
                      loss_weights: Optional[Sequence[float]] = None, nll_tokens: float = 0.0,
                      nll_weight: float = 0.0, logit_scale: float = 1.0, softcap: float = 0.0,
                      temperature: float = 1.0, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      check: bool = True) -> DPOOutput:
    """fused_linear_preference_loss for one rank of a vocab-parallel step
    (geopref's vocab_linear_step): hidden states, this rank's weight [V_r, H]
    and bias [V_r], and the gathered records of vocab_linear_stats. The loss,
    log-probs and metrics are the whole vocabulary's; in the backward
    weight.grad and bias.grad are this rank's slices, complete, and
    hidden.grad is this rank's *partial* G_r·W_r: sum it over the ranks (an
    all-reduce in the backward of the caller's copy to the tensor-parallel
    region, as for any column-parallel linear layer). Every other keyword is
    fused_linear_preference_loss's."""
    hidden, weight, bias = _autocast(hidden, weight, bias)
    tw = _token_weights(token_weights, labels)
    x, y, off = _tokens(hidden, labels, offsets, what="hidden states")
    soft_labels, options = _loss_config(off, pairs, x.device, soft_labels, label_smoothing,
                                        **_options_of(locals()))
    mask = _grad_mask(x, weight, bias) if reduction != "none" else [False] * 3
    value, seq_logps, metrics, sums, _, _, _ = ops.vocab_linear_step(
        x, weight, bias, y, off, records, pairs, soft_labels, ref_logps, weights, tw,
        _vocab_slice(vocab_slice), options, int(chunk_bytes), mask, bool(check),
        _logit_transform(logit_scale=logit_scale, softcap=softcap, temperature=temperature))
    return DPOOutput(value, seq_logps, dict(zip(METRIC_NAMES, metrics.unbind(0))), sums)
