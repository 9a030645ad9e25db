"""geopref for PyTorch: soft-label DPO-family losses from logits as custom
operators (torch.ops.geopref.*) with CPU kernels (the library's CPU reference),
CUDA kernels (the fused path, when built with CUDA), autograd and fake kernels,
so torch.compile(fullgraph=True) traces them without graph breaks.

High-level API in TRL's terms: dpo_loss, sequence_logps, the per-token
primitive token_logps for losses kept in one's own code, and the fused-linear
forms fused_linear_preference_loss / fused_linear_logps, from the last hidden
states and the lm_head instead of the logits (see api.py). Every one of them
takes the logit transform as keywords (logit_scale, softcap, temperature:
LOGIT_TRANSFORM_FIELDS, read from the library's field list).

geopref_torch.distributed (imported on its own) runs the vocab-parallel
head over a torch.distributed process group or DeviceMesh, with DTensor
inputs, and the data-parallel normalisers (docs/distributed.md §4).
"""
import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import _ops  # noqa: F401  (registers the operators, fake kernels and autograd)
from ._ops import LOGIT_TRANSFORM_FIELDS, OPTIONS_FIELDS, pack_options
from .api import (DEFAULT_CHUNK_BYTES, METRIC_NAMES, METRIC_SUM_NAMES, OPTIONS_KEYWORDS,
                  TRL_LOSS_TYPES, DPOOutput, dpo_loss, fused_linear_logps, fused_linear_one_pass,
                  fused_linear_preference_loss, linear_token_logps, loss_types, metrics_from_sums,
                  metrics_to_floats, sequence_logps, token_logps, TOKEN_OUTPUTS, TokenStats,
                  VocabSlice, even_slice,
                  vocab_linear_loss, vocab_linear_stats, vocab_parallel_logps,
                  vocab_parallel_loss, vocab_parallel_stats)

__all__ = ["DEFAULT_CHUNK_BYTES", "LOGIT_TRANSFORM_FIELDS", "METRIC_NAMES", "METRIC_SUM_NAMES",
           "OPTIONS_FIELDS", "OPTIONS_KEYWORDS", "TRL_LOSS_TYPES", "pack_options",
           "DPOOutput", "dpo_loss",
           "fused_linear_logps", "fused_linear_one_pass",
           "fused_linear_preference_loss", "linear_token_logps", "loss_types",
           "metrics_from_sums", "metrics_to_floats", "sequence_logps", "token_logps",
           "TOKEN_OUTPUTS", "TokenStats",
           "VocabSlice", "even_slice", "vocab_parallel_stats", "vocab_parallel_loss",
           "vocab_parallel_logps", "vocab_linear_stats", "vocab_linear_loss",
           "has_cuda_kernels"]


def has_cuda_kernels() -> bool:
    """True when this build has the CUDA kernels (built with CUDA)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("geopref::pref_loss", "CUDA")
