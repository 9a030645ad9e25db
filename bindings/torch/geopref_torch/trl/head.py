"""geopref's fused LM head for TRL 1.16.0's trainers.

add_fused_lm_head(model, temperature, cast_lm_head_to_fp32, outputs) has the
signature and the behaviour of trl.trainer.utils.add_fused_lm_head in TRL
1.16.0: it patches model.forward so that model(..., labels=labels,
fused_lm_head=True) runs the backbone and returns per-token statistics of the
next-token distribution (a FusedCausalLMOutput) instead of logits, without
ever holding the [batch, seq_len, vocab] logits. The statistics come from
geopref's linear_token_logps (the library's chunked kernels on CUDA, float32
tiles through PyTorch's GEMM on CPU) rather than TRL's ChunkedLogProbFunction. A vocab-parallel
lm_head (its weight a DTensor sharded on the vocabulary over a 1-D mesh, as
ColwiseParallel makes it) is not gathered, unlike TRL's head (full_tensor()):
the statistics come from geopref_torch.distributed.vocab_linear_token_logps
on each rank's rows (docs/distributed.md §4).

install_geopref_head() / use_geopref_head() make the stock trainers build
this head instead of TRL's: TRL's DPOTrainer, GRPOTrainer, SFTTrainer,
RLOOTrainer and KTOTrainer each call add_fused_lm_head, by the name they
imported from trl.trainer.utils, once in their __init__; those names are
what is replaced.
"""
import contextlib
import dataclasses
import functools
import importlib
import sys
import types
from typing import Optional, Sequence, Tuple

import torch

from ..api import TOKEN_OUTPUTS, _token_outputs, linear_token_logps

__all__ = ["add_fused_lm_head", "install_geopref_head", "uninstall_geopref_head",
           "use_geopref_head", "FusedCausalLMOutput", "head_logit_transform"]

IGNORE_INDEX = -100  # TRL's: the label of a position that is not scored


def _fused_output_class():
    """TRL's FusedCausalLMOutput when TRL is importable (the trainers read its
    fields; isinstance checks then hold), else a ModelOutput with the same fields."""
    try:
        from trl.trainer.utils import FusedCausalLMOutput as trl_output
        return trl_output
    except Exception:  # noqa: BLE001  (TRL absent or failing to import: our own)
        pass
    from transformers.utils import ModelOutput

    @dataclasses.dataclass
    class FusedCausalLMOutput(ModelOutput):
        """The fused head's output (TRL 1.16.0's fields): the loss and the
        per-token fields, zero where the label is -100, None when not asked for."""
        loss: Optional[torch.Tensor] = None
        log_probs: Optional[torch.Tensor] = None
        entropy: Optional[torch.Tensor] = None
        log_sum_sq_probs: Optional[torch.Tensor] = None
        mean_logits: Optional[torch.Tensor] = None
        is_top1: Optional[torch.Tensor] = None
        label_mask: Optional[torch.Tensor] = None
        aux_loss: Optional[torch.Tensor] = None

    return FusedCausalLMOutput


FusedCausalLMOutput = _fused_output_class()


def head_logit_transform(text_config, temperature: float = 1.0) -> dict:
    """geopref's logit transform keywords (logit_scale, softcap, temperature)
    for a model's text config, read from the attributes TRL 1.16.0's head
    reads: final_logit_softcapping (Gemma 2/3; None: no cap); the scale from
    logit_scale (Cohere), else output_multiplier, else lm_head_multiplier
    (Falcon-H1), else logits_scaling (Granite, MiniCPM3 divide by it,
    HyperCLOVA X multiplies); a missing or None scale is 1."""
    cap = getattr(text_config, "final_logit_softcapping", None)
    scale = None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        scale = getattr(text_config, name, None)
        if scale is not None:
            break
    if scale is None:
        divisor = getattr(text_config, "logits_scaling", None)
        if divisor is not None:
            multiplies = getattr(text_config, "model_type", None) == "hyperclovax"
            scale = divisor if multiplies else 1.0 / divisor
    return dict(logit_scale=1.0 if scale is None else float(scale),
                softcap=0.0 if cap is None else float(cap), temperature=float(temperature))




def _output_embeddings(model):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"geopref_torch.trl: {type(model).__name__} has no output embedding "
                         f"(get_output_embeddings() gives {head!r}): the fused LM head needs a "
                         f"causal LM with an lm_head (a Linear with a weight [V, H])")
    return head


def _backbone_attr(model, text_config):
    # Before transformers 5, a vision-language model's language backbone is
    # `model` rather than base_model (as TRL 1.16.0 reads it).
    import transformers
    from packaging.version import Version
    if text_config is not model.config and Version(transformers.__version__) < Version("5.0.0"):
        return "model"
    return "base_model"


def _full(t):
    """An FSDP2 DTensor parameter gathered whole; anything else as it is."""
    full = getattr(t, "full_tensor", None)
    return full() if t is not None and callable(full) else t


def _vocab_sharded(lm_head, weight, bias):
    """(weight, bias) for geopref_torch.distributed when the lm_head is
    vocab-parallel (tensor parallelism): its weight a DTensor with the one
    placement Shard(0) on a 1-D mesh, and its bias None or a DTensor on the
    same mesh (Shard(0), as ColwiseParallel makes it, or Replicate, then
    redistributed to the weight's rows: a local slice, whose backward
    gathers the gradient back to every rank). None otherwise: the caller
    gathers the weight (full_tensor(), as TRL 1.16.0 does), e.g. for a 2-D
    (FSDP2 + TP) mesh, or an lm_head that FSDP2 manages itself (FSDP2 also
    shards dimension 0, but over data-parallel ranks whose hidden states
    differ, so those rows must be gathered)."""
    try:
        from torch.distributed.tensor import DTensor, Replicate, Shard
    except ImportError:  # pragma: no cover - an old PyTorch
        return None
    if not isinstance(weight, DTensor) or weight.device_mesh.ndim != 1:
        return None
    pl = weight.placements
    if len(pl) != 1 or not isinstance(pl[0], Shard) or pl[0].dim % weight.dim() != 0:
        return None
    try:
        from torch.distributed.fsdp import FSDPModule
        if isinstance(lm_head, FSDPModule):
            return None
    except ImportError:  # pragma: no cover
        pass
    if bias is None:
        return weight, None
    if not isinstance(bias, DTensor) or bias.device_mesh != weight.device_mesh:
        raise ValueError("geopref_torch.trl: the lm_head's weight is sharded on the vocabulary "
                         "(a DTensor Shard(0)) but its bias is not a DTensor on the same mesh: "
                         "shard the bias too (ColwiseParallel does) or replicate it as a DTensor")
    if len(bias.placements) == 1 and isinstance(bias.placements[0], Replicate):
        bias = bias.redistribute(bias.device_mesh, [Shard(0)])
    return weight, bias


def _lm_head_gather(weight, bias):
    """TRL's context that gathers a ZeRO-3 partitioned lm_head for a direct
    read of its weight (a no-op otherwise); nothing without TRL."""
    try:
        from trl.trainer.utils import maybe_gather_lm_head_ctx
    except Exception:  # noqa: BLE001
        return contextlib.nullcontext()
    return maybe_gather_lm_head_ctx(weight, bias)


def _router_aux_loss(self, text_config, backbone_outputs, attention_mask):
    """The MoE load-balancing loss, as TRL 1.16.0's head computes it (Mixtral's)."""
    import transformers
    from packaging.version import Version
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    v = Version(transformers.__version__)
    if v < Version("5.0.0") or (text_config.model_type == "gpt_oss" and v < Version("5.6.0")):
        n_experts, per_token = self.num_experts, self.num_experts_per_tok
    else:
        n_experts, per_token = text_config.num_experts, text_config.num_experts_per_tok
    return load_balancing_loss_func(backbone_outputs.router_logits, n_experts, per_token,
                                    attention_mask)


def add_fused_lm_head(model, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False,
                      outputs: Tuple[str, ...] = ("log_probs",)) -> None:
    """Patch `model` (a transformers causal LM) so that
    model(..., labels=labels, fused_lm_head=True) returns a FusedCausalLMOutput
    computed by geopref's linear_token_logps from the backbone's last hidden
    states and the lm_head, never the [B, T, V] logits; the signature and
    semantics of TRL 1.16.0's trl.trainer.utils.add_fused_lm_head:

    * labels [B, T] are shifted (row t scores labels[:, t + 1], the per-token
      fields are [B, T - 1]); shift_labels [B, T] (context / sequence
      parallelism) are scored as given. Only positions whose label is not
      -100 are scored: every per-token field is 0 (False) elsewhere, and
      label_mask says which.
    * temperature divides the logits; the config's final_logit_softcapping
      and logit scale apply as TRL reads them (head_logit_transform).
    * cast_lm_head_to_fp32: the projection in float32 outside autocast (the
      hidden states, weight and bias cast to float32, differentiably).
    * outputs: the per-token fields to compute among log_probs, entropy,
      log_sum_sq_probs, mean_logits, is_top1 (log_probs always; the others
      None unless asked for). log_probs and entropy are differentiable (one
      fused backward takes both upstreams), the other three are not.
    * loss = -sum(log_probs) / num_items_in_batch (the number of scored
      tokens when not given, at least 1), plus router_aux_loss_coef times the
      MoE load-balancing loss when router logits are requested.
    * fused_lm_head=False (the default) calls the original forward:
      generation is unchanged.
    * An lm_head weight that is a DTensor with the one placement Shard(0)
      on a 1-D mesh (tensor parallelism, ColwiseParallel), its bias None or
      a DTensor on that mesh (Shard(0) or Replicate), and the lm_head not an
      FSDP2 unit: the vocab-parallel path, never gathering the weight (the
      hidden states must be the same on every rank of the mesh, as TP
      gives them; their gradient is all-reduced over it). Any other DTensor
      is gathered with full_tensor(), as TRL does; a plain bias beside a
      sharded weight raises ValueError.

    Raises ValueError for a model without an output embedding, for labels
    that are not [B, T] like the input, and for outputs it does not know.
    """
    _token_outputs(outputs, False)  # linear_token_logps's checks of the names
    outputs = tuple(outputs)
    _output_embeddings(model)
    original_forward = model.forward
    text_config = model.config.get_text_config()
    transform = head_logit_transform(text_config, temperature)
    backbone_attr = _backbone_attr(model, text_config)
    want = frozenset(outputs) - {"log_probs"}

    # The class's signature: generate() checks its model kwargs against it.
    @functools.wraps(type(model).forward)
    def _geopref_fused_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None,
                               num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            for name, value in (("labels", labels), ("shift_labels", shift_labels),
                                ("num_items_in_batch", num_items_in_batch)):
                if value is not None:
                    kwargs[name] = value
            return original_forward(*args, **kwargs)
        if labels is None and shift_labels is None:
            raise ValueError("geopref_torch.trl: fused_lm_head=True needs labels (or "
                             "shift_labels): the head scores next-token labels, not logits")
        # Looked up on each call: FSDP and PEFT replace the backbone and the head.
        lm_head = _output_embeddings(self)
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        backbone_outputs = getattr(self, backbone_attr)(*args, **kwargs)
        hidden = backbone_outputs.last_hidden_state
        if hidden.dim() != 3:
            raise ValueError(f"geopref_torch.trl: the backbone's last_hidden_state must be "
                             f"[B, T, H], got {tuple(hidden.shape)}")
        if shift_labels is None:
            if labels.shape != hidden.shape[:2]:
                raise ValueError(f"geopref_torch.trl: labels must be [B, T] = "
                                 f"{list(hidden.shape[:2])} like the input, got "
                                 f"{list(labels.shape)}")
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            if shift_labels.shape != hidden.shape[:2]:
                raise ValueError(f"geopref_torch.trl: shift_labels must be [B, T] = "
                                 f"{list(hidden.shape[:2])} like the input, got "
                                 f"{list(shift_labels.shape)}")
            labels = shift_labels
        weight, bias = lm_head.weight, lm_head.bias
        # A model split over devices may end its backbone elsewhere than its head.
        hidden, labels = hidden.to(weight.device), labels.to(weight.device)
        mask = labels != IGNORE_INDEX
        sharded = _vocab_sharded(lm_head, weight, bias)
        if sharded is not None:
            per_token = _sharded_stats(hidden, labels, mask, *sharded, cast_lm_head_to_fp32,
                                       tuple(sorted(want)), transform)
            return _fused_output(self, per_token, mask, num_items_in_batch, kwargs,
                                 text_config, backbone_outputs)
        weight, bias = _full(weight), _full(bias)
        with _lm_head_gather(weight, bias):
            x, w, b = _head_inputs(hidden, weight, bias, cast_lm_head_to_fp32)
            with torch.autocast(x.device.type, enabled=False):
                # Only the scored rows (as TRL does on CUDA); their labels are all valid.
                stats = linear_token_logps(x[mask], w, labels[mask], bias=b,
                                           outputs=("log_probs",) + tuple(sorted(want)),
                                           **transform)
        return _fused_output(self, _scatter(stats, mask), mask, num_items_in_batch, kwargs,
                             text_config, backbone_outputs)

    model.forward = types.MethodType(_geopref_fused_forward, model)


def _head_inputs(hidden, weight, bias, cast_lm_head_to_fp32):
    """The head's inputs in the dtype TRL 1.16.0 projects in: float32 with
    cast_lm_head_to_fp32, else autocast's dtype under autocast, else the
    hidden states' dtype. The caller then runs with autocast off."""
    dev = hidden.device.type
    if cast_lm_head_to_fp32:
        dt = torch.float32
    elif torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
    else:
        dt = hidden.dtype
    return tuple(None if t is None else t.to(dt) for t in (hidden, weight, bias))


def _scatter(stats, mask):
    """The scored rows' TokenStats as [B, T] fields, 0 (False) elsewhere;
    masked_scatter keeps them connected to the model even when no label is
    scored (a differentiable zero, not an error in backward)."""
    return {name: None if v is None else v.new_zeros(mask.shape).masked_scatter(mask, v)
            for name, v in stats._asdict().items()}


def _fused_output(self, per_token, mask, num_items_in_batch, kwargs, text_config,
                  backbone_outputs):
    denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -per_token["log_probs"].sum() / denom
    aux_loss = None
    if kwargs.get("output_router_logits"):
        aux_loss = _router_aux_loss(self, text_config, backbone_outputs,
                                    kwargs.get("attention_mask"))
        loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
    return FusedCausalLMOutput(loss=loss, label_mask=mask, aux_loss=aux_loss, **per_token)


def _sharded_stats(hidden, labels, mask, weight, bias, cast_lm_head_to_fp32, stats, transform):
    """The head's per-token fields from a vocab-sharded lm_head (weight and
    bias DTensors sharded on dimension 0 over the tensor-parallel mesh),
    without gathering the weight: geopref_torch.distributed's
    vocab_linear_token_logps with the hidden states replicated over the mesh
    (their gradient all-reduced over it), the DTensors' gradients their
    ranks' rows. The statistics other than log_probs and the entropy carry no
    gradient."""
    from torch.distributed.tensor import DTensor
    from .. import distributed as gpd
    if isinstance(hidden, DTensor):  # a replicated DTensor from a TP backbone
        hidden = hidden.full_tensor()
    x, w, b = _head_inputs(hidden, weight, bias, cast_lm_head_to_fp32)
    with torch.autocast(x.device.type, enabled=False):
        out = gpd.vocab_linear_token_logps(x[mask], w, labels[mask], bias=b,
                                           group=w.device_mesh,
                                           outputs=("log_probs",) + stats, **transform)
    return _scatter(out, mask)


# ---- Making TRL's trainers use this head.

# The TRL 1.16.0 modules that call add_fused_lm_head by the name they import
# (DPO, GRPO, SFT, RLOO, KTO; the experimental async GRPO), and the utils
# module that defines it.
TRL_MODULES = ("trl.trainer.utils", "trl.trainer.dpo_trainer", "trl.trainer.grpo_trainer",
               "trl.trainer.sft_trainer", "trl.trainer.rloo_trainer", "trl.trainer.kto_trainer",
               "trl.experimental.async_grpo.async_grpo_trainer")

_patched = {}  # module name -> TRL's function it held


def _trl_original():
    from trl.trainer import utils
    fn = utils.add_fused_lm_head
    return _patched.get("trl.trainer.utils", fn)


def install_geopref_head() -> Tuple[str, ...]:
    """Replace TRL's add_fused_lm_head by geopref's in TRL's modules (those
    in TRL_MODULES that import, and any other trl.* module already imported
    that holds TRL's function), so that a stock trainer built afterwards runs
    its fused LM head on geopref. Returns the modules patched. Idempotent;
    uninstall_geopref_head() undoes it (models already patched keep the
    head they got)."""
    original = _trl_original()
    for name in TRL_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (an optional module this TRL lacks or cannot import)
            continue
    for name, module in list(sys.modules.items()):
        if (name == "trl" or name.startswith("trl.")) and isinstance(module, types.ModuleType):
            if module.__dict__.get("add_fused_lm_head") is original:
                _patched[name] = original
                setattr(module, "add_fused_lm_head", add_fused_lm_head)
    if "trl.trainer.utils" not in _patched:
        raise RuntimeError("geopref_torch.trl: trl.trainer.utils.add_fused_lm_head was not found "
                           "(this integration describes TRL 1.16.0)")
    return tuple(sorted(_patched))


def uninstall_geopref_head() -> None:
    """Put TRL's add_fused_lm_head back where install_geopref_head replaced it."""
    for name, original in list(_patched.items()):
        module = sys.modules.get(name)
        if module is not None and module.__dict__.get("add_fused_lm_head") is add_fused_lm_head:
            setattr(module, "add_fused_lm_head", original)
        del _patched[name]


@contextlib.contextmanager
def use_geopref_head():
    """install_geopref_head() for the duration of a with block: the trainers
    constructed inside it (their __init__ adds the head) use geopref's head,
    for their whole life; TRL's is restored on exit."""
    already = bool(_patched)
    install_geopref_head()
    try:
        yield
    finally:
        if not already:
            uninstall_geopref_head()
