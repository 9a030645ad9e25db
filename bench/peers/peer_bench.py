"""What the PyTorch peer benches share (torch_peers.py, fused_linear_peers.py,
trl_head_peers.py, dist_head_memory.py): their common command-line arguments,
TRL 1.16.0's chunked log-prob head from the package or a staged wheel, the
per-token heads they compare (geopref's and TRL's), the reason they cannot
run here, CUDA events around one call with the L2 emptied first (the method
of bench/gpu/cuda_timer.cuh), the timed forwards and steps of a loss, and the
median of the repeats."""
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


def forward_and_step_times(fn, leaves, timer, iters, forward_grad=False):
    """A loss fn() of the tensors leaves: two warm-up steps, then the
    seconds of `iters` forwards (under torch.no_grad unless forward_grad)
    and of `iters` steps (the leaves' gradients cleared, fn().backward()),
    the CUDA peak memory statistics reset before the steps (so
    torch.cuda.max_memory_allocated() afterwards is the steps' peak):
    (forward times, step times)."""
    import torch

    def step():
        for t in leaves:
            t.grad = None
        fn().backward()

    for _ in range(2):
        step()
    with contextlib.nullcontext() if forward_grad else torch.no_grad():
        fwd = [timer(fn) for _ in range(iters)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return fwd, [timer(step) for _ in range(iters)]


# The chunk of rows of TRL 1.16.0's head (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE).
TRL_CHUNK = 32768


def token_head_fn(name, trl_fn, x, w, labels, outputs, chunk_bytes, trl_outputs=None):
    """fn() -> (log_probs, entropy) of one forward of the per-token head
    `name` on hidden states x and the lm_head's weight w (a DTensor sharded
    on the vocabulary, or a tensor). "geopref": geopref_torch's
    linear_token_logps, or geopref_torch.distributed's
    vocab_linear_token_logps for a DTensor, asked for `outputs` with
    chunk_bytes and no check. Otherwise TRL 1.16.0's ChunkedLogProbFunction
    trl_fn asked for trl_outputs (default: outputs), on the whole weight:
    for a DTensor, gathered by w.full_tensor() in every forward (as TRL
    1.16.0's add_fused_lm_head does)."""
    from torch.distributed.tensor import DTensor
    sharded = isinstance(w, DTensor)
    if name == "geopref":
        if sharded:
            from geopref_torch.distributed import vocab_linear_token_logps as head
        else:
            from geopref_torch import linear_token_logps as head

        def fn():
            r = head(x, w, labels, outputs=outputs, chunk_bytes=chunk_bytes, check=False)
            return r.log_probs, r.entropy
        return fn
    trl_outputs = outputs if trl_outputs is None else trl_outputs

    def fn():
        wf = w.full_tensor() if sharded else w
        r = trl_fn.apply(x, wf, None, labels, 1.0, TRL_CHUNK, None, 1.0, trl_outputs)
        return r[0], r[1]
    return fn


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
