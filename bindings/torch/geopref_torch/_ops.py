"""Fake (meta) kernels and autograd for the torch.ops.geopref operators.

The operators and their CPU/CUDA kernels are registered in C++ (csrc/ops.cpp,
csrc/ops_cuda.cpp); this module adds what torch.compile and autograd need:
  * a fake kernel per operator (output shapes and dtypes only), so that
    torch.compile traces a call without running it and without a graph break;
  * the backward of pref_loss and sequence_logps, written with the operators
    themselves (logits_grad, pref_loss_grad_seq), so that the backward is
    traced too and runs the fused kernel on CUDA.
"""
from typing import NamedTuple

import torch

from . import _C  # noqa: F401  (loads the library: registers torch.ops.geopref.*)

ops = torch.ops.geopref


class LogitTransformField(NamedTuple):
    """One field of the library's logit transform (GEOPREF_LOGIT_TRANSFORM_FIELDS)."""
    name: str       # the C++ / C field: scale, softcap, temperature
    default: float
    flag: str       # geopref-check's flag, without the dashes: logit-scale, ...
    doc: str
    keyword: str    # the Python keyword: the flag with '_' for '-' (logit_scale, ...)


# Read once from the compiled library: the keywords of every function that
# reads logits, in the order of the operators' `logit_transform` argument.
LOGIT_TRANSFORM_FIELDS = tuple(
    LogitTransformField(n, d, f, doc, f.replace("-", "_"))
    for n, d, f, doc in zip(*ops.logit_transform_fields()))


class OptionsField(NamedTuple):
    """One field of the library's options (GEOPREF_OPTIONS_FIELDS)."""
    name: str       # the C++ member: type, beta, ..., reduce, ..., nll_weight
    kind: str       # real, boolean, integer, enum, count, list (geopref/losses.hpp)
    width: int      # its values in the operators' `options` list (1, or MAX_LOSS_TERMS)
    offset: int     # where they start there
    default: tuple  # its default value(s), packed (an enum's index)
    flag: str       # geopref-check's flag, without the dashes: loss, beta, bco-delta, ...
    doc: str
    choices: tuple  # an enum's names, in the library's order (else empty)
    keyword: str    # the Python keyword (api.py): the flag with '_' for '-', but
                    # loss_type (TRL's name) for the flag loss


def _options_fields():
    names, kinds, widths, defaults, flags, docs, choices = ops.options_fields()
    out, at = [], 0
    for n, k, w, f, doc, ch in zip(names, kinds, widths, flags, docs, choices):
        kw = "loss_type" if f == "loss" else f.replace("-", "_")
        out.append(OptionsField(n, k, w, at, tuple(defaults[at:at + w]), f, doc,
                                tuple(ch.split(",")) if ch else (), kw))
        at += w
    return tuple(out)


# Read once from the compiled library: the fields of the operators' packed
# `options` argument, in its order.
OPTIONS_FIELDS = _options_fields()
OPTIONS_WIDTH = sum(f.width for f in OPTIONS_FIELDS)
_FIELD = {f.name: f for f in OPTIONS_FIELDS}


def option_value(options, name):
    """A scalar field's value in a packed options list (an enum's name)."""
    f = _FIELD[name]
    v = options[f.offset]
    return f.choices[int(v)] if f.choices else v


def pack_options(**fields):
    """The operators' `options` list: the library's defaults (geopref::options{})
    with the given fields set, by their C++ names (beta=0.7, type="ipo",
    reduce="sum", terms=["dpo", "sft"], term_weights=[1, 0.5], n_terms=2, ...);
    enums by name (or index), arrays as lists of at most their width."""
    unknown = set(fields) - set(_FIELD)
    if unknown:
        raise TypeError(f"geopref: unknown options fields {sorted(unknown)} "
                        f"(fields: {[f.name for f in OPTIONS_FIELDS]})")
    out = []
    for f in OPTIONS_FIELDS:
        v = fields.get(f.name)
        if v is None:
            out += f.default
            continue
        vals = list(v) if f.width > 1 else [v]
        if len(vals) > f.width:
            raise ValueError(f"geopref: {f.name} takes at most {f.width} values, got {len(vals)}")
        packed = []
        for x in vals:
            if f.choices and isinstance(x, str):
                if x not in f.choices:
                    raise ValueError(f"geopref: {f.keyword} must be one of {list(f.choices)}, "
                                     f"got {x!r}")
                x = f.choices.index(x)
            packed.append(float(x))
        out += packed + list(f.default[len(packed):])
    return out


# ---- The operators' arguments by name. Autograd's setup_context receives an
# operator's inputs as a positional tuple; these helpers name them after the
# operator's schema (csrc/ops*.cpp), so that no backward depends on where an
# argument sits (a field or input added to a schema moves nothing here).

def _schema(op):
    """(argument names, the names of the Tensor / Tensor? arguments) of op's schema."""
    args = getattr(ops, op).default._schema.arguments
    names = tuple(a.name for a in args)
    tensors = frozenset(a.name for a in args if str(a.type) in ("Tensor", "Optional[Tensor]"))
    return names, tensors


def _named(op, inputs):
    """{argument name: value} of a call of op (its inputs as setup_context gets them)."""
    names, _ = _schema(op)
    return dict(zip(names, inputs))


def _save_named(ctx, op, inputs, *extra):
    """Saves op's tensor inputs by name (for _saved_named) and the other
    arguments as ctx.config, plus the tensors `extra` (returned after them)."""
    names, tensor_names = _schema(op)
    a = dict(zip(names, inputs))
    ctx.tensor_names = tuple(n for n in names if n in tensor_names)
    ctx.config = {n: a[n] for n in names if n not in tensor_names}
    ctx.save_for_backward(*(a[n] for n in ctx.tensor_names), *extra)


def _saved_named(ctx):
    """(the saved tensor inputs by name, the extra saved tensors)."""
    saved = ctx.saved_tensors
    k = len(ctx.tensor_names)
    return dict(zip(ctx.tensor_names, saved[:k])), saved[k:]


def _grads_for(op, grads):
    """The backward's result: grads {argument name: gradient}, None for the rest."""
    names, _ = _schema(op)
    return tuple(grads.get(n) for n in names)


def _float_out(logits):
    # Float outputs are float32, float64 for float64 logits (CPU only).
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _check_shapes(logits, labels, offsets, op):
    # The kernels check more (dtypes, contents); these are what the output
    # shapes depend on.
    if logits.dim() != 2:
        raise ValueError(f"geopref.{op}: logits must be 2-D [N, V], got {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"geopref.{op}: labels must be [N] = [{logits.shape[0]}], "
                         f"got {tuple(labels.shape)}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(f"geopref.{op}: offsets must be [S + 1], got {tuple(offsets.shape)}")


@torch.library.register_fake("geopref::pref_loss")
def _pref_loss_fake(logits, labels, offsets, pairs, soft_labels, ref_logps, weights, token_weights,
                    options, check, logit_transform):
    _check_shapes(logits, labels, offsets, "pref_loss")
    n, s = logits.shape[0], offsets.shape[0] - 1
    p = pairs.shape[0] if pairs is not None else s // 2
    dt = _float_out(logits)
    none = option_value(options, "reduce") == "none"
    value = logits.new_empty((p,) if none else (), dtype=dt)
    return (value, logits.new_empty((s,), dtype=dt), logits.new_empty((7,), dtype=torch.float64),
            logits.new_empty((n,), dtype=dt), logits.new_empty((s,), dtype=dt),
            logits.new_empty((s,), dtype=dt), logits.new_empty((8,), dtype=torch.float64))


@torch.library.register_fake("geopref::pref_loss_grad_seq")
def _pref_loss_grad_seq_fake(grad_output, logits, labels, offsets, *args):
    _check_shapes(logits, labels, offsets, "pref_loss_grad_seq")
    return logits.new_empty((offsets.shape[0] - 1,), dtype=_float_out(logits))


@torch.library.register_fake("geopref::sequence_logps")
def _sequence_logps_fake(logits, labels, offsets, token_weights, options, check,
                         logit_transform):
    _check_shapes(logits, labels, offsets, "sequence_logps")
    n, s = logits.shape[0], offsets.shape[0] - 1
    dt = _float_out(logits)
    return (logits.new_empty((s,), dtype=dt), logits.new_empty((n,), dtype=dt),
            logits.new_empty((s,), dtype=torch.int64), logits.new_empty((s,), dtype=dt))


@torch.library.register_fake("geopref::logits_grad")
def _logits_grad_fake(logits, labels, offsets, token_weights, lse, grad_seq, ignore_index, check,
                      logit_transform):
    _check_shapes(logits, labels, offsets, "logits_grad")
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


# ---- pref_loss: d/dlogits through g_s. The loss's g_s is linear in a scalar
# upstream gradient (a [S] multiply); a per-pair upstream (reduction none)
# needs the pair terms again (pref_loss_grad_seq). An upstream gradient on
# seq_logps adds seq_scale * grad to g_s. Only the logits get a gradient
# (labels, offsets, pairs, soft labels, reference log-probs, pair and token
# weights get none); logits_grad differentiates through the logit transform
# and applies the token weights.

def _pref_loss_setup(ctx, inputs, output):
    _, _, metrics, lse, grad_seq, seq_scale, sums = output
    _save_named(ctx, "pref_loss", inputs, lse, grad_seq, seq_scale)
    ctx.mark_non_differentiable(metrics, lse, grad_seq, seq_scale, sums)


def _logits_grad_of(t, config, lse, g):
    """logits_grad for the inputs t (by name) of a pref_loss / sequence_logps call."""
    return ops.logits_grad(t["logits"], t["labels"], t["offsets"], t["token_weights"], lse, g,
                           int(option_value(config["options"], "ignore_index")),
                           config["check"], config["logit_transform"])


def _pref_loss_backward(ctx, grad_loss, grad_seq_logps, *_):
    t, (lse, grad_seq, seq_scale) = _saved_named(ctx)
    reduction = option_value(ctx.config["options"], "reduce")
    g = None
    if grad_loss is not None:
        if reduction == "none":
            g = ops.pref_loss_grad_seq(grad_loss, **t, **ctx.config)
        else:
            g = grad_seq * grad_loss.to(grad_seq.dtype)
    if grad_seq_logps is not None:
        extra = grad_seq_logps.to(seq_scale.dtype) * seq_scale
        g = extra if g is None else g + extra
    grad_logits = None
    if g is not None and ctx.needs_input_grad[0]:
        grad_logits = _logits_grad_of(t, ctx.config, lse, g)
    return _grads_for("pref_loss", {"logits": grad_logits})


torch.library.register_autograd("geopref::pref_loss", _pref_loss_backward,
                                setup_context=_pref_loss_setup)


# ---- sequence_logps: d seq_logps_s / d L_s is seq_scale: 1, or 1/n_s when
# the options average (average_logps, or a loss that forces it).

def _sequence_logps_setup(op):
    """setup_context of sequence_logps and linear_sequence_logps (outputs
    seq_logps, lse, counts, seq_scale): op's inputs by name, then lse and
    seq_scale; only seq_logps is differentiable."""
    def setup(ctx, inputs, output):
        _, lse, counts, seq_scale = output
        _save_named(ctx, op, inputs, lse, seq_scale)
        ctx.mark_non_differentiable(lse, counts, seq_scale)
    return setup


def _sequence_logps_backward(ctx, grad_seq_logps, *_):
    t, (lse, seq_scale) = _saved_named(ctx)
    if grad_seq_logps is None or not ctx.needs_input_grad[0]:
        return _grads_for("sequence_logps", {})
    g = grad_seq_logps.to(lse.dtype) * seq_scale.to(lse.dtype)
    return _grads_for("sequence_logps", {"logits": _logits_grad_of(t, ctx.config, lse, g)})


torch.library.register_autograd("geopref::sequence_logps", _sequence_logps_backward,
                                setup_context=_sequence_logps_setup("sequence_logps"))


# ---- token_logps: the per-token primitive. d logps_t / d logits is
# token_logps_grad's, and so is d entropy_t / d logits (its grad_entropy and
# entropy arguments): an upstream on the entropy flows into the same fused
# backward. lse and TRL 1.x's other statistics (log_sum_sq_probs,
# mean_logits, is_top1) are outputs to log, not differentiable.

# The per-token statistics besides the log-probs, in the operators' output
# order (after logps and lse); TRL 1.16.0's names (trl.kernels.chunked_logprob).
TOKEN_STATS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _check_rows(logits, labels, op):
    if logits.dim() != 2:
        raise ValueError(f"geopref.{op}: logits must be 2-D [N, V], got {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"geopref.{op}: labels must be [N] = [{logits.shape[0]}], "
                         f"got {tuple(labels.shape)}")


def _token_stats_fake(like, n, entropy, log_sum_sq_probs, mean_logits, is_top1):
    dt = _float_out(like)
    return tuple(like.new_empty((n if want else 0,), dtype=torch.bool if name == "is_top1" else dt)
                 for name, want in zip(TOKEN_STATS,
                                       (entropy, log_sum_sq_probs, mean_logits, is_top1)))


@torch.library.register_fake("geopref::token_logps")
def _token_logps_fake(logits, labels, ignore_index, entropy, check, logit_transform,
                      log_sum_sq_probs=False, mean_logits=False, is_top1=False):
    _check_rows(logits, labels, "token_logps")
    n, dt = logits.shape[0], _float_out(logits)
    return (logits.new_empty((n,), dtype=dt), logits.new_empty((n,), dtype=dt),
            *_token_stats_fake(logits, n, entropy, log_sum_sq_probs, mean_logits, is_top1))


@torch.library.register_fake("geopref::token_logps_grad")
def _token_logps_grad_fake(logits, labels, lse, grad, ignore_index, check, logit_transform,
                           grad_entropy=None, entropy=None):
    _check_rows(logits, labels, "token_logps_grad")
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _token_stats_setup(ctx, op, inputs, output, *saved):
    """Shared by token_logps and linear_token_logps: saves op's inputs by name,
    lse and the entropy (when computed: the entropy's backward reads it), and
    marks every output but the log-probs and a computed entropy as not
    differentiable. Upstreams of unused outputs stay None (no zero-filled
    entropy gradient, hence no entropy term in the backward)."""
    _, lse, entropy, lssp, mean, top1 = output
    ctx.has_entropy = bool(_named(op, inputs)["entropy"])
    _save_named(ctx, op, inputs, lse, entropy)
    ctx.mark_non_differentiable(lse, lssp, mean, top1,
                                *(() if ctx.has_entropy else (entropy,)))
    ctx.set_materialize_grads(False)


def _upstreams(ctx, grad_logps, grad_entropy, lse):
    """(g, e) for the backward: g [N] (zeros when only the entropy has an
    upstream), e [N] or None."""
    e = grad_entropy.to(lse.dtype) if ctx.has_entropy and grad_entropy is not None else None
    g = grad_logps.to(lse.dtype) if grad_logps is not None else torch.zeros_like(lse)
    return g, e


def _token_logps_setup(ctx, inputs, output):
    _token_stats_setup(ctx, "token_logps", inputs, output)


def _token_logps_backward(ctx, grad_logps, _grad_lse=None, grad_entropy=None, *_):
    if not ctx.needs_input_grad[0] or (grad_logps is None and
                                       (grad_entropy is None or not ctx.has_entropy)):
        return _grads_for("token_logps", {})
    t, (lse, entropy) = _saved_named(ctx)
    c = ctx.config
    g, e = _upstreams(ctx, grad_logps, grad_entropy, lse)
    grad_logits = ops.token_logps_grad(t["logits"], t["labels"], lse, g, c["ignore_index"],
                                       c["check"], c["logit_transform"], grad_entropy=e,
                                       entropy=entropy if e is not None else None)
    return _grads_for("token_logps", {"logits": grad_logits})


torch.library.register_autograd("geopref::token_logps", _token_logps_backward,
                                setup_context=_token_logps_setup)


# ---- logits_grad and pref_loss_grad_seq are backward passes themselves: a
# gradient of a gradient is not implemented, and says so rather than being
# silently zero.

def _no_double_backward(ctx, *grads):
    raise NotImplementedError("geopref: the backward of a geopref operator is not "
                              "differentiable (no double backward / create_graph=True)")


torch.library.register_autograd("geopref::logits_grad", _no_double_backward)
torch.library.register_autograd("geopref::pref_loss_grad_seq", _no_double_backward)
torch.library.register_autograd("geopref::token_logps_grad", _no_double_backward)


# ---- The fused-linear operators (csrc/ops_linear.cpp): the loss from
# hidden states [N, H], the projection weight [V, H] and an optional bias [V]
# instead of the logits. grad_mask = (hidden, weight, bias) says which
# gradients the operators compute; those not asked for are [0].

def _check_linear(hidden, weight, bias, labels, offsets, op):
    if hidden.dim() != 2:
        raise ValueError(f"geopref.{op}: hidden must be 2-D [N, H], got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"geopref.{op}: weight must be [V, H] with H = {hidden.shape[1]}, "
                         f"got {tuple(weight.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"geopref.{op}: bias must be [V] = [{weight.shape[0]}], "
                         f"got {tuple(bias.shape)}")
    if labels.dim() != 1 or labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"geopref.{op}: labels must be [N] = [{hidden.shape[0]}], "
                         f"got {tuple(labels.shape)}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(f"geopref.{op}: offsets must be [S + 1], got {tuple(offsets.shape)}")


def _check_host_layout(host_offsets, host_pairs, offsets, pairs, op):
    """The host copies' shapes, dtype and device, as csrc/linear.h checks them
    (their values only the real kernels can compare)."""
    for h, like, name in ((host_offsets, offsets, "host_offsets"),
                          (host_pairs, pairs, "host_pairs")):
        if h is None:
            continue
        if like is None:
            raise ValueError(f"geopref.{op}: host_pairs is given without pairs "
                             "(TRL's layout needs none)")
        if h.device.type != "cpu":
            raise ValueError(f"geopref.{op}: {name} must be a CPU tensor (a host copy), "
                             f"got one on {h.device}")
        if h.dtype != torch.int64:
            raise TypeError(f"geopref.{op}: {name} must be int64, got {h.dtype}")
        if h.shape != like.shape:
            raise ValueError(f"geopref.{op}: {name} must have the shape of "
                             f"{name[5:]} {tuple(like.shape)}, got {tuple(h.shape)}")


def _linear_grads_fake(hidden, weight, bias, grad_mask):
    n, h, v = hidden.shape[0], hidden.shape[1], weight.shape[0]
    has_bias = bias is not None
    return (hidden.new_empty((n, h) if grad_mask[0] else (0,)),
            weight.new_empty((v, h) if grad_mask[1] else (0,)),
            (bias if has_bias else hidden).new_empty((v,) if grad_mask[2] and has_bias else (0,)))


@torch.library.register_fake("geopref::linear_pref_loss")
def _linear_pref_loss_fake(hidden, weight, bias, labels, offsets, pairs, soft_labels, ref_logps,
                           weights, token_weights, options, chunk_bytes, grad_mask, check,
                           logit_transform, host_offsets=None, host_pairs=None):
    _check_linear(hidden, weight, bias, labels, offsets, "linear_pref_loss")
    _check_host_layout(host_offsets, host_pairs, offsets, pairs, "linear_pref_loss")
    s = offsets.shape[0] - 1
    p = pairs.shape[0] if pairs is not None else s // 2
    dt = _float_out(hidden)
    none = option_value(options, "reduce") == "none"
    value = hidden.new_empty((p,) if none else (), dtype=dt)
    return (value, hidden.new_empty((s,), dtype=dt), hidden.new_empty((7,), dtype=torch.float64),
            *_linear_grads_fake(hidden, weight, bias, grad_mask),
            hidden.new_empty((8,), dtype=torch.float64))


@torch.library.register_fake("geopref::linear_pref_loss_grad")
def _linear_pref_loss_grad_fake(grad_output, hidden, weight, bias, labels, offsets, pairs,
                                soft_labels, ref_logps, weights, token_weights, options,
                                chunk_bytes, grad_mask, check, logit_transform,
                                host_offsets=None, host_pairs=None):
    _check_linear(hidden, weight, bias, labels, offsets, "linear_pref_loss_grad")
    _check_host_layout(host_offsets, host_pairs, offsets, pairs, "linear_pref_loss_grad")
    return _linear_grads_fake(hidden, weight, bias, grad_mask)


@torch.library.register_fake("geopref::linear_pref_loss_accumulate")
def _linear_pref_loss_accumulate_fake(grad_output, hidden, weight, bias, labels, offsets, pairs,
                                      soft_labels, ref_logps, weights, token_weights, options,
                                      chunk_bytes, grad_mask, check, logit_transform,
                                      host_offsets=None, host_pairs=None, grad_weight_acc=None,
                                      grad_bias_acc=None):
    _check_linear(hidden, weight, bias, labels, offsets, "linear_pref_loss_accumulate")
    return _linear_grads_fake(hidden, weight, bias, grad_mask)[0]


@torch.library.register_fake("geopref::linear_sequence_logps")
def _linear_sequence_logps_fake(hidden, weight, bias, labels, offsets, token_weights, options,
                                chunk_bytes, check, logit_transform):
    _check_linear(hidden, weight, bias, labels, offsets, "linear_sequence_logps")
    n, s = hidden.shape[0], offsets.shape[0] - 1
    dt = _float_out(hidden)
    return (hidden.new_empty((s,), dtype=dt), hidden.new_empty((n,), dtype=dt),
            hidden.new_empty((s,), dtype=torch.int64), hidden.new_empty((s,), dtype=dt))


@torch.library.register_fake("geopref::linear_sequence_logps_grad")
def _linear_sequence_logps_grad_fake(hidden, weight, bias, labels, offsets, token_weights, lse,
                                     grad_seq, ignore_index, chunk_bytes, grad_mask, check,
                                     logit_transform):
    _check_linear(hidden, weight, bias, labels, offsets, "linear_sequence_logps_grad")
    return _linear_grads_fake(hidden, weight, bias, grad_mask)


def _check_linear_rows(hidden, weight, bias, labels, op):
    _check_linear(hidden, weight, bias, labels, labels.new_zeros((1,)), op)


@torch.library.register_fake("geopref::linear_token_logps")
def _linear_token_logps_fake(hidden, weight, bias, labels, ignore_index, entropy, chunk_bytes,
                             check, logit_transform, log_sum_sq_probs=False, mean_logits=False,
                             is_top1=False):
    _check_linear_rows(hidden, weight, bias, labels, "linear_token_logps")
    n, dt = hidden.shape[0], _float_out(hidden)
    return (hidden.new_empty((n,), dtype=dt), hidden.new_empty((n,), dtype=dt),
            *_token_stats_fake(hidden, n, entropy, log_sum_sq_probs, mean_logits, is_top1))


@torch.library.register_fake("geopref::linear_token_logps_grad")
def _linear_token_logps_grad_fake(hidden, weight, bias, labels, lse, grad, ignore_index,
                                  chunk_bytes, grad_mask, check, logit_transform,
                                  grad_entropy=None, entropy=None):
    _check_linear_rows(hidden, weight, bias, labels, "linear_token_logps_grad")
    return _linear_grads_fake(hidden, weight, bias, grad_mask)


@torch.library.register_fake("geopref::linear_token_logps_accumulate")
def _linear_token_logps_accumulate_fake(hidden, weight, bias, labels, lse, grad, ignore_index,
                                        chunk_bytes, grad_mask, check, logit_transform,
                                        grad_entropy=None, entropy=None, grad_weight_acc=None,
                                        grad_bias_acc=None):
    _check_linear_rows(hidden, weight, bias, labels, "linear_token_logps_accumulate")
    return _linear_grads_fake(hidden, weight, bias, grad_mask)[0]


# ---- linear_pref_loss. With a reduced loss the forward computed the
# gradients at an upstream gradient of 1 (one fused_linear_step, no logits
# kept), so the backward only scales them by the upstream scalar, in place
# when nothing else can see them (the saved gradient becomes .grad without a
# copy; callers of the raw operator: its grad outputs are that storage), by a
# copy otherwise (retain_graph=True, tracing). Reduction "none" has a
# per-pair upstream, which does not factor out: its backward runs the step
# again with it (linear_pref_loss_grad). The per-sequence log-probs and metrics are not
# differentiable here (use linear_sequence_logps for a gradient through
# log-probs), so that an unused output never costs a pass over the logits.

_LINEAR_GRADS = ("hidden", "weight", "bias")  # the differentiable inputs, as grad_mask orders them


def _graph_kept():
    """Whether the running backward keeps the graph (retain_graph=True, as
    gradcheck and jacobians do): then the saved gradients must stay as they
    are. Asked of autograd's engine; if this torch cannot tell, assume so
    (a copy instead of an in-place multiply: correct, more memory)."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except (AttributeError, RuntimeError):
        return True


def _linear_pref_loss_setup(ctx, inputs, output):
    a = _named("linear_pref_loss", inputs)
    _, seq_logps, metrics, grad_hidden, grad_weight, grad_bias, sums = output
    ctx.mark_non_differentiable(seq_logps, metrics, grad_hidden, grad_weight, grad_bias, sums)
    ctx.grad_mask = tuple(a["grad_mask"])
    ctx.scaled = option_value(a["options"], "reduce") != "none"  # else the forward's gradients
    if ctx.scaled:                                               # (if any) are unused
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    else:
        _save_named(ctx, "linear_pref_loss", inputs)


def _linear_pref_loss_backward(ctx, grad_loss, *_):
    need = ctx.needs_input_grad[:3]
    if grad_loss is None or not any(need):
        return _grads_for("linear_pref_loss", {})
    if ctx.scaled:
        missing = [name for name, n, m in zip(_LINEAR_GRADS, need, ctx.grad_mask)
                   if n and not m]
        if missing:
            raise RuntimeError(f"geopref.linear_pref_loss: the forward ran with grad_mask = "
                               f"{list(ctx.grad_mask)}, without the gradient of {missing}")
        if torch.is_grad_enabled():  # create_graph=True: these gradients are constants here
            _no_double_backward(ctx)
        grads = ctx.saved_tensors
        up = grad_loss.reshape(())
        # In place only on plain eager tensors whose graph is freed after
        # this backward: under tracing (torch.compile, opcheck) the saved
        # gradients may be graph outputs, which a traced backward must not
        # mutate (the out-of-place multiply is functional, and inductor may
        # still do it in place); with retain_graph another backward reads them.
        if all(type(g) is torch.Tensor for g in grads) and not _graph_kept():
            out = tuple(g.mul_(up) if n else None for g, n in zip(grads, need))
        else:
            out = tuple(g * up if n else None for g, n in zip(grads, need))
    else:
        t, _ = _saved_named(ctx)
        config = dict(ctx.config, grad_mask=[bool(n) for n in need])
        grads = ops.linear_pref_loss_grad(grad_loss, **t, **config)
        out = tuple(g if n else None for g, n in zip(grads, need))
    return _grads_for("linear_pref_loss", dict(zip(_LINEAR_GRADS, out)))


torch.library.register_autograd("geopref::linear_pref_loss", _linear_pref_loss_backward,
                                setup_context=_linear_pref_loss_setup)


# ---- linear_sequence_logps: d seq_logps_s / d L_s is seq_scale (1, or 1/n_s
# when the options average), and the token weights scale each row's g_t.

def _linear_sequence_logps_backward(ctx, grad_seq_logps, *_):
    need = ctx.needs_input_grad[:3]
    if grad_seq_logps is None or not any(need):
        return _grads_for("linear_sequence_logps", {})
    t, (lse, seq_scale) = _saved_named(ctx)
    c = ctx.config
    g = grad_seq_logps.to(lse.dtype) * seq_scale.to(lse.dtype)
    grads = ops.linear_sequence_logps_grad(
        t["hidden"], t["weight"], t["bias"], t["labels"], t["offsets"], t["token_weights"], lse,
        g, int(option_value(c["options"], "ignore_index")), c["chunk_bytes"],
        [bool(n) for n in need], c["check"], c["logit_transform"])
    return _grads_for("linear_sequence_logps",
                      {k: x if n else None for k, x, n in zip(_LINEAR_GRADS, grads, need)})


torch.library.register_autograd("geopref::linear_sequence_logps", _linear_sequence_logps_backward,
                                setup_context=_sequence_logps_setup("linear_sequence_logps"))


# ---- linear_token_logps: the per-token primitive from hidden states; its
# backward is linear_token_logps_grad (upstreams on the log-probs and the
# entropy, as token_logps'). For a 16-bit weight it is
# linear_token_logps_accumulate into a float32 buffer instead (the library's
# grad_weight_float32): the weight gradient sums every chunk of rows in
# float32 and is rounded once, as TRL 1.16.0's fused head does.

def _linear_token_logps_setup(ctx, inputs, output):
    _token_stats_setup(ctx, "linear_token_logps", inputs, output)


def _linear_token_logps_backward(ctx, grad_logps, _grad_lse=None, grad_entropy=None, *_):
    need = ctx.needs_input_grad[:3]
    if not any(need) or (grad_logps is None and (grad_entropy is None or not ctx.has_entropy)):
        return _grads_for("linear_token_logps", {})
    t, (lse, entropy) = _saved_named(ctx)
    c = ctx.config
    g, e = _upstreams(ctx, grad_logps, grad_entropy, lse)
    args = dict(hidden=t["hidden"], weight=t["weight"], bias=t["bias"], labels=t["labels"],
                lse=lse, grad=g, ignore_index=c["ignore_index"], chunk_bytes=c["chunk_bytes"],
                check=c["check"], logit_transform=c["logit_transform"], grad_entropy=e,
                entropy=entropy if e is not None else None)
    weight, bias = t["weight"], t["bias"]
    if need[1] and weight.dtype in (torch.float16, torch.bfloat16):
        acc_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        acc_b = (torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
                 if need[2] else None)
        gh = ops.linear_token_logps_accumulate(**args, grad_mask=[bool(need[0]), False, False],
                                               grad_weight_acc=acc_w, grad_bias_acc=acc_b)
        grads = (gh, acc_w.to(weight.dtype), None if acc_b is None else acc_b.to(bias.dtype))
    else:
        grads = ops.linear_token_logps_grad(**args, grad_mask=[bool(n) for n in need])
    return _grads_for("linear_token_logps",
                      {k: x if n else None for k, x, n in zip(_LINEAR_GRADS, grads, need)})


torch.library.register_autograd("geopref::linear_token_logps", _linear_token_logps_backward,
                                setup_context=_linear_token_logps_setup)
torch.library.register_autograd("geopref::linear_pref_loss_grad", _no_double_backward)
torch.library.register_autograd("geopref::linear_sequence_logps_grad", _no_double_backward)
torch.library.register_autograd("geopref::linear_token_logps_grad", _no_double_backward)


# ---- The vocab-parallel operators (csrc/ops_vocab.cpp): one rank's part of
# a step over logits (or a projection) split by vocabulary columns. The
# records are an opaque tensor to all-gather: int32 [N, 4] on CUDA (the
# library's 16-byte record), float64 [N, 4] on CPU (the reference's).
# Only this rank's slice gets a gradient (grad_logits, or grad_hidden's
# partial, grad_weight and grad_bias): the records are not differentiable,
# and the rank's own gradient is already the whole derivative with respect
# to its slice (lse's dependence on it included). vocab_linear_accumulate
# (vocab_linear_step's backward into the caller's gradient buffers, which
# geopref_torch.distributed runs) has a fake kernel only, as
# linear_pref_loss_accumulate.

VOCAB_SLICE_FIELDS = tuple(ops.vocab_slice_fields())


def _records_fake(like, n):
    dt = torch.float64 if like.device.type == "cpu" else torch.int32
    return like.new_empty((n, 4), dtype=dt)


@torch.library.register_fake("geopref::vocab_parallel_stats")
def _vocab_parallel_stats_fake(logits, labels, offsets, vocab_slice, options, check,
                               logit_transform):
    _check_shapes(logits, labels, offsets, "vocab_parallel_stats")
    return _records_fake(logits, logits.shape[0])


def _vocab_value_fake(like, offsets, pairs, options):
    s = offsets.shape[0] - 1
    p = pairs.shape[0] if pairs is not None else s // 2
    dt = _float_out(like)
    none = option_value(options, "reduce") == "none"
    return (like.new_empty((p,) if none else (), dtype=dt), like.new_empty((s,), dtype=dt),
            like.new_empty((7,), dtype=torch.float64), like.new_empty((8,), dtype=torch.float64))


@torch.library.register_fake("geopref::vocab_parallel_train_step")
def _vocab_parallel_train_step_fake(logits, labels, offsets, records, pairs, soft_labels,
                                    ref_logps, weights, token_weights, vocab_slice, options, grad,
                                    check, logit_transform, grad_output=None):
    _check_shapes(logits, labels, offsets, "vocab_parallel_train_step")
    g = (torch.empty_like(logits, memory_format=torch.contiguous_format) if grad
         else logits.new_empty((0,)))
    return (*_vocab_value_fake(logits, offsets, pairs, options), g)


@torch.library.register_fake("geopref::vocab_parallel_logps")
def _vocab_parallel_logps_fake(logits, labels, offsets, records, token_weights, vocab_slice,
                               options, check, logit_transform):
    _check_shapes(logits, labels, offsets, "vocab_parallel_logps")
    s = offsets.shape[0] - 1
    return (logits.new_empty((s,), dtype=_float_out(logits)),
            logits.new_empty((s,), dtype=torch.int64))


@torch.library.register_fake("geopref::vocab_linear_stats")
def _vocab_linear_stats_fake(hidden, weight, bias, labels, offsets, vocab_slice, options,
                             chunk_bytes, check, logit_transform):
    _check_linear(hidden, weight, bias, labels, offsets, "vocab_linear_stats")
    return _records_fake(hidden, hidden.shape[0])


@torch.library.register_fake("geopref::vocab_linear_step")
def _vocab_linear_step_fake(hidden, weight, bias, labels, offsets, records, pairs, soft_labels,
                            ref_logps, weights, token_weights, vocab_slice, options, chunk_bytes,
                            grad_mask, check, logit_transform, grad_output=None):
    _check_linear(hidden, weight, bias, labels, offsets, "vocab_linear_step")
    return (*_vocab_value_fake(hidden, offsets, pairs, options),
            *_linear_grads_fake(hidden, weight, bias, grad_mask))


@torch.library.register_fake("geopref::vocab_linear_accumulate")
def _vocab_linear_accumulate_fake(grad_output, hidden, weight, bias, labels, offsets, records,
                                  pairs, soft_labels, ref_logps, weights, token_weights,
                                  vocab_slice, options, chunk_bytes, grad_mask, check,
                                  logit_transform, grad_weight_acc=None, grad_bias_acc=None):
    _check_linear(hidden, weight, bias, labels, offsets, "vocab_linear_accumulate")
    return _linear_grads_fake(hidden, weight, bias, grad_mask)[0]


def _scale_saved(ctx, grads, grad_loss, need):
    """The forward's gradients (at upstream 1) times a scalar upstream
    gradient, as linear_pref_loss's backward: in place when nothing else sees them."""
    if torch.is_grad_enabled():
        _no_double_backward(ctx)
    up = grad_loss.reshape(())
    if all(type(g) is torch.Tensor for g in grads) and not _graph_kept():
        return tuple(g.mul_(up) if n else None for g, n in zip(grads, need))
    return tuple(g * up if n else None for g, n in zip(grads, need))


def _vocab_step_setup(ctx, inputs, output):
    a = _named("vocab_parallel_train_step", inputs)
    _, seq_logps, metrics, sums, grad_logits = output
    ctx.mark_non_differentiable(seq_logps, metrics, sums, grad_logits)
    ctx.scaled = option_value(a["options"], "reduce") != "none"
    ctx.had_grad = bool(a["grad"])
    if ctx.scaled:
        ctx.save_for_backward(grad_logits)
    else:
        _save_named(ctx, "vocab_parallel_train_step", inputs)


def _vocab_step_backward(ctx, grad_loss, *_):
    op = "vocab_parallel_train_step"
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return _grads_for(op, {})
    if ctx.scaled:
        if not ctx.had_grad:
            raise RuntimeError(f"geopref.{op}: the forward ran with grad=False")
        (g,) = _scale_saved(ctx, ctx.saved_tensors, grad_loss, (True,))
    else:
        t, _ = _saved_named(ctx)
        t.pop("grad_output")
        config = dict(ctx.config, grad=True)
        g = ops.vocab_parallel_train_step(**t, **config, grad_output=grad_loss)[4]
    return _grads_for(op, {"logits": g})


torch.library.register_autograd("geopref::vocab_parallel_train_step", _vocab_step_backward,
                                setup_context=_vocab_step_setup)


def _vocab_linear_setup(ctx, inputs, output):
    a = _named("vocab_linear_step", inputs)
    _, seq_logps, metrics, sums, gh, gw, gb = output
    ctx.mark_non_differentiable(seq_logps, metrics, sums, gh, gw, gb)
    ctx.scaled = option_value(a["options"], "reduce") != "none"
    ctx.grad_mask = tuple(a["grad_mask"])
    if ctx.scaled:
        ctx.save_for_backward(gh, gw, gb)
    else:
        _save_named(ctx, "vocab_linear_step", inputs)


def _vocab_linear_backward(ctx, grad_loss, *_):
    op = "vocab_linear_step"
    need = ctx.needs_input_grad[:3]
    if grad_loss is None or not any(need):
        return _grads_for(op, {})
    if ctx.scaled:
        missing = [name for name, n, m in zip(_LINEAR_GRADS, need, ctx.grad_mask) if n and not m]
        if missing:
            raise RuntimeError(f"geopref.{op}: the forward ran with grad_mask = "
                               f"{list(ctx.grad_mask)}, without the gradient of {missing}")
        out = _scale_saved(ctx, ctx.saved_tensors, grad_loss, need)
    else:
        t, _ = _saved_named(ctx)
        t.pop("grad_output")
        config = dict(ctx.config, grad_mask=[bool(n) for n in need])
        grads = ops.vocab_linear_step(**t, **config, grad_output=grad_loss)[4:]
        out = tuple(g if n else None for g, n in zip(grads, need))
    return _grads_for(op, dict(zip(_LINEAR_GRADS, out)))


torch.library.register_autograd("geopref::vocab_linear_step", _vocab_linear_backward,
                                setup_context=_vocab_linear_setup)


# The records and the forward-only log-probs are not differentiable: their
# operators say so (no autograd warning; a backward through them gives nothing).
def _register_not_differentiable(op):
    def setup(ctx, inputs, output):
        ctx.mark_non_differentiable(*(output if isinstance(output, tuple) else (output,)))

    def backward(ctx, *grads):
        return _grads_for(op, {})

    torch.library.register_autograd(f"geopref::{op}", backward, setup_context=setup)


for _op in ("vocab_parallel_stats", "vocab_parallel_logps", "vocab_linear_stats"):
    _register_not_differentiable(_op)
