"""geopref as a PyTorch op: builds bindings/torch/geopref_torch.cpp and the
C ABI (kernels/c_api.cu, via geopref_c_api.cu) with torch's own extension
tooling, and wraps the op.

    import geopref_torch
    geopref_torch.load()                         # compiles once, then cached
    loss, seq_logps, metrics = geopref_torch.pref_loss(
        logits, labels, offsets, soft_labels=p, ref_logps=r, loss="gdpo", beta=0.1)
    loss.backward()                              # gradient into logits.grad
    geopref_torch.metrics_dict(metrics)          # {"rewards/chosen": ..., ...}

logits: [N, V] float32/float16/bfloat16 CUDA tensor (rows contiguous); labels
[N] int32/int64 (already shifted: row t scores labels[t]); offsets [S + 1]
int32/int64; optional pairs [P, 2], soft_labels [P], ref_logps [S], weights [P].
Everything runs on the current CUDA stream.
"""
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# The order of geopref_metrics / geopref::metrics, with TRL's names.
METRIC_NAMES = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "calibration_error",
]

_loaded = False


def load(verbose=False):
    """Registers torch.ops.geopref.*: loads the library named by the
    GEOPREF_TORCH_LIB environment variable (built by setup.py), or else
    compiles the extension on first use with torch's JIT tooling (needs ninja;
    cached in TORCH_EXTENSIONS_DIR)."""
    global _loaded
    if _loaded:
        return
    lib = os.environ.get("GEOPREF_TORCH_LIB")
    if lib:
        torch.ops.load_library(lib)
        _loaded = True
        return
    from torch.utils.cpp_extension import load as load_extension

    if "TORCH_CUDA_ARCH_LIST" not in os.environ and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    load_extension(
        name="geopref_torch_ext",
        sources=[os.path.join(HERE, "geopref_torch.cpp"), os.path.join(HERE, "geopref_c_api.cu")],
        extra_include_paths=[os.path.join(ROOT, "include")],
        extra_cflags=["-O2"],  # the C++ standard is torch's (C++17 or C++20)
        extra_cuda_cflags=["-O3"],
        is_python_module=False,
        verbose=verbose,
    )
    _loaded = True


def pref_loss(logits, labels, offsets, *, pairs=None, soft_labels=None, ref_logps=None,
              weights=None, loss="gdpo", beta=0.1, alpha=1.0, gamma=0.0, epsilon=0.0, tau=0.05,
              average_logps=False, reduction="mean", ignore_index=-100, check=True):
    """(loss, seq_logps, metrics): loss is [] (mean, sum) or [P] (none) float32 and
    differentiable with respect to logits; seq_logps [S] float32; metrics a
    float64 tensor [7] in METRIC_NAMES order. check=True reads the device-side
    status after the call (synchronises the stream)."""
    load()
    return torch.ops.geopref.pref_loss(
        logits, labels, offsets, pairs, soft_labels, ref_logps, weights, loss, float(beta),
        float(alpha), float(gamma), float(epsilon), float(tau), bool(average_logps), reduction,
        int(ignore_index), bool(check))


def sequence_logps(logits, labels, offsets, *, average_logps=False, ignore_index=-100, check=True):
    """[S] float32 per-sequence log-probs (the reference model's forward)."""
    load()
    return torch.ops.geopref.sequence_logps(logits, labels, offsets, bool(average_logps),
                                            int(ignore_index), bool(check))


def metrics_dict(metrics):
    """The metrics tensor as {TRL name: float} (copies to the host)."""
    return dict(zip(METRIC_NAMES, metrics.tolist()))
