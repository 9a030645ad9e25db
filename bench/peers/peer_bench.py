"""What the PyTorch peer benches share (torch_peers.py, fused_linear_peers.py,
trl_head_peers.py, dist_head_memory.py): their common command-line arguments,
TRL 1.16.0's chunked log-prob head from the package or a staged wheel, the reason they
cannot run here, CUDA events around one call with the L2 emptied first (the
method of bench/gpu/cuda_timer.cuh), and the median of the repeats."""
import contextlib
import importlib.util
import os
import sys
import types


def add_common_args(p, vocab="32000,128256"):
    """--rows, --hidden, --vocab, --chunk-bytes, --iters, --quick, --json."""
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--vocab", default=vocab)
    p.add_argument("--chunk-bytes", type=int, default=1 << 30,
                   help="geopref's budget for one chunk of logits (default 1 GiB)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="3 iterations")
    p.add_argument("--json", help="write the rows here")


def parse(p):
    """The arguments, --quick applied."""
    a = p.parse_args()
    if a.quick:
        a.iters = 3
    return a


def skipped(name):
    """True, having said why, when bench `name` cannot run here (no PyTorch,
    no CUDA device)."""
    try:
        import torch
    except ImportError as e:
        print(f"{name}: PyTorch not importable ({e}); skipped")
        return True
    if not torch.cuda.is_available():
        print(f"{name}: no CUDA device; skipped")
        return True
    return False


def liger_dpo_loss(cls, beta):
    """fn(weight, hidden, labels) -> the loss of Liger-Kernel's fused linear
    DPO loss class `cls`, reference-free and without its NLL term where its
    version takes those arguments."""
    try:
        loss_fn = cls(beta=beta, compute_nll_loss=False, use_ref_model=False)
    except TypeError:
        loss_fn = cls(beta=beta)

    def fn(w, x, labels):
        r = loss_fn(w, x, labels)
        return r[0] if isinstance(r, tuple) else r
    return fn


class cold_timer:
    """Seconds of one call of fn(): the L2 flushed (a write of twice its
    size), then CUDA events around the call on the current stream."""

    def __init__(self):
        import torch  # the benches import without torch and say so themselves
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        self.flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
        self.start = torch.cuda.Event(enable_timing=True)
        self.stop = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn):
        self.flush.zero_()
        self.start.record()
        fn()
        self.stop.record()
        self.stop.synchronize()
        return self.start.elapsed_time(self.stop) * 1e-3


def median(xs):
    """The upper median (an element of xs)."""
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _stub(name, **attrs):
    m = sys.modules.get(name)
    if m is None:
        m = types.ModuleType(name)
        m.__path__ = []  # a package, for the relative imports
        sys.modules[name] = m
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def trl_chunked_logprob(wheel_dir):
    """(TRL 1.16.0's ChunkedLogProbFunction, where it came from), or (None,
    why): the installed package, else the kernel file of a staged wheel in
    wheel_dir (scripts/gpu-check.sh --stage) loaded as
    trl.kernels.chunked_logprob, with stand-ins for the two helpers it
    imports: transformers.utils.is_triton_available (when transformers is
    absent) and, in its backward, trl.trainer.utils.maybe_gather_lm_head_ctx
    (DeepSpeed ZeRO-3's gather; a null context without ZeRO-3)."""
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        return ChunkedLogProbFunction, "installed trl"
    except Exception:  # noqa: BLE001 - not installed, or its imports fail here
        pass
    import glob
    import zipfile
    wheels = sorted(glob.glob(os.path.join(wheel_dir, "trl-*.whl")))
    if not wheels:
        return None, f"trl not importable and no trl-*.whl in {wheel_dir}"
    with zipfile.ZipFile(wheels[-1]) as z:
        source = z.read("trl/kernels/chunked_logprob.py")
    # A file, not a string: Triton's jit reads its kernels' source from it.
    import tempfile
    path = os.path.join(tempfile.mkdtemp(prefix="trl_kernel_"), "chunked_logprob.py")
    with open(path, "wb") as f:
        f.write(source)
    try:
        import transformers.utils  # noqa: F401
    except Exception:  # noqa: BLE001 - the one helper the kernel file takes from it
        _stub("transformers")
        _stub("transformers.utils",
              is_triton_available=lambda: importlib.util.find_spec("triton") is not None)
    # The backward imports maybe_gather_lm_head_ctx from ..trainer.utils (a
    # DeepSpeed ZeRO-3 gather; a null context without ZeRO-3): a package
    # trl.kernels for the file, a trl.trainer.utils with the null context.
    _stub("trl")
    _stub("trl.kernels")
    _stub("trl.trainer")
    _stub("trl.trainer.utils", maybe_gather_lm_head_ctx=lambda *a: contextlib.nullcontext())
    spec = importlib.util.spec_from_file_location("trl.kernels.chunked_logprob", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["trl.kernels.chunked_logprob"] = module
    spec.loader.exec_module(module)
    return module.ChunkedLogProbFunction, os.path.basename(wheels[-1])
