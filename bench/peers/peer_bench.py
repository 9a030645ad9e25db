"""What the PyTorch peer benches share (torch_peers.py, fused_linear_peers.py,
trl_head_peers.py): their common command-line arguments, the reason they
cannot run here, CUDA events around one call with the L2 emptied first (the
method of bench/gpu/cuda_timer.cuh), and the median of the repeats."""


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
