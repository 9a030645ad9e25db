"""One rank of test_distributed.py's process groups (gloo on CPU).

main(rank, world, tmp) joins a group of `world` processes, runs every check
of geopref_torch.distributed against the one-process functions of
geopref_torch (each rank computes the one-process result itself, from the
same seeded inputs), and saves {"failures": [...], "shared": {...},
"timings": {...}} to tmp/rank{rank}.pt. "shared" holds what must be the same
bits on every rank (the parent compares the ranks' copies with torch.equal).
A check that raises is a failure; checks never skip a collective on one rank
only, except by raising, which the gloo timeout then bounds.
"""
import os
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import geopref_torch as gp
import geopref_torch.distributed as gpd
from geopref_torch import VocabSlice

# The vocabulary and its uneven slices per world size: a width-1 slice for
# K >= 2 (its one column is a label of several rows), the rest uneven.
V = 11
WIDTHS = {1: [11], 2: [1, 10], 3: [4, 1, 6], 4: [3, 1, 5, 2]}
P, T, H = 3, 5, 8
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# Tolerances against the one-process run. The CPU kernels compute in double
# in both runs; sharding changes only the grouping of the log-sum-exp (K
# more merges, each one rounding of double: relative 1e-16 per merge), and,
# for hidden states, the order of the K partial products G_r·W_r. Hence
# float64 to 1e-12. Outputs in a narrower dtype are the double results
# rounded once, so a result within double rounding of a rounding boundary
# may round to the neighbouring value: one unit in the last place of the
# output dtype (log-probs, loss and metrics are float32 for every input
# dtype below float64: 2^-24 relative; gradients in the input's dtype:
# bf16 2^-8, fp16 2^-11). The one-process backward of dpo_loss also reads its
# saved lse rounded to float32: every softmax term exp(z - lse) then carries
# a relative error up to |lse|·2^-24 <= 2^-21 (|lse| < 8 here), which is
# what float32 gradients show. Errors are measured against
# |want| + max|want| (close()), as a softmax term's error is relative to
# the term, not to a gradient element that cancels it.
ULP = {torch.float64: 1e-12, torch.float32: 2.0 ** -20, torch.bfloat16: 2.0 ** -7,
       torch.float16: 2.0 ** -10}


class Check:
    def __init__(self):
        self.failures = []
        self.shared = {}
        self.timings = {}

    def close(self, what, got, want, tol):
        got = got.detach().to(torch.float64)
        want = want.detach().to(torch.float64)
        if got.shape != want.shape:
            self.failures.append(f"{what}: shape {list(got.shape)} != {list(want.shape)}")
            return
        scale = want.abs().max().item() if want.numel() else 0.0
        # A NaN compares False: it fails through the finiteness test.
        bad = (got - want).abs() > tol * (want.abs() + scale)
        if bool(bad.any()) or not torch.equal(torch.isfinite(got), torch.isfinite(want)):
            err = (got - want).abs().max().item()
            self.failures.append(f"{what}: max |diff| {err:.3e} (tol {tol:.1e}, scale {scale:.3e})")

    def outputs(self, tag, got, want, tol):
        """A DPOOutput against the one-process one: the loss, log-probs,
        metric sums and every metric close, and the first three shared."""
        self.close(f"{tag}/loss", got.loss, want.loss, tol)
        self.close(f"{tag}/logps", got.logps, want.logps, tol)
        self.close(f"{tag}/metric_sums", got.metric_sums, want.metric_sums, tol)
        for k in want.metrics:
            self.close(f"{tag}/metrics/{k}", got.metrics[k], want.metrics[k], tol)
        self.share(tag, dict(loss=got.loss, logps=got.logps, sums=got.metric_sums))

    def share(self, name, t):
        if isinstance(t, dict):
            for k, v in t.items():
                self.share(f"{name}/{k}", v)
        else:
            self.shared[name] = t.detach().clone()


def rank_slice(rank, world):
    """This rank's slice of the vocabulary: (first column, width, VocabSlice)."""
    w = WIDTHS[world]
    b = sum(w[:rank])
    return b, w[rank], VocabSlice(b, V, rank, world)


def dtype_cases(seed):
    """(dtype, inputs(seed, dtype), its tolerance ULP[dtype], its name) for
    every dtype of DTYPES."""
    for dtype in DTYPES:
        yield dtype, inputs(seed, dtype), ULP[dtype], str(dtype).split(".")[-1]


def inputs(seed, dtype, n_pairs=P):
    """TRL's layout: 2P sequences of T rows, chosen first; labels with an
    ignored prompt, an all-ignored row block, and the width-1 slice's column."""
    g = torch.Generator().manual_seed(seed)
    b = 2 * n_pairs
    labels = torch.randint(0, V, (b, T), generator=g)
    labels[:, :1] = -100                      # the prompt
    labels[1, 3:] = -100                      # padding
    labels[0, 2] = labels[3, 4] = 1           # column 1: the width-1 slice of K = 2..4
    labels[2, 1] = 4                          # K = 3's width-1 slice
    labels[4 % b, 3] = 3                      # K = 4's width-1 slice
    labels[5 % b, 4] = V - 1                  # the last column
    logits = (torch.randn(b, T, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    # Dyadic hidden states and weights (multiples of 1/16): the products in
    # double are exact, so no GEMM's order of summation shows.
    hidden = (torch.randint(-16, 17, (b, T, H), generator=g) / 16).to(dtype)
    weight = (torch.randint(-16, 17, (V, H), generator=g) / 16).to(dtype)
    bias = (torch.randint(-16, 17, (V,), generator=g) / 16).to(dtype)
    ref = torch.randn(b, generator=g, dtype=torch.float64) * 3 - 10
    soft = torch.rand(n_pairs, generator=g, dtype=torch.float64)
    up = torch.randn(b, T, generator=g, dtype=torch.float64)
    return dict(labels=labels, logits=logits, hidden=hidden, weight=weight, bias=bias,
                ref=ref.to(torch.float32 if dtype != torch.float64 else dtype),
                soft=soft.to(torch.float32 if dtype != torch.float64 else dtype), up=up)


def option_sets(d, dtype=torch.float64):
    """The option sets of the loss checks: all three in float64 and float32,
    the first in bfloat16 and float16 (the rounding of the output is what
    those add, the same for every loss)."""
    sets = {
        "gdpo": dict(loss_type="gdpo", beta=0.3, ref_logps=d["ref"], soft_labels=d["soft"]),
        "sigmoid+sft+softcap": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                                    ref_logps=d["ref"], softcap=3.0, temperature=0.7),
        "ipo_sum": dict(loss_type="ipo", ref_logps=d["ref"], reduction="sum"),
    }
    if dtype in (torch.bfloat16, torch.float16):
        return {"gdpo": sets["gdpo"]}
    return sets


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# ---- the logits path

def check_logits(c, rank, world, mesh):
    b, w, sl = rank_slice(rank, world)
    for dtype, d, tol, name in dtype_cases(1):
        for oname, opts in option_sets(d, dtype).items():
            z = leaf(d["logits"])
            want = gp.dpo_loss(z, d["labels"], **opts)
            want.loss.backward()
            for kind in ("plain", "dtensor") if dtype == torch.float64 else ("plain",):
                if kind == "plain":
                    zl = leaf(d["logits"][..., b:b + w])
                    got = gpd.vocab_parallel_loss(zl, d["labels"], vocab_slice=sl, **opts)
                    got.loss.backward()
                    grad, grad_want = zl.grad, z.grad[..., b:b + w]
                else:
                    from torch.distributed.tensor import Shard, distribute_tensor
                    zd = distribute_tensor(d["logits"], mesh, [Shard(2)]).requires_grad_(True)
                    got = gpd.vocab_parallel_loss(zd, d["labels"], **opts)
                    got.loss.backward()
                    grad, grad_want = zd.grad.full_tensor(), z.grad
                tag = f"logits/{kind}/{name}/{oname}"
                c.outputs(tag, got, want, tol)
                c.close(f"{tag}/grad", grad, grad_want, tol)
        # sequence and per-token log-probs
        zl = d["logits"][..., b:b + w]
        for avg in (False, True):
            got = gpd.vocab_parallel_logps(zl, d["labels"], vocab_slice=sl, average_logps=avg)
            want = gp.sequence_logps(d["logits"], d["labels"], average_logps=avg)
            c.close(f"logps/{name}/avg={avg}", got, want, tol)
            c.share(f"logps/{name}/avg={avg}", got)
        for tr in (dict(), dict(softcap=2.0, logit_scale=1.5)):
            z = leaf(d["logits"])
            want, want_h = gp.token_logps(z, d["labels"], **tr, return_entropy=True)
            (want * d["up"]).sum().backward()
            zl = leaf(d["logits"][..., b:b + w])
            got, got_h = gpd.vocab_parallel_token_logps(zl, d["labels"], vocab_slice=sl, **tr,
                                                        return_entropy=True,
                                                        chunk_bytes=3 * 8 * w)  # 3 rows a chunk
            (got * d["up"]).sum().backward()
            tag = f"token_logps/{name}/{sorted(tr)}"
            c.close(f"{tag}/logps", got, want, tol)
            c.close(f"{tag}/entropy", got_h, want_h, tol)
            c.share(f"{tag}/entropy", got_h)
            c.close(f"{tag}/grad", zl.grad, z.grad[..., b:b + w], tol)
            c.share(tag, got)
    # DTensor logits, per-token
    from torch.distributed.tensor import Shard, distribute_tensor
    d = inputs(2, torch.float64)
    z = leaf(d["logits"])
    want = gp.token_logps(z, d["labels"])
    (want * d["up"]).sum().backward()
    zd = distribute_tensor(d["logits"], mesh, [Shard(2)]).requires_grad_(True)
    got = gpd.vocab_parallel_token_logps(zd, d["labels"])
    (got * d["up"]).sum().backward()
    c.close("token_logps/dtensor/logps", got, want, 1e-12)
    c.close("token_logps/dtensor/grad", zd.grad.full_tensor(), z.grad, 1e-12)
    got = gpd.vocab_parallel_logps(zd.detach(), d["labels"])
    c.close("logps/dtensor", got, gp.sequence_logps(d["logits"], d["labels"]), 1e-12)


# ---- the hidden-state path

def check_hidden(c, rank, world, mesh):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    b, w, sl = rank_slice(rank, world)
    for dtype, d, tol, name in dtype_cases(3):
        for oname, opts in option_sets(d, dtype).items():
            x, wt, bs = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
            want = gp.fused_linear_preference_loss(x, wt, d["labels"], bias=bs, **opts)
            want.loss.backward()
            for mode in ("all_reduce", "rank_order", "partial", "dtensor"):
                if mode == "dtensor" and dtype != torch.float64:
                    continue
                xl = leaf(d["hidden"])
                if mode == "dtensor":
                    xd = distribute_tensor(d["hidden"], mesh, [Replicate()]).requires_grad_(True)
                    wd = distribute_tensor(d["weight"], mesh, [Shard(0)]).requires_grad_(True)
                    bd = distribute_tensor(d["bias"], mesh, [Shard(0)]).requires_grad_(True)
                    got = gpd.vocab_linear_loss(xd, wd, d["labels"], bias=bd, **opts)
                    got.loss.backward()
                    gx, gw, gb = xd.grad.to_local(), wd.grad.full_tensor(), bd.grad.full_tensor()
                    gw_want, gb_want = wt.grad, bs.grad
                else:
                    wl, bl = leaf(d["weight"][b:b + w]), leaf(d["bias"][b:b + w])
                    got = gpd.vocab_linear_loss(xl, wl, d["labels"], bias=bl, vocab_slice=sl,
                                                grad_hidden=mode, **opts)
                    got.loss.backward()
                    gx, gw, gb = xl.grad, wl.grad, bl.grad
                    gw_want, gb_want = wt.grad[b:b + w], bs.grad[b:b + w]
                    if mode == "partial":  # the caller's sum of the partials
                        parts = [torch.empty_like(gx) for _ in range(world)]
                        dist.all_gather(parts, gx.contiguous())
                        gx = sum(p.to(torch.float64) for p in parts)
                tag = f"hidden/{mode}/{name}/{oname}"
                c.outputs(tag, got, want, tol)
                # grad_hidden: K partials of the input dtype summed (one more
                # rounding each for bf16/fp16 inputs: K units of the dtype).
                c.close(f"{tag}/grad_hidden", gx, x.grad, tol * (1 if dtype == torch.float64
                                                                 else world))
                c.close(f"{tag}/grad_weight", gw, gw_want, tol)
                c.close(f"{tag}/grad_bias", gb, gb_want, tol)
                if mode in ("all_reduce", "rank_order"):
                    c.share(f"{tag}/grad_hidden", gx)
        wl = d["weight"][b:b + w]
        bl = d["bias"][b:b + w]
        for avg in (False, True):
            got = gpd.vocab_linear_logps(d["hidden"], wl, d["labels"], bias=bl, vocab_slice=sl,
                                         average_logps=avg)
            want = gp.fused_linear_logps(d["hidden"], d["weight"], d["labels"], bias=d["bias"],
                                         average_logps=avg)
            c.close(f"linear_logps/{name}/avg={avg}", got, want, tol)
            c.share(f"linear_logps/{name}/avg={avg}", got)
        for mode in ("all_reduce", "rank_order"):
            x, wt, bs = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
            want, want_h = gp.linear_token_logps(x, wt, d["labels"], bias=bs, softcap=2.5,
                                                 return_entropy=True)
            (want * d["up"]).sum().backward()
            xl, wl2, bl2 = leaf(d["hidden"]), leaf(wl), leaf(bl)
            got, got_h = gpd.vocab_linear_token_logps(xl, wl2, d["labels"], bias=bl2,
                                                      vocab_slice=sl, grad_hidden=mode,
                                                      softcap=2.5, return_entropy=True,
                                                      chunk_bytes=4 * 8 * w)  # 4 rows a chunk
            (got * d["up"]).sum().backward()
            tag = f"linear_token_logps/{mode}/{name}"
            c.close(f"{tag}/logps", got, want, tol)
            c.close(f"{tag}/entropy", got_h, want_h, tol)
            c.close(f"{tag}/grad_hidden", xl.grad, x.grad,
                    tol * (1 if dtype == torch.float64 else world))
            c.close(f"{tag}/grad_weight", wl2.grad, wt.grad[b:b + w], tol)
            c.close(f"{tag}/grad_bias", bl2.grad, bs.grad[b:b + w], tol)
            c.share(tag, dict(logps=got, entropy=got_h, grad_hidden=xl.grad))
    # DTensor weight, per-token (the head TRL would call with a sharded lm_head)
    d = inputs(4, torch.float64)
    x, wt = leaf(d["hidden"]), leaf(d["weight"])
    want = gp.linear_token_logps(x, wt, d["labels"])
    (want * d["up"]).sum().backward()
    xl = leaf(d["hidden"])
    wd = distribute_tensor(d["weight"], mesh, [Shard(0)]).requires_grad_(True)
    got = gpd.vocab_linear_token_logps(xl, wd, d["labels"])
    (got * d["up"]).sum().backward()
    c.close("linear_token_logps/dtensor/logps", got, want, 1e-12)
    c.close("linear_token_logps/dtensor/grad_hidden", xl.grad, x.grad, 1e-12)
    c.close("linear_token_logps/dtensor/grad_weight", wd.grad.full_tensor(), wt.grad, 1e-12)


# ---- TRL's per-token statistics (outputs=): entropy, log_sum_sq_probs,
# mean_logits, is_top1, against the one-process token_logps / linear_token_logps

STATS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
# Ties of the maximum across the slice boundaries of every K (columns 0 | 10:
# the first and the last slice for K >= 2; 3 | 4: the width-1 slice of K = 4
# against the next, K = 3's first slice against its width-1 slice): the
# label on the later column is not top-1, on the earlier one it is.
TIES = [((0, 1), (0, 10), 10, False), ((1, 1), (0, 10), 0, True),
        ((2, 2), (3, 4), 4, False), ((2, 3), (3, 4), 3, True),
        ((3, 1), (5, 9), 9, False), ((4, 2), (1, 2), 1, True)]


def stats_inputs(seed):
    """inputs() in float64 with the TIES planted in the logits (a maximum of
    10 > every other logit), the width-1 slice's column the strict maximum
    of row (0, 2) (its label), and the logits also as hidden states with an
    identity weight (hidden·I is exact: the same logits, so the same ties)."""
    d = inputs(seed, torch.float64)
    z, y = d["logits"], d["labels"]
    for (i, t), cols, label, _ in TIES:
        z[i, t, list(cols)] = 10.0
        y[i, t] = label
    z[0, 2, 1], y[0, 2] = 12.0, 1
    return d


def check_token_stats(c, rank, world, mesh):
    b, w, sl = rank_slice(rank, world)
    d = stats_inputs(12)
    z, y = d["logits"], d["labels"]
    ident = torch.eye(V, dtype=torch.float64)
    for tr in (dict(), dict(softcap=2.0, logit_scale=1.5, temperature=0.7)):
        tag = f"stats/{sorted(tr)}"
        # Upstreams on the log-probs and on the entropy (both differentiable).
        up_h = d["up"].flip(0)
        zf = leaf(z)
        want = gp.token_logps(zf, y, outputs=STATS, **tr)
        ((want.log_probs * d["up"]).sum() + (want.entropy * up_h).sum()).backward()
        top = [bool(want.is_top1[i, t]) for (i, t), _, _, _ in TIES]
        if top != [e for _, _, _, e in TIES] or not bool(want.is_top1[0, 2]):
            c.failures.append(f"{tag}: the planted ties are not what the one-process op "
                              f"says ({top})")
        zl = leaf(z[..., b:b + w])
        got = gpd.vocab_parallel_token_logps(zl, y, vocab_slice=sl, outputs=STATS, **tr,
                                             chunk_bytes=3 * 8 * w)  # 3 rows a chunk
        ((got.log_probs * d["up"]).sum() + (got.entropy * up_h).sum()).backward()
        c.close(f"{tag}/logits/grad", zl.grad, zf.grad[..., b:b + w], 1e-12)
        # From hidden states: identity weight (the same logits), and the
        # dyadic hidden states, weight and bias of inputs().
        wid = ident[b:b + w]
        got_id = gpd.vocab_linear_token_logps(z, wid, y, vocab_slice=sl, outputs=STATS, **tr,
                                              chunk_bytes=4 * 8 * w)
        xf, wf, bf = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
        want_lin = gp.linear_token_logps(xf, wf, y, bias=bf, outputs=STATS, **tr)
        ((want_lin.log_probs * d["up"]).sum() + (want_lin.entropy * up_h).sum()).backward()
        xl, wl, bl = leaf(d["hidden"]), leaf(d["weight"][b:b + w]), leaf(d["bias"][b:b + w])
        got_lin = gpd.vocab_linear_token_logps(xl, wl, y, bias=bl, vocab_slice=sl,
                                               outputs=STATS, **tr, chunk_bytes=4 * 8 * w)
        ((got_lin.log_probs * d["up"]).sum() + (got_lin.entropy * up_h).sum()).backward()
        c.close(f"{tag}/linear/grad_hidden", xl.grad, xf.grad, 1e-12)
        c.close(f"{tag}/linear/grad_weight", wl.grad, wf.grad[b:b + w], 1e-12)
        c.close(f"{tag}/linear/grad_bias", bl.grad, bf.grad[b:b + w], 1e-12)
        c.share(f"{tag}/linear/grad_hidden", xl.grad)
        for kind, g, wnt in (("logits", got, want), ("identity", got_id, want),
                             ("linear", got_lin, want_lin)):
            if type(g) is not gp.TokenStats:
                c.failures.append(f"{tag}/{kind}: returned {type(g).__name__}, not TokenStats")
                continue
            for name in STATS:
                a, e = getattr(g, name), getattr(wnt, name)
                if name == "is_top1":
                    if a.dtype != torch.bool or not torch.equal(a, e):
                        c.failures.append(f"{tag}/{kind}/is_top1: {a.tolist()} != {e.tolist()}")
                else:
                    c.close(f"{tag}/{kind}/{name}", a, e, 1e-12)
                c.share(f"{tag}/{kind}/{name}", a)
    # Narrower logits (the ties are exact in every dtype: 10 and 12 are):
    # the statistics are computed in double from the same values by both
    # runs and rounded once to float32, so one unit (ULP[float32], whose
    # margin also covers the different order of the sums).
    for dtype in (torch.float32, torch.bfloat16):
        tr = dict(softcap=2.0, logit_scale=1.5, temperature=0.7)
        zn = z.to(dtype)
        want = gp.token_logps(zn, y, outputs=STATS, **tr)
        got = gpd.vocab_parallel_token_logps(zn[..., b:b + w], y, vocab_slice=sl, outputs=STATS,
                                             **tr)
        tag = f"stats/{str(dtype).split('.')[-1]}"
        for name in STATS:
            a, e = getattr(got, name), getattr(want, name)
            if name == "is_top1":
                if not torch.equal(a, e):
                    c.failures.append(f"{tag}/is_top1: {a.tolist()} != {e.tolist()}")
            elif a.dtype != e.dtype:
                c.failures.append(f"{tag}/{name}: dtype {a.dtype} != {e.dtype}")
            else:
                c.close(f"{tag}/{name}", a, e, ULP[torch.float32])
            c.share(f"{tag}/{name}", a)
    # Only what is asked for; return_entropy keeps its form beside outputs=.
    zl = z[..., b:b + w]
    got = gpd.vocab_parallel_token_logps(zl, y, vocab_slice=sl, outputs=("mean_logits",))
    if got.entropy is not None or got.is_top1 is not None or got.mean_logits is None:
        c.failures.append("stats/only: fields not asked for were computed")
    lp, h = gpd.vocab_parallel_token_logps(zl, y, vocab_slice=sl, return_entropy=True)
    c.close("stats/return_entropy", h, gp.token_logps(z, y, outputs=("entropy",)).entropy,
            1e-12)


# ---- TRL's fused LM head on a tiny model whose lm_head is vocab-parallel
# (ColwiseParallel: weight and bias DTensors Shard(0)), against the
# one-process geopref head on the same float64 model.

def tp_models(vocab, mesh, bias=True, seed=20261207):
    """(one-process model, its tensor-parallel copy) of tests/tiny_lm.py's
    tiny Llama in float64, the lm_head given a bias (ColwiseParallel shards
    both); both heads added by geopref_torch.trl.add_fused_lm_head."""
    import copy
    import tiny_lm
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module
    model = tiny_lm.tiny_llama(vocab, seed=seed).double()
    if bias:
        lin = torch.nn.Linear(model.config.hidden_size, vocab, bias=True, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(model.lm_head.weight)
            lin.bias.copy_(torch.linspace(-0.5, 0.5, vocab, dtype=torch.float64))
        model.lm_head = lin
    tp = copy.deepcopy(model)
    parallelize_module(tp, mesh, {"lm_head": ColwiseParallel()})
    return model, tp


def check_trl_head(c, rank, world, mesh):
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
    from trl.trainer import utils as trl_utils
    import geopref_torch.trl as gtrl
    vocab = 13
    g = torch.Generator().manual_seed(13)
    ids = torch.randint(0, vocab, (3, 7), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    labels[1, 5:] = -100
    cases = (("shard", dict(temperature=1.0)),
             ("shard", dict(temperature=0.7, cast_lm_head_to_fp32=True)),
             ("replicated_bias", dict(temperature=1.3)))
    for bias_kind, kw in cases:
        one, tp = tp_models(vocab, mesh)
        w = tp.lm_head.weight
        if not (isinstance(w, DTensor) and w.placements == (Shard(0),)
                and tp.lm_head.bias.placements == (Shard(0),)):
            c.failures.append(f"trl_head: ColwiseParallel gave {w.placements}")
            return
        if bias_kind == "replicated_bias":
            tp.lm_head.bias = torch.nn.Parameter(distribute_tensor(
                one.lm_head.bias.detach().clone(), mesh, [Replicate()]))
        gtrl.add_fused_lm_head(one, outputs=STATS, **kw)
        gtrl.add_fused_lm_head(tp, outputs=STATS, **kw)
        models = [one, tp]
        if bias_kind == "shard" and not kw.get("cast_lm_head_to_fp32"):
            # TRL 1.16.0's own head on the same sharded model: it gathers the
            # weight (full_tensor()) and folds in float32 (trl/kernels).
            _, trl_tp = tp_models(vocab, mesh)
            trl_utils.add_fused_lm_head(trl_tp, outputs=STATS, **kw)
            models.append(trl_tp)
        outs = []
        for m in models:
            out = m(input_ids=ids, labels=labels, fused_lm_head=True)
            # Upstreams on the loss and on the entropy (GRPO's entropy bonus).
            (out.loss + 0.3 * (out.entropy * torch.linspace(0.5, 1.5, out.entropy.shape[1],
                                                            dtype=out.entropy.dtype)).sum()
             ).backward()
            outs.append(out)
        want, got = outs[:2]
        tag = f"trl_head/{bias_kind}/{sorted(kw)}"
        # float64 throughout: 1e-12 as above; the float32 head (the cast):
        # the same float32 inputs computed in double by both, the outputs
        # rounded once to float32 (one unit, ULP[float32] with its margin).
        tol = ULP[torch.float32] if kw.get("cast_lm_head_to_fp32") else 1e-12
        for name in STATS + ("loss", "label_mask"):
            a, e = getattr(got, name), getattr(want, name)
            if a is None or e is None or a.dtype != e.dtype:
                c.failures.append(f"{tag}/{name}: {a} vs {e}")
            elif a.dtype == torch.bool:
                if not torch.equal(a, e):
                    c.failures.append(f"{tag}/{name}: {a.tolist()} != {e.tolist()}")
            else:
                c.close(f"{tag}/{name}", a, e, tol)
            c.share(f"{tag}/{name}", a)
        for (k, p1), (_, p2) in zip(one.named_parameters(), tp.named_parameters()):
            if isinstance(p2, DTensor):  # the rank's rows of the one-process gradient
                c.close(f"{tag}/grad/{k}", p2.grad.to_local(), p1.grad[_rows(p2)], tol)
            else:
                c.close(f"{tag}/grad/{k}", p2.grad, p1.grad, tol)
                c.share(f"{tag}/grad/{k}", p2.grad)
        if len(models) == 3:
            # Against TRL's float32 folds: test_trl_head.py's tolerances
            # (outputs 1e-5; gradients 1e-4 relative to |want| + max|want|).
            trl_out = outs[2]
            for name in STATS + ("loss",):
                a, e = getattr(got, name), getattr(trl_out, name)
                if name == "is_top1":
                    if not torch.equal(a, e):
                        c.failures.append(f"{tag}/trl/{name}: {a.tolist()} != {e.tolist()}")
                else:
                    c.close(f"{tag}/trl/{name}", a, e, 1e-5)
            for (k, p1), (_, p2) in zip(models[2].named_parameters(), tp.named_parameters()):
                g1 = p1.grad.to_local() if isinstance(p1.grad, DTensor) else p1.grad
                g2 = p2.grad.to_local() if isinstance(p2.grad, DTensor) else p2.grad
                c.close(f"{tag}/trl/grad/{k}", g2, g1, 1e-4)


def check_trl_head_fallbacks(c, rank, world, mesh):
    """What the head does not run vocab-parallel: a plain bias beside a
    sharded weight raises ValueError (on every rank, before any collective);
    a weight on a 2-D mesh (FSDP2 + TP: its rows sharded over dp, whose
    ranks hold different hidden states, replicated over tp) is gathered, as
    TRL does, and gives the one-process head's outputs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    import geopref_torch.trl as gtrl
    vocab = 13
    ids = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(15))
    one, tp = tp_models(vocab, mesh)
    tp.lm_head.bias = torch.nn.Parameter(one.lm_head.bias.detach().clone())
    gtrl.add_fused_lm_head(tp)
    try:
        tp(input_ids=ids, labels=ids, fused_lm_head=True)
        c.failures.append("trl_head/fallback: a plain bias beside a sharded weight did not raise")
    except ValueError as e:
        if "bias" not in str(e):
            c.failures.append(f"trl_head/fallback: unclear error {e}")
    if world != 4:
        return
    mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    one, two = tp_models(vocab, mesh, bias=False)
    two.lm_head.weight = torch.nn.Parameter(distribute_tensor(
        one.lm_head.weight.detach().clone(), mesh2, [Shard(0), Replicate()]))
    ids = ids + rank // 2  # different rows on the two dp ranks (labels < V still)
    ids[ids >= vocab] = 0
    gtrl.add_fused_lm_head(one, outputs=STATS)
    gtrl.add_fused_lm_head(two, outputs=STATS)
    want = one(input_ids=ids, labels=ids, fused_lm_head=True)
    got = two(input_ids=ids, labels=ids, fused_lm_head=True)
    for name in ("log_probs", "entropy", "mean_logits"):
        c.close(f"trl_head/fallback/2d/{name}", getattr(got, name), getattr(want, name), 1e-12)


def _rows(p):
    """The global rows of a Shard(0) DTensor's local part."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return slice(offset[0], offset[0] + shape[0])


def check_trl_head_memory(c, rank, world, mesh):
    """The head's allocations on a rank, forward and backward: never the full
    lm_head weight (nor its gradient); the embedding frozen (its gradient
    would be a [V, H] buffer of the backbone's, not the head's)."""
    vocab = 4000
    import geopref_torch.trl as gtrl
    one, tp = tp_models(vocab, mesh, bias=False)
    g = torch.Generator().manual_seed(14)
    ids = torch.randint(0, vocab, (2, 6), generator=g)
    full_bytes = tp.lm_head.weight.numel() * 8          # [4000, 16] float64: 512 kB
    slice_bytes = tp.lm_head.weight.to_local().numel() * 8
    for m in (one, tp):
        m.model.embed_tokens.weight.requires_grad_(False)
        gtrl.add_fused_lm_head(m, outputs=STATS)

    def step(m):
        return lambda: m(input_ids=ids, labels=ids, fused_lm_head=True).loss.backward()

    step(tp)()  # warm: lazily built state of the backbone outside the probe
    _, largest = allocations(step(tp))
    c.timings["trl_memory/largest"] = largest
    # The rest of the step is far smaller: the slice's logits [10, V_r] and
    # the backbone's [12, 32] activations.
    if largest > slice_bytes:
        c.failures.append(f"trl_memory: an allocation of {largest} bytes > the slice's "
                          f"{slice_bytes} (the full weight: {full_bytes})")
    # The one-process head allocates the whole weight's gradient: the probe sees it.
    _, largest = allocations(step(one))
    if largest < full_bytes:
        c.failures.append(f"trl_memory: the probe missed the unsharded gradient ({largest})")


# ---- reduction "none": a per-pair upstream gradient (the step runs again in the backward)

def check_reduction_none(c, rank, world):
    b, w, sl = rank_slice(rank, world)
    d = inputs(11, torch.float64)
    up = torch.linspace(-1.0, 2.0, P, dtype=torch.float64)
    opts = dict(loss_type="gdpo", beta=0.3, ref_logps=d["ref"], soft_labels=d["soft"],
                reduction="none")
    z = leaf(d["logits"])
    want = gp.dpo_loss(z, d["labels"], **opts)
    (want.loss * up).sum().backward()
    zl = leaf(d["logits"][..., b:b + w])
    got = gpd.vocab_parallel_loss(zl, d["labels"], vocab_slice=sl, **opts)
    (got.loss * up).sum().backward()
    c.close("none/logits/loss", got.loss, want.loss, 1e-12)
    c.close("none/logits/grad", zl.grad, z.grad[..., b:b + w], 1e-12)
    x, wt = leaf(d["hidden"]), leaf(d["weight"])
    want = gp.fused_linear_preference_loss(x, wt, d["labels"], **opts)
    (want.loss * up).sum().backward()
    xl, wl = leaf(d["hidden"]), leaf(d["weight"][b:b + w])
    got = gpd.vocab_linear_loss(xl, wl, d["labels"], vocab_slice=sl, **opts)
    (got.loss * up).sum().backward()
    c.close("none/hidden/loss", got.loss, want.loss, 1e-12)
    c.close("none/hidden/grad_hidden", xl.grad, x.grad, 1e-12)
    c.close("none/hidden/grad_weight", wl.grad, wt.grad[b:b + w], 1e-12)
    c.share("none", dict(loss=got.loss, grad_hidden=xl.grad))


# ---- data parallel: each rank a share of the pairs, the model replicated

def check_data_parallel(c, rank, world):
    n = 2 * world + 1
    d = inputs(5, torch.float64, n_pairs=n)
    weights = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    weights[1] = 0.0                       # a zero-weight pair (left out of the sft sums)
    opts = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.7], beta=0.2)
    x, wt, bs = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
    want = gp.fused_linear_preference_loss(x, wt, d["labels"], bias=bs, ref_logps=d["ref"],
                                           weights=weights, **opts)
    want.loss.backward()
    share = torch.arange(n).tensor_split(world)[rank]      # this rank's pairs (uneven)
    seqs = torch.cat([share, share + n])                   # chosen, then rejected
    xl, wl, bl = leaf(d["hidden"][seqs]), leaf(d["weight"]), leaf(d["bias"])
    norms = gpd.data_parallel_normalizers(d["labels"][seqs], weights=weights[share])
    got = gp.fused_linear_preference_loss(xl, wl, d["labels"][seqs], bias=bl,
                                          ref_logps=d["ref"][seqs], weights=weights[share],
                                          **norms, **opts)
    got.loss.backward()
    dist.all_reduce(wl.grad)
    dist.all_reduce(bl.grad)
    loss, metrics = gpd.global_metrics(got)
    c.close("dp/grad_weight", wl.grad, wt.grad, 1e-12)
    c.close("dp/grad_bias", bl.grad, bs.grad, 1e-12)
    c.close("dp/grad_hidden", xl.grad, x.grad[seqs], 1e-12)
    c.close("dp/loss", loss, want.loss, 1e-12)
    for k in want.metrics:
        c.close(f"dp/metrics/{k}", metrics[k], want.metrics[k], 1e-12)
    c.share("dp", dict(loss=loss, grad_weight=wl.grad))
    if norms["normalizer"] != n:
        c.failures.append(f"dp/normalizer {norms['normalizer']} != {n}")
    # The packed layout ([N] labels + offsets) and explicit pairs give the same sums.
    lab = d["labels"][seqs]
    m = share.shape[0]
    packed = gpd.data_parallel_normalizers(
        lab.reshape(-1), torch.arange(2 * m + 1) * T, weights=weights[share],
        pairs=torch.stack([torch.arange(m), torch.arange(m) + m], 1))
    if packed != norms:
        c.failures.append(f"dp/packed normalisers {packed} != {norms}")
    # DDP's all-reduce averages: gradient_average=True makes the mean the one-process gradient.
    norms = gpd.data_parallel_normalizers(d["labels"][seqs], weights=weights[share],
                                          gradient_average=True)
    wl.grad = None
    gp.fused_linear_preference_loss(xl.detach(), wl, d["labels"][seqs], bias=bl.detach(),
                                    ref_logps=d["ref"][seqs], weights=weights[share],
                                    **norms, **opts).loss.backward()
    dist.all_reduce(wl.grad)
    c.close("dp/gradient_average/grad_weight", wl.grad / world, wt.grad, 1e-12)


# ---- data parallel x vocab parallel: a (dp, tp) = (2, 2) mesh of the 4 ranks

def check_2d(c, rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    dp, tp = mesh["dp"].get_local_rank(), mesh["tp"].get_local_rank()
    n = 5
    d = inputs(10, torch.float64, n_pairs=n)
    opts = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.7], beta=0.2)
    x, wt, bs = leaf(d["hidden"]), leaf(d["weight"]), leaf(d["bias"])
    want = gp.fused_linear_preference_loss(x, wt, d["labels"], bias=bs, ref_logps=d["ref"],
                                           **opts)
    want.loss.backward()
    share = torch.arange(n).tensor_split(2)[dp]
    seqs = torch.cat([share, share + n])
    norms = gpd.data_parallel_normalizers(d["labels"][seqs], group=mesh["dp"])
    xl = leaf(d["hidden"][seqs])
    wd = distribute_tensor(d["weight"], mesh["tp"], [Shard(0)]).requires_grad_(True)
    bd = distribute_tensor(d["bias"], mesh["tp"], [Shard(0)]).requires_grad_(True)
    out = gpd.vocab_linear_loss(xl, wd, d["labels"][seqs], bias=bd, ref_logps=d["ref"][seqs],
                                **norms, **opts)
    out.loss.backward()
    gw, gb = wd.grad.to_local(), bd.grad.to_local()
    dist.all_reduce(gw, group=mesh["dp"].get_group())
    dist.all_reduce(gb, group=mesh["dp"].get_group())
    loss, metrics = gpd.global_metrics(out, group=mesh["dp"])
    begin = 0 if tp == 0 else V - gw.shape[0]  # two tp ranks: the first slice, then the rest
    c.close("2d/grad_weight", gw, wt.grad[begin:begin + gw.shape[0]], 1e-12)
    c.close("2d/grad_bias", gb, bs.grad[begin:begin + gb.shape[0]], 1e-12)
    c.close("2d/grad_hidden", xl.grad, x.grad[seqs], 1e-12)
    c.close("2d/loss", loss, want.loss, 1e-12)
    for k in want.metrics:
        c.close(f"2d/metrics/{k}", metrics[k], want.metrics[k], 1e-12)
    c.share("2d", dict(loss=loss))


# ---- a failing rank: every rank raises RankFailed, promptly, with the same message

def expect_rank_failed(c, what, call):
    start = time.monotonic()
    try:
        call()
    except gpd.RankFailed as e:
        c.timings[what] = time.monotonic() - start
        c.share(f"failed/{what}", torch.tensor(list(str(e).encode())))
        return e
    except Exception as e:  # noqa: BLE001
        c.failures.append(f"{what}: raised {type(e).__name__}: {e} instead of RankFailed")
        return None
    c.failures.append(f"{what}: no exception")
    return None


def check_failures(c, rank, world):
    b, w, sl = rank_slice(rank, world)
    d = inputs(6, torch.float64)
    last = world - 1
    bad = d["labels"].clone()
    if rank == last:
        bad[2, 3] = V                         # out of range on one rank only
    e = expect_rank_failed(c, "bad_label/logits", lambda: gpd.vocab_parallel_loss(
        leaf(d["logits"][..., b:b + w]), bad, vocab_slice=sl))
    if e is not None:
        if e.ranks != (last,):
            c.failures.append(f"bad_label/logits: ranks {e.ranks} != ({last},)")
        if rank == last and not isinstance(e.__cause__, IndexError):
            c.failures.append(f"bad_label/logits: cause {e.__cause__!r} is not an IndexError")
    expect_rank_failed(c, "bad_label/hidden", lambda: gpd.vocab_linear_loss(
        leaf(d["hidden"]), leaf(d["weight"][b:b + w]), bad, vocab_slice=sl))
    expect_rank_failed(c, "bad_label/token", lambda: gpd.vocab_linear_token_logps(
        leaf(d["hidden"]), leaf(d["weight"][b:b + w]), bad, vocab_slice=sl))
    # A wrong slice on the last rank: its begin one column off (a gap or an
    # overlap the op cannot see locally; with K = 1 the op refuses it).
    wrong = VocabSlice(b + 1 if (rank == last and b + 1 + w <= V) else b - (rank == last), V,
                       rank, world)
    e = expect_rank_failed(c, "wrong_slice", lambda: gpd.vocab_parallel_loss(
        leaf(d["logits"][..., b:b + w]), d["labels"], vocab_slice=wrong))
    if e is not None and e.ranks != (last,):
        c.failures.append(f"wrong_slice: ranks {e.ranks} != ({last},)")
    # A bad argument on one rank (an unknown loss type), and the data-parallel exchange.
    lt = "nope" if rank == 0 else "sigmoid"
    expect_rank_failed(c, "bad_option", lambda: gpd.vocab_parallel_loss(
        d["logits"][..., b:b + w], d["labels"], vocab_slice=sl, loss_type=lt))
    pairs = torch.tensor([[9, 0]]) if rank == last else torch.tensor([[0, 3], [1, 4]])
    expect_rank_failed(c, "dp_normalizers", lambda: gpd.data_parallel_normalizers(
        d["labels"], pairs=pairs))                    # 9: no such sequence, on one rank
    # The group still works: nothing was left unmatched.
    got = gpd.vocab_parallel_logps(d["logits"][..., b:b + w], d["labels"], vocab_slice=sl)
    c.close("after_failures/logps", got, gp.sequence_logps(d["logits"], d["labels"]), 1e-12)


# ---- a tiny model trained with a vocab-sharded lm_head

class Tiny(torch.nn.Module):
    def __init__(self, vocab, hidden):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, hidden, dtype=torch.float64)
        self.body = torch.nn.Linear(hidden, hidden, dtype=torch.float64)

    def forward(self, tokens):
        return torch.tanh(self.body(self.emb(tokens)))


def check_training(c, rank, world, mesh):
    from torch.distributed.tensor import Shard, distribute_tensor
    torch.manual_seed(7)
    vocab, hidden, steps = 23, 6, 4
    model = Tiny(vocab, hidden)
    head = torch.randn(vocab, hidden, dtype=torch.float64) * 0.5
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(0, vocab, (2 * P, T + 1), generator=g)
    labels = tokens[:, 1:].clone()
    labels[:, :2] = -100
    ref = torch.randn(2 * P, generator=g, dtype=torch.float64) - 8
    opts = dict(loss_type="sigmoid", beta=0.5, ref_logps=ref)

    def train(body, w, loss_fn):
        params = list(body.parameters()) + [w]
        opt = torch.optim.SGD(params, lr=0.3, momentum=0.9)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(body(tokens[:, :-1]), w).backward()
            opt.step()

    one = Tiny(vocab, hidden)
    one.load_state_dict(model.state_dict())
    w_one = torch.nn.Parameter(head.clone())
    train(one, w_one, lambda hs, w: gp.fused_linear_preference_loss(hs, w, labels, **opts).loss)
    sharded = Tiny(vocab, hidden)
    sharded.load_state_dict(model.state_dict())
    w_dt = torch.nn.Parameter(distribute_tensor(head.clone(), mesh, [Shard(0)]))
    train(sharded, w_dt, lambda hs, w: gpd.vocab_linear_loss(hs, w, labels, **opts).loss)
    # SGD with momentum is linear in the gradients: the 1e-16 differences of
    # the sharded gradients stay at that size over 4 steps.
    for (k, p1), p2 in zip(one.named_parameters(), sharded.parameters()):
        c.close(f"train/{k}", p2, p1, 1e-12)
        c.share(f"train/{k}", p2)
    c.close("train/lm_head", w_dt.full_tensor(), w_one, 1e-12)
    if (w_one - head).abs().max() < 1e-3:
        c.failures.append("train: the lm_head did not move")

    # The same run under DDP: each rank a share of the pairs, the normalisers
    # with gradient_average=True (DDP's all-reduce averages).
    class WithHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tiny = Tiny(vocab, hidden)
            self.tiny.load_state_dict(model.state_dict())
            self.head = torch.nn.Parameter(head.clone())

        def forward(self, tok, lab, ref_s, norms):
            return gp.fused_linear_preference_loss(self.tiny(tok), self.head, lab, beta=0.5,
                                                   loss_type="sigmoid", ref_logps=ref_s,
                                                   **norms).loss

    share = torch.arange(P).tensor_split(world)[rank]
    seqs = torch.cat([share, share + P])
    ddp = torch.nn.parallel.DistributedDataParallel(WithHead())
    norms = gpd.data_parallel_normalizers(labels[seqs], gradient_average=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.3, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        ddp(tokens[seqs, :-1], labels[seqs], ref[seqs], norms).backward()
        opt.step()
    for (k, p1), p2 in zip(one.named_parameters(), ddp.module.tiny.parameters()):
        c.close(f"train/ddp/{k}", p2, p1, 1e-12)
    c.close("train/ddp/lm_head", ddp.module.head, w_one, 1e-12)


# ---- memory: the op's allocations on a rank hold its slice, never the weight

def allocations(fn):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]"))
    live = peak = largest = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
        largest = max(largest, n)
    return peak, largest


def check_memory(c, rank, world):
    vocab, hidden, rows = 4000, 256, 8
    width = vocab // world if rank < world - 1 else vocab - (vocab // world) * (world - 1)
    sl = gp.even_slice(vocab, rank, world)[0]
    g = torch.Generator().manual_seed(9)
    x = torch.randn(rows, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    w_full = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    w = w_full[sl.begin:sl.begin + width].clone().requires_grad_(True)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    offsets = torch.tensor([0, 2, 4, 6, 8])
    full_bytes, slice_bytes = w_full.numel() * 8, w.numel() * 8

    def step():
        gpd.vocab_linear_loss(x, w, labels, offsets, vocab_slice=sl).loss.backward()

    def token_step():
        gpd.vocab_linear_token_logps(x, w, labels, vocab_slice=sl).sum().backward()

    for what, fn in (("loss", step), ("token_logps", token_step)):
        x.grad = w.grad = None
        peak, largest = allocations(fn)
        c.timings[f"memory/{what}/peak"] = peak
        c.timings[f"memory/{what}/largest"] = largest
        # The largest buffer is the slice's gradient (or its logits [N, V_r]
        # in double, smaller here); everything at once stays below the weight
        # for K >= 3, and below slice + gradient + logits + O(N·H) always.
        if largest > slice_bytes:
            c.failures.append(f"memory/{what}: an allocation of {largest} bytes > the slice's "
                              f"{slice_bytes}")
        bound = 2 * slice_bytes + 3 * rows * width * 8 + 64 * rows * hidden * 8
        if peak > bound:
            c.failures.append(f"memory/{what}: peak {peak} bytes > {bound}")
        if world >= 3 and peak >= full_bytes:
            c.failures.append(f"memory/{what}: peak {peak} bytes >= the full weight {full_bytes}")
    # The unsharded head allocates the whole weight's gradient: the probe sees it.
    wf = w_full.clone().requires_grad_(True)
    _, largest = allocations(lambda: gp.fused_linear_preference_loss(
        x, wf, labels, offsets).loss.backward())
    if largest < full_bytes:
        c.failures.append(f"memory: the probe missed the unsharded gradient ({largest} bytes)")


def main(rank, world, tmp):
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the loopback: no network needed
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    c = Check()
    for name, fn in (("logits", lambda: check_logits(c, rank, world, mesh)),
                     ("hidden", lambda: check_hidden(c, rank, world, mesh)),
                     ("reduction_none", lambda: check_reduction_none(c, rank, world)),
                     ("data_parallel", lambda: check_data_parallel(c, rank, world)),
                     ("2d", lambda: check_2d(c, rank, world) if world == 4 else None),
                     ("failures", lambda: check_failures(c, rank, world)),
                     ("training", lambda: check_training(c, rank, world, mesh)),
                     ("memory", lambda: check_memory(c, rank, world)),
                     ("stats", lambda: check_token_stats(c, rank, world, mesh)),
                     ("trl_head", lambda: check_trl_head(c, rank, world, mesh)),
                     ("trl_head_fallbacks",
                      lambda: check_trl_head_fallbacks(c, rank, world, mesh)),
                     ("trl_memory", lambda: check_trl_head_memory(c, rank, world, mesh))):
        start = time.monotonic()
        try:
            fn()
        except Exception:  # noqa: BLE001 - reported to the parent
            c.failures.append(f"{name}: {traceback.format_exc()}")
        c.timings[name] = time.monotonic() - start
    torch.save(dict(failures=c.failures, shared=c.shared, timings=c.timings),
               os.path.join(tmp, f"rank{rank}.pt"))
    dist.destroy_process_group()
