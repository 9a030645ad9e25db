#!/usr/bin/env python3
"""Per-rank peak memory and time of a vocab-sharded LM head over K processes
(issue 23's GPU check): the per-token head from hidden states, forward +
backward, with the lm_head weight a DTensor sharded on the vocabulary
(Shard(0) on a 1-D DeviceMesh of K ranks, as ColwiseParallel leaves it),
bf16, N = 16384 tokens, H = 4096, V in {32000, 128256} by default.

  geopref  geopref_torch.distributed.vocab_linear_token_logps(hidden, weight,
           labels, outputs=("log_probs", "entropy")): each rank folds its own
           rows of the weight, one all-gather of 16-byte records per token,
           the hidden states' gradient all-reduced; the weight is never
           gathered (docs/distributed.md §4)
  trl      what TRL 1.16.0's add_fused_lm_head does with a DTensor lm_head:
           weight.full_tensor() on every rank, then
           trl.kernels.chunked_logprob.ChunkedLogProbFunction with the chunk
           size it passes (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE,
           32768) and outputs ("entropy",)

Both get the same upstream gradients on the log-probs and on the entropy.
Every rank holds the same hidden states, labels and upstreams (one seed) and
its own slice of the weight (seeded by its rank); both methods see the same
whole weight. Per rank: "ms" is the median of --iters steps (CUDA events
around the step after a barrier, the L2 flushed first; on --device cpu the
wall clock), "peak MiB" torch.cuda.max_memory_allocated during the timed
steps (reset before each method) minus the inputs' own bytes and those of
their gradients (hidden, the rank's weight slice). The table shows the
largest over the ranks; "x" is trl's over geopref's. "max|dlogp|" is the
largest difference of the two methods' log-probs over tokens and ranks
(the run fails when it exceeds --tol); each row's line also gives the
entropies' and the gradients' (hidden states and the rank's weight rows,
max|d| / max|geopref's|; the run fails above --grad-tol).

Launch: by itself it spawns K processes (torch.multiprocessing), one GPU
each over NCCL (K <= the GPU count; default K = the GPU count), or with
--device cpu over gloo on CPU tensors (peak memory "n/a"; default K = 2).
Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR set) each process
runs one rank. With one GPU, K = 1 runs the code with nothing to save (said
in the output). No GPU and no --device cpu: exit 77 (skipped).

TRL: the installed package, else the kernel file of a staged wheel in
--trl-wheel-dir (scripts/gpu-check.sh --stage), loaded with stand-ins for
the two helpers it imports (transformers' is_triton_available, TRL's
ZeRO-3 gather context, a no-op without DeepSpeed). Without either the
geopref rows run alone.
"""
import argparse
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_bench import (add_common_args, cold_timer, median, parse,  # noqa: E402
                        token_head_fn, trl_chunked_logprob)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

OUTPUTS = ("log_probs", "entropy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--world", type=int, default=0,
                   help="K ranks (default: the GPU count; 2 with --device cpu)")
    p.add_argument("--methods", default="geopref,trl")
    p.add_argument("--tol", type=float, default=0.05,
                   help="largest max|dlogp| accepted (default 0.05: bf16 inputs; TRL folds "
                        "bf16 tiles on the CPU, whose rounding of a logit of size ~8 is 0.03)")
    p.add_argument("--grad-tol", type=float, default=0.05,
                   help="largest gradient max|d|/max accepted (default 0.05: each bf16 gradient "
                        "is one rounding, 2^-8 = 3.9e-3 of the largest at most, of fp32 sums "
                        "that differ far less; 0.05 is about 13 of those)")
    p.add_argument("--trl-wheel-dir", default=".whl",
                   help="where a staged trl wheel is looked for when trl does not import")
    return parse(p) if argv is None else p.parse_args(argv)


# ---- One rank

def sharded_weight(v, h, mesh, dev, rank):
    """A Parameter DTensor [V, H], Shard(0) over the 1-D mesh: this rank's
    rows (torch.chunk's split, as distribute_tensor makes it), seeded by the
    rank, never materialised whole."""
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    local_shape, _ = compute_local_shape_and_global_offset((v, h), mesh, [Shard(0)])
    gen = torch.Generator(device=dev)
    gen.manual_seed(1000 + rank)
    local = torch.randn(*local_shape, device=dev, generator=gen, dtype=torch.float32)
    local = (local * 0.02).to(torch.bfloat16)
    w = DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                           shape=torch.Size((v, h)), stride=(h, 1))
    return torch.nn.Parameter(w)


def replicated_inputs(n, h, v, dev):
    gen = torch.Generator(device=dev)
    gen.manual_seed(1)
    x = torch.randn(n, h, device=dev, generator=gen).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, v, (n,), device=dev, generator=gen)
    g = torch.randn(n, device=dev, generator=gen)          # upstream of the log-probs
    e = torch.randn(n, device=dev, generator=gen) * 0.1    # and of the entropy
    return x, labels, g, e


class wall_timer:
    def __call__(self, fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def run_method(name, args, v, mesh, dev, rank, timer, trl_fn):
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
    x, labels, g, e = replicated_inputs(args.rows, args.hidden, v, dev)
    w = sharded_weight(v, args.hidden, mesh, dev, rank)
    local = w.to_local()
    fn = token_head_fn(name, trl_fn, x, w, labels, OUTPUTS, args.chunk_bytes,
                       trl_outputs=("entropy",))

    def step():
        x.grad = w.grad = None
        lp, ent = fn()
        ((lp * g).sum() + (ent * e).sum()).backward()

    step()  # warm-up (Triton's compile, cuBLAS's and NCCL's set-up)
    x.grad = w.grad = None
    if cuda:
        torch.cuda.synchronize()
        # the inputs (allocated now) and their gradients (bf16, as the inputs)
        base = torch.cuda.memory_allocated() + (x.numel() + local.numel()) * 2
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        dist.barrier()
        times.append(timer(step))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    # The last timed step's gradients (the hidden states' and this rank's
    # weight rows, kept on the device: the next method's base counts them)
    # and one more forward's outputs, for the comparison of the methods.
    gx, gw = x.grad, w.grad.to_local()
    with torch.no_grad():
        lp, ent = fn()
    out = (lp.float().cpu(), ent.float().cpu(), gx, gw)
    del x, w, local, fn, g, e, labels
    return median(times), peak, out


def worker(rank, world, args, result_path):
    """One rank (spawned, or under torchrun with rank = LOCAL_RANK)."""
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(max(1, args.threads))
    grank = int(os.environ.get("RANK", rank))
    dist.init_process_group("nccl" if cuda else "gloo", rank=grank, world_size=world,
                            **({"device_id": dev} if cuda else {}))
    try:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(dev.type, (world,))
        methods = args.methods.split(",")
        trl_fn, trl_from = (trl_chunked_logprob(args.trl_wheel_dir) if "trl" in methods else (None, ""))
        if "trl" in methods and trl_fn is None:
            if grank == 0:
                print(f"dist_head_memory: {trl_from}; the trl rows are skipped", flush=True)
            methods.remove("trl")
        timer = cold_timer() if cuda else wall_timer()
        if grank == 0:
            name = torch.cuda.get_device_name(dev) if cuda else "CPU"
            print(f"dist_head_memory: K={world} ranks ({name}, "
                  f"{'NCCL' if cuda else 'gloo'}), torch {torch.__version__}, N={args.rows}, "
                  f"H={args.hidden}, bf16, outputs {OUTPUTS}, {args.iters} iterations (median)"
                  + (f", TRL from {trl_from}" if trl_fn is not None else ""), flush=True)
            if cuda and world == 1:
                print("dist_head_memory: K = 1 (one GPU): the weight is not sharded, so "
                      "there is no memory to save; this run only exercises the code",
                      flush=True)
        rows = []
        for v in (int(s) for s in args.vocab.split(",")):
            got = {}
            for name in methods:
                try:
                    seconds, peak, out = run_method(name, args, v, mesh, dev, grank, timer,
                                                    trl_fn)
                    mine = {"ok": True, "seconds": seconds, "peak": peak}
                    got[name] = out
                except Exception as ex:  # noqa: BLE001 - a failing method is a row
                    mine = {"ok": False, "error": f"{type(ex).__name__}: {ex}"[:300]}
                if "geopref" in got and name == "trl" and name in got:
                    mine["dlogp"] = (got["trl"][0] - got["geopref"][0]).abs().max().item()
                    mine["dent"] = (got["trl"][1] - got["geopref"][1]).abs().max().item()
                    mine["dgrad"] = max(rel_diff(got["trl"][i], got["geopref"][i])
                                        for i in (2, 3))
                every = [None] * world
                dist.all_gather_object(every, mine)  # a matched collective on every rank
                if grank != 0:
                    continue
                row = {"method": name, "K": world, "V": v}
                bad = [f"rank {r}: {m['error']}" for r, m in enumerate(every) if not m["ok"]]
                if bad:
                    row["error"] = bad[0]
                else:
                    row["ms"] = max(m["seconds"] for m in every) * 1e3
                    row["ms_ranks"] = [m["seconds"] * 1e3 for m in every]
                    if cuda:
                        row["peak_MiB"] = max(m["peak"] for m in every)
                        row["peak_MiB_ranks"] = [m["peak"] for m in every]
                    if "dlogp" in every[0]:
                        row["max_dlogp"] = max(m["dlogp"] for m in every)
                        row["max_dentropy"] = max(m["dent"] for m in every)
                        row["grad_rel"] = max(m["dgrad"] for m in every)
                rows.append(row)
                print(fmt_row(row), flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"K": world, "device": args.device, "N": args.rows,
                                   "H": args.hidden, "iters": args.iters, "rows": rows}, f,
                                  indent=1)
        if grank == 0:
            with open(result_path, "w") as f:
                json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def rel_diff(a, b):
    """max |a - b| / max |b| in float32: the gradients' agreement."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def fmt_row(row):
    if "error" in row:
        return f"  {row['method']:<8} V={row['V']:<7} failed: {row['error']}"
    peak = f"{row['peak_MiB']:.1f} MiB" if "peak_MiB" in row else "n/a"
    return (f"  {row['method']:<8} V={row['V']:<7} {row['ms']:.2f} ms, peak {peak} per rank"
            + (f", max|dlogp| {row['max_dlogp']:.2e}, max|dentropy| {row['max_dentropy']:.2e}, "
               f"gradients max|d|/max {row['grad_rel']:.2e}" if "max_dlogp" in row else ""))


def table(rows, tol, grad_tol):
    """The table per V (printed last); the number of failures."""
    failed = 0
    print()
    for v in dict.fromkeys(r["V"] for r in rows):
        vr = [r for r in rows if r["V"] == v]
        geo = next((r for r in vr if r["method"] == "geopref" and "error" not in r), None)
        print(f"V = {v}")
        print(f"  {'method':<8} {'K':>3} {'ms':>10} {'peak MiB/rank':>14} {'x ms':>7} "
              f"{'x peak':>7}  max|dlogp|")
        for r in vr:
            if "error" in r:
                failed += r["method"] == "geopref"  # trl's OOM is a result; geopref's a failure
                print(f"  {r['method']:<8} {r['K']:>3}  failed: {r['error']}")
                continue
            peak = f"{r['peak_MiB']:.1f}" if "peak_MiB" in r else "n/a"
            xms = xpk = dl = ""
            if r["method"] != "geopref" and geo is not None:
                xms = f"{r['ms'] / geo['ms']:.2f}x"
                if "peak_MiB" in r and geo["peak_MiB"] > 0:
                    xpk = f"{r['peak_MiB'] / geo['peak_MiB']:.2f}x"
            if "max_dlogp" in r:
                dl = f"{r['max_dlogp']:.2e}"
                if not r["max_dlogp"] <= tol:
                    dl += f"  > tol {tol}: DISAGREE"
                    failed += 1
                if not r["grad_rel"] <= grad_tol:
                    dl += f"  gradients {r['grad_rel']:.2e} > {grad_tol}: DISAGREE"
                    failed += 1
            print(f"  {r['method']:<8} {r['K']:>3} {r['ms']:>10.2f} {peak:>14} {xms:>7} "
                  f"{xpk:>7}  {dl}")
    print("(ms, peak: the largest over the ranks; x: trl's over geopref's, > 1: geopref "
          "faster / smaller; peak: above the inputs and their gradients)")
    return failed


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    args = parse_args()
    args.threads = 1
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("dist_head_memory: no CUDA device (use --device cpu for the gloo run); skipped")
        return 77
    if not dist.is_available():
        print("dist_head_memory: torch.distributed not available; skipped")
        return 77
    import tempfile
    result = os.path.join(tempfile.mkdtemp(prefix="dist_head_memory_"), "rows.json")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        world = int(os.environ["WORLD_SIZE"])  # torchrun: this process is one rank
        worker(int(os.environ["LOCAL_RANK"]), world, args, result)
        if int(os.environ["RANK"]) != 0:
            return 0
    else:
        gpus = torch.cuda.device_count() if cuda else 0
        world = args.world or (gpus if cuda else 2)
        if cuda and world > gpus:
            print(f"dist_head_memory: K = {world} needs {world} GPUs (one per rank), this "
                  f"machine has {gpus}", file=sys.stderr)
            return 2
        if world < 1:
            print(f"dist_head_memory: --world must be >= 1, got {world}", file=sys.stderr)
            return 2
        args.threads = max(1, (os.cpu_count() or 1) // world) if not cuda else 1
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        import torch.multiprocessing as mp
        mp.spawn(worker, args=(world, args, result), nprocs=world, join=True)
    with open(result) as f:
        rows = json.load(f)
    failed = table(rows, args.tol, args.grad_tol)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
