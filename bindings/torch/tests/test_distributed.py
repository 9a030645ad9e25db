"""geopref_torch.distributed over real process groups: gloo on CPU, world
sizes 1 to 4, each group spawned once (tests/dist_worker.py runs every check
on every rank and saves its verdicts), the tests below reading the verdicts.

Against the one-process functions of geopref_torch (each rank computes them
from the same seeded inputs): loss, log-probs, metrics and every gradient of
the logits path and the hidden-state path (plain tensors with uneven slices,
a width-1 slice holding labels, ignored rows; DTensors sharded on the
vocabulary), in float64 (1e-12), float32, bfloat16 and float16 (the
tolerances are derived in dist_worker.py); the sequence and per-token
log-probs; data parallelism (each rank a share of the pairs, the global
normalisers, the summed gradients); a failing rank (every rank raises
RankFailed, promptly, the group usable afterwards); a tiny model trained
with a DTensor lm_head; the bytes each rank allocates; TRL's per-token
statistics (outputs=) and geopref_torch.trl's fused head on a
ColwiseParallel lm_head (against the one-process head and TRL 1.16.0's),
never allocating the whole weight. What must be the same bits on every rank
is compared across the ranks here.
"""
import importlib.util
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import geopref_torch.distributed as gpd
import dist_worker

WORLDS = [1, 2, 3, 4]
HAVE_TRL = all(importlib.util.find_spec(m) is not None for m in ("trl", "transformers"))
# A group that does not finish in this time has hung: its processes are
# killed and its tests fail (the gloo timeout inside is 60 s).
DEADLINE_S = 240


@pytest.fixture(scope="module", params=WORLDS, ids=[f"K{k}" for k in WORLDS])
def group_run(request, tmp_path_factory):
    world = request.param
    tmp = str(tmp_path_factory.mktemp(f"dist{world}"))
    start = time.monotonic()
    # forkserver: the server imports torch and geopref_torch once, and every
    # rank forks from it (a fresh interpreter per rank, as spawn, without
    # paying the imports ten times).
    import multiprocessing
    # geopref_torch.trl (TRL and transformers, for the head's check) is
    # imported once there too, when TRL is installed.
    multiprocessing.set_forkserver_preload(["torch", "geopref_torch", "dist_worker"]
                                           + (["geopref_torch.trl", "tiny_lm"] if HAVE_TRL
                                              else []))
    ctx = mp.start_processes(dist_worker.main, args=(world, tmp), nprocs=world, join=False,
                             start_method="forkserver")
    error = None
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() - start > DEADLINE_S:
                error = f"the group of {world} did not finish in {DEADLINE_S} s"
                break
    except Exception as e:  # a rank died
        error = f"a rank of the group of {world} exited: {e}"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    if error:
        pytest.fail(error)
    runs = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    return world, runs


def failures(runs, *prefixes):
    return [f"rank {r}: {f}" for r, run in enumerate(runs) for f in run["failures"]
            if f.startswith(prefixes)]


# A check of dist_worker.py with nothing more to test than its verdicts:
# the prefixes of its failures.
CHECKS = {
    "logits_path": ("logits", "logps/"),
    "token_logps": ("token_logps", "linear_token_logps"),
    "hidden_path": ("hidden", "linear_logps"),
    "data_parallel": ("dp/", "data_parallel"),
    "memory_slice_only": ("memory",),
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_no_failures(group_run, check):
    _, runs = group_run
    assert not failures(runs, *CHECKS[check])


def test_reduction_none(group_run):
    _, runs = group_run
    assert not failures(runs, "none/", "reduction_none")
    assert "none/loss" in runs[0]["shared"]


def test_data_and_vocab_parallel_2d(group_run):
    world, runs = group_run
    if world != 4:
        pytest.skip("a (dp, tp) = (2, 2) mesh needs 4 ranks")
    assert not failures(runs, "2d")
    assert "2d/loss" in runs[0]["shared"]


def test_failing_rank_raises_everywhere(group_run):
    world, runs = group_run
    assert not failures(runs, "bad_", "wrong_slice", "dp_normalizers", "after_failures",
                        "failures")
    # Every rank raised, within a bounded time (no wait for a timeout).
    for what in ("bad_label/logits", "bad_label/hidden", "bad_label/token", "wrong_slice",
                 "bad_option", "dp_normalizers"):
        for run in runs:
            assert run["timings"][what] < 10.0, what
            assert f"failed/{what}" in run["shared"], what


def test_training_run(group_run):
    _, runs = group_run
    assert not failures(runs, "train")
    assert any(k.startswith("train/") for k in runs[0]["shared"])


def test_token_statistics(group_run):
    """outputs=: entropy, log_sum_sq_probs, mean_logits and is_top1 (ties
    across slice boundaries) equal the one-process op's, logits and hidden."""
    _, runs = group_run
    assert not failures(runs, "stats")
    assert any(k.startswith("stats/") and k.endswith("/is_top1") for k in runs[0]["shared"])


@pytest.mark.skipif(not HAVE_TRL, reason="TRL and transformers are not installed")
def test_trl_head_on_a_vocab_parallel_lm_head(group_run):
    """geopref_torch.trl's head on ColwiseParallel's DTensor lm_head: the
    FusedCausalLMOutput and every gradient of the one-process head, and no
    allocation of the full weight on any rank."""
    _, runs = group_run
    assert not failures(runs, "trl_head", "trl_memory")
    assert any(k.startswith("trl_head/") for k in runs[0]["shared"])
    assert "trl_memory/largest" in runs[0]["timings"]


def test_same_bits_on_every_rank(group_run):
    world, runs = group_run
    shared = runs[0]["shared"]
    # Every category recorded its results (a check that stopped early fails above).
    for prefix in (["logits/plain", "logits/dtensor", "logps/", "token_logps/", "hidden/all_reduce",
                   "hidden/rank_order", "hidden/dtensor", "linear_logps/",
                   "linear_token_logps/", "dp/", "failed/", "train/", "stats/"]
                  + (["trl_head/"] if HAVE_TRL else [])):
        assert any(k.startswith(prefix) for k in shared), prefix
    for r in range(1, world):
        assert set(runs[r]["shared"]) == set(shared)
        differ = [k for k in shared if not torch.equal(runs[r]["shared"][k], shared[k])]
        assert not differ, f"rank {r} differs from rank 0 in {differ}"


def test_needs_an_initialised_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="not initialised"):
        gpd.vocab_parallel_logps(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64),
                                 vocab_slice=(0, 4, 0, 1))


def headers(layouts, failed=None):
    """The gathered headers of K ranks (as _exchange builds them) from
    (begin, width) per rank, N = 6, S = 2, V = 10; `failed`: {rank: message}."""
    rows = []
    for r, (begin, width) in enumerate(layouts):
        status, message = (1, failed[r]) if failed and r in failed else (0, "")
        values = [status, 6, 2, begin, width, 10, r, len(layouts), 0, 0]
        rows.append(torch.cat([torch.tensor(values, dtype=torch.int64),
                               gpd._encode(message)]))
    return torch.stack(rows)


@pytest.mark.parametrize("layouts, ranks, match", [
    ([(0, 4), (4, 6)], None, None),                       # tiles [0, 10)
    ([(0, 4), (5, 5)], (1,), "do not tile"),              # a gap
    ([(0, 4), (3, 7)], (1,), "do not tile"),              # an overlap
    ([(0, 4), (4, 5)], (1,), "do not tile"),              # short of V
    ([(0, 10)], None, None),
    ([(1, 9)], (0,), "do not tile"),
])
def test_header_layouts(layouts, ranks, match):
    grp = gpd._Group(None, 0, len(layouts), torch.device("cpu"))
    hdr = headers(layouts)
    if match is None:
        gpd._check_headers(hdr, grp, None)
        return
    with pytest.raises(gpd.RankFailed, match=match) as e:
        gpd._check_headers(hdr, grp, None)
    assert e.value.ranks == ranks


def test_header_failure_message_and_sizes():
    grp = gpd._Group(None, 1, 3, torch.device("cpu"))
    hdr = headers([(0, 3), (3, 3), (6, 4)], failed={2: "IndexError: label 10 out of range"})
    with pytest.raises(gpd.RankFailed, match=r"rank\(s\) \[2\] of 3 .*rank 2: IndexError: "
                                             r"label 10 out of range") as e:
        gpd._check_headers(hdr, grp, None)
    assert e.value.ranks == (2,)
    hdr = headers([(0, 3), (3, 3), (6, 4)])
    hdr[1, 1] = 7                                          # N differs on rank 1
    hdr[2, 6] = 0                                          # rank 2 says it is rank 0
    with pytest.raises(gpd.RankFailed, match="rows differs.*group rank") as e:
        gpd._check_headers(hdr, grp, None)
    assert e.value.ranks == (2,)
    long = "x" * 1000                                      # messages are cut to 256 bytes
    assert gpd._decode(gpd._encode(long)) == long[:256]
