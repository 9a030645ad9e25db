"""What the PyTorch peer benches share (torch_peers.py, fused_linear_peers.py,
trl_head_peers.py): CUDA events around one call with the L2 emptied first
(the method of bench/gpu/cuda_timer.cuh), and the median of the repeats."""


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
