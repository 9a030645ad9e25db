"""geopref over torch.distributed: a vocab-sharded head without gathering it,
and data-parallel normalisers (docs/distributed.md §4).

Vocab parallelism: each rank of a process group (or of a 1-D DeviceMesh)
holds a slice of the vocabulary, either of the logits (the output of a
column-parallel lm_head) or of the lm_head's weight and bias, and the same
labels (and, for the weight, the same hidden states). Every function here
runs one step of the group:

    1. locally: the rank's records, one per row (vocab_parallel_stats /
       vocab_linear_stats: the slice's log-sum-exp state and, on the rank
       whose slice holds the label, the label's logit);
    2. one small all-gather of a fixed-size header (the rank's status, its
       slice and sizes), then one all-gather of the records [N, 4] -> [K, N, 4];
    3. locally: the combine in rank order (the same bits on every rank) and
       the loss, the log-probs and the metrics of the whole vocabulary; in
       the backward the gradient of the rank's own slice only.

    import geopref_torch.distributed as gpd
    # logits: this rank's [B, T, V_r] (a plain tensor with vocab_slice, or a
    # DTensor sharded on the last dimension); labels: [B, T], the same on every rank
    out = gpd.vocab_parallel_loss(logits, labels, vocab_slice=gp.even_slice(V, rank, K)[0],
                                  group=tp_group, loss_type="sigmoid", ref_logps=ref)
    # hidden: [B, T, H] (the same on every rank); weight: this rank's lm_head rows
    out = gpd.vocab_linear_loss(hidden, weight_dtensor, labels, loss_type="gdpo", soft_labels=p)
    out.loss.backward()   # weight.grad: the slice; hidden.grad: summed over the group

The hidden states' gradient (`grad_hidden=`): every rank's backward
produces only its partial G_r·W_r; the whole gradient is their sum.
  "all_reduce" (default): summed by an all-reduce in the backward (the
    backward of a copy to the tensor-parallel region, as Megatron's column-
    parallel linear layers do); hidden.grad is the same on every rank.
  "rank_order": all-gather the K partials and add them in rank order: the
    sum independent of the collective's reduction algorithm, K·N·H elements
    moved instead of an all-reduce's 2·N·H·(K-1)/K.
  "partial": no collective: hidden.grad is this rank's partial, for a caller
    whose sequence-parallel region reduce-scatters it (or who sums it itself).

A failing rank does not hang the group: the local part (arguments, the
slice, the labels, the records) runs before any collective, and its outcome
travels in the header; when any rank failed, or the slices do not tile
[0, V) in rank order, every rank raises the same RankFailed (the failing
rank's own exception chained as __cause__), and no collective is left
unmatched. Errors of the step after the exchange (e.g. ref_logps of the
wrong shape) come from the same arguments on every rank, so every rank
raises them too: the replicated arguments (labels, offsets, pairs, soft
labels, reference log-probs, weights) must be the same on every rank.
"""
import inspect
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from . import api
from ._ops import LOGIT_TRANSFORM_FIELDS, ops
from .api import (DEFAULT_CHUNK_BYTES, LOGIT_TRANSFORM_KEYWORDS, METRIC_NAMES, METRIC_SUM_NAMES,
                  OPTIONS_DEFAULTS, OPTIONS_KEYWORDS, DPOOutput, VocabSlice, metrics_from_sums)

try:  # DTensor and DeviceMesh (PyTorch >= 2.4)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - an old PyTorch: plain tensors only
    DeviceMesh = DTensor = Replicate = Shard = None
    compute_local_shape_and_global_offset = None

__all__ = ["RankFailed", "GRAD_HIDDEN_MODES", "vocab_parallel_loss", "vocab_parallel_logps",
           "vocab_parallel_token_logps", "vocab_linear_loss", "vocab_linear_logps",
           "vocab_linear_token_logps", "data_parallel_normalizers", "global_metrics"]

GRAD_HIDDEN_MODES = ("all_reduce", "rank_order", "partial")


class RankFailed(RuntimeError):
    """Raised on every rank of the group, with the same message, when a
    rank's local part failed (a bad label, a wrong slice, a bad argument)
    or the ranks' slices and sizes do not fit together. `ranks`: the ranks
    that failed (or whose layout is wrong). On a failing rank the original
    exception is the __cause__."""

    def __init__(self, message: str, ranks: Sequence[int] = ()):
        super().__init__(message)
        self.ranks = tuple(ranks)


# ---- The group

class _Group(NamedTuple):
    pg: object            # the process group
    rank: int             # this rank in it
    size: int             # K
    device: torch.device  # where the collectives' buffers live


def _is_dtensor(t):
    return DTensor is not None and isinstance(t, DTensor)


def _group(group, tensors) -> _Group:
    """A process group, a 1-D DeviceMesh, or None: the mesh of the first
    DTensor among `tensors`, else the default group."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("geopref.distributed: torch.distributed is not initialised "
                           "(init_process_group first)")
    mesh = None
    if DeviceMesh is not None and isinstance(group, DeviceMesh):
        mesh = group
    elif group is None:
        mesh = next((t.device_mesh for t in tensors if _is_dtensor(t)), None)
    if mesh is not None:
        if mesh.ndim != 1:
            raise ValueError(f"geopref.distributed: a 1-D DeviceMesh (the vocab-parallel "
                             f"dimension, e.g. mesh['tp']), got {mesh.ndim} dimensions")
        pg = mesh.get_group()
    else:
        pg = group if group is not None else dist.group.WORLD
    backend = str(dist.get_backend(pg)).lower()
    device = (torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend
              else torch.device("cpu"))
    return _Group(pg, dist.get_rank(pg), dist.get_world_size(pg), device)


def _sharded(x, dim, vocab_slice, grp, what):
    """(the local tensor, its VocabSlice): a DTensor sharded on `dim` over a
    1-D mesh (its offset from the mesh), or a plain tensor with vocab_slice."""
    if _is_dtensor(x):
        pl = x.placements
        d = dim % x.dim()
        if len(pl) != 1 or not isinstance(pl[0], Shard) or pl[0].dim % x.dim() != d:
            raise ValueError(f"geopref.distributed: {what} as a DTensor must be sharded on its "
                             f"vocabulary dimension ({d}) over a 1-D mesh, got {tuple(pl)}")
        if (dist.get_process_group_ranks(x.device_mesh.get_group())
                != dist.get_process_group_ranks(grp.pg)):
            raise ValueError(f"geopref.distributed: the DTensor {what}'s mesh is not the group "
                             f"given (group=): pass its mesh, or leave group=None")
        _, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, pl)
        sl = VocabSlice(int(offset[d]), int(x.shape[d]), grp.rank, grp.size)
        if vocab_slice is not None and VocabSlice(*vocab_slice) != sl:
            raise ValueError(f"geopref.distributed: vocab_slice {tuple(vocab_slice)} disagrees "
                             f"with the DTensor {what}'s shard {tuple(sl)}")
        return x.to_local(), sl
    if vocab_slice is None:
        raise ValueError(f"geopref.distributed: a plain-tensor {what} slice needs vocab_slice= "
                         "(e.g. geopref_torch.even_slice(V, rank, K)[0]), or pass a DTensor")
    return x, VocabSlice(*(int(v) for v in vocab_slice))


def _replicated(x, what):
    """The local tensor of an input that every rank holds whole."""
    if not _is_dtensor(x):
        return x
    if not all(isinstance(p, Replicate) for p in x.placements):
        raise ValueError(f"geopref.distributed: {what} as a DTensor must be replicated, "
                         f"got {tuple(x.placements)}")
    return x.to_local()


# ---- The exchange: a fixed-size header, then the records

# The header, int64: status, N, S, begin, width, total, slice rank, slice
# n_ranks, H, records dtype, then the failing rank's message (utf-8, zero-padded).
_FIELDS = ("status", "rows", "seqs", "begin", "width", "total", "rank", "n_ranks", "hidden",
           "dtype")
_MESSAGE_BYTES = 256
_HEADER = len(_FIELDS) + _MESSAGE_BYTES // 8
_DTYPES = (torch.float64, torch.int32)


def _encode(message):
    raw = message.encode("utf-8", "replace")[:_MESSAGE_BYTES].ljust(_MESSAGE_BYTES, b"\0")
    return torch.frombuffer(bytearray(raw), dtype=torch.int64)


def _decode(words):
    return words.numpy().tobytes().rstrip(b"\0").decode("utf-8", "replace")


def _check_headers(hdr, grp, err):
    """Every rank reads the same gathered headers [K, _HEADER] and raises the
    same RankFailed when any rank failed or the layout does not fit."""
    f = {name: hdr[:, i].tolist() for i, name in enumerate(_FIELDS)}
    failed = [r for r in range(grp.size) if f["status"][r] != 0]
    if failed:
        detail = "; ".join(f"rank {r}: {_decode(hdr[r, len(_FIELDS):])}" for r in failed)
        raise RankFailed(f"geopref.distributed: rank(s) {failed} of {grp.size} failed before "
                         f"the exchange, so every rank raises ({detail})", failed) from err
    problems = []
    for name in ("rows", "seqs", "total", "hidden", "dtype"):
        if len(set(f[name])) != 1:
            problems.append(f"{name} differs across ranks: {f[name]}")
    wrong = [r for r in range(grp.size) if f["rank"][r] != r or f["n_ranks"][r] != grp.size]
    if wrong:
        problems.append(f"vocab_slice (rank, n_ranks) must be (group rank, {grp.size}); ranks "
                        f"{wrong} have {[(f['rank'][r], f['n_ranks'][r]) for r in wrong]}")
    begins, widths, total = f["begin"], f["width"], f["total"][-1]
    untiled = [r for r in range(grp.size)
               if begins[r] != sum(widths[:r]) or widths[r] < 1]
    if begins[-1] + widths[-1] != total and grp.size - 1 not in untiled:
        untiled.append(grp.size - 1)
    if untiled:
        wrong += untiled
        problems.append(f"the slices [begin, begin + width) = "
                        f"{[(b, b + w) for b, w in zip(begins, widths)]} do not tile "
                        f"[0, {total}) in rank order (ranks {untiled})")
    if problems:
        ranks = sorted(set(wrong))
        raise RankFailed("geopref.distributed: " + "; ".join(problems), ranks)


def _exchange(grp, local):
    """Runs `local()` -> (records [N, 4], layout dict) inside a guard, then
    the header all-gather and, when every rank succeeded, the records
    all-gather. Returns (gathered [K, N, 4], local's other results)."""
    err, rec, layout, rest = None, None, {}, None
    try:
        rec, layout, rest = local()
        status = 0
        message = ""
    except Exception as e:  # noqa: BLE001 - any local failure must reach the other ranks
        err, status = e, 1
        message = f"{type(e).__name__}: {e}"
    values = [status] + [int(layout.get(k, -1)) for k in _FIELDS[1:-1]]
    values.append(_DTYPES.index(rec.dtype) if rec is not None and rec.dtype in _DTYPES else -1)
    header = torch.cat([torch.tensor(values, dtype=torch.int64), _encode(message)])
    _check_headers(_all_gather(header.to(grp.device), grp).cpu(), grp, err)
    return _all_gather(rec, grp), rest


def _all_gather(t, grp):
    """[K, *t.shape]: every rank's t in group-rank order (one all-gather,
    concatenating along dimension 0 as every backend accepts)."""
    t = t.contiguous()
    out = torch.empty((grp.size * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype,
                      device=t.device)
    dist.all_gather_into_tensor(out, t, group=grp.pg)
    return out.view((grp.size,) + tuple(t.shape))


def _layout(n, s, sl, width, hidden=0):
    return dict(rows=n, seqs=s, begin=sl.begin, width=width, total=sl.total, rank=sl.rank,
                n_ranks=sl.n_ranks, hidden=hidden)


# ---- Keyword handling: the single-device functions' keywords, validated
# locally (before the exchange) where a bad value is a local failure.

def _keywords_of(fn, skip):
    return tuple(p for p in inspect.signature(fn).parameters if p not in skip)


_LOSS_KEYWORDS = _keywords_of(api.vocab_parallel_loss,
                              ("logits", "labels", "records", "offsets", "vocab_slice"))
_LOGPS_KEYWORDS = _keywords_of(api.vocab_parallel_logps,
                               ("logits", "labels", "records", "offsets", "vocab_slice"))
_LINEAR_LOSS_KEYWORDS = _keywords_of(api.vocab_linear_loss, (
    "hidden", "weight", "labels", "records", "offsets", "vocab_slice", "bias"))
_STATS_KEYWORDS = ("ignore_index", "check") + LOGIT_TRANSFORM_KEYWORDS
_LINEAR_LOGPS_KEYWORDS = tuple(k for k in _LINEAR_LOSS_KEYWORDS
                               if k in _LOGPS_KEYWORDS or k == "chunk_bytes")


def _validate(kwargs, allowed, labels, offsets, device, pairs_ok=True):
    """The keywords' own checks (unknown names, the options, the logit
    transform) before any collective."""
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise TypeError(f"geopref.distributed: unknown keyword(s) {sorted(unknown)}")
    opts = {k: kwargs.get(k, OPTIONS_DEFAULTS[k]) for k in OPTIONS_KEYWORDS}
    off = offsets
    if off is None:
        if labels.dim() != 2:
            raise ValueError("geopref.distributed: [N] labels need offsets [S + 1]")
        off = torch.arange(labels.shape[0] + 1, dtype=torch.int64) * labels.shape[1]
    api._loss_config(off, kwargs.get("pairs") if pairs_ok else None, device,
                     kwargs.get("soft_labels") if pairs_ok else None,
                     kwargs.get("label_smoothing", 0.0) if pairs_ok else 0.0, **opts)
    api._logit_transform(**{f.keyword: kwargs.get(f.keyword, f.default)
                            for f in LOGIT_TRANSFORM_FIELDS})
    if "token_weights" in kwargs:
        api._token_weights(kwargs["token_weights"], labels)


def _stats_kwargs(kwargs):
    return {k: kwargs[k] for k in _STATS_KEYWORDS if k in kwargs}


def _seqs(labels, offsets):
    return (labels.shape[0] if offsets is None else offsets.shape[0] - 1)


# ---- The logits path

def _logits_exchange(logits, labels, offsets, group, vocab_slice, kwargs, allowed, pairs_ok):
    grp = _group(group, (logits, labels))

    def local():
        z, sl = _sharded(logits, -1, vocab_slice, grp, "logits")
        y, off = _replicated(labels, "labels"), _replicated(offsets, "offsets")
        _validate(kwargs, allowed, y, off, z.device, pairs_ok)
        rec = api.vocab_parallel_stats(z, y, off, vocab_slice=sl, **_stats_kwargs(kwargs))
        return rec, _layout(rec.shape[0], _seqs(y, off), sl, z.shape[-1]), (z, y, off, sl)

    gathered, (z, y, off, sl) = _exchange(grp, local)
    return grp, gathered, z, y, off, sl


def vocab_parallel_loss(logits, labels, offsets=None, *, group=None,
                        vocab_slice: Optional[VocabSlice] = None, **kwargs) -> DPOOutput:
    """dpo_loss over a group whose ranks hold slices of the logits' vocabulary.

    logits: this rank's slice, [B, T, V_r] (labels [B, T]) or [N, V_r]
      (labels [N], offsets [S + 1]), a plain tensor with vocab_slice (a
      VocabSlice whose rank and n_ranks are the group's), or a DTensor
      sharded on its last dimension over a 1-D mesh (vocab_slice from its
      placement). labels (global columns), offsets and every keyword of
      geopref_torch.dpo_loss: the same on every rank.
    group: a ProcessGroup, a 1-D DeviceMesh, or None (the DTensor's mesh,
      else the default group).
    Returns dpo_loss's DPOOutput, the same bits on every rank; the backward
    gives this rank's slice its gradient (no collective). With a DTensor,
    logits.grad is a DTensor of the same placement."""
    grp, gathered, z, y, off, sl = _logits_exchange(logits, labels, offsets, group, vocab_slice,
                                                     kwargs, _LOSS_KEYWORDS, True)
    return api.vocab_parallel_loss(z, y, gathered, off, vocab_slice=sl, **kwargs)


def vocab_parallel_logps(logits, labels, offsets=None, *, group=None,
                         vocab_slice: Optional[VocabSlice] = None, **kwargs) -> torch.Tensor:
    """sequence_logps over a group whose ranks hold slices of the logits'
    vocabulary (the reference model's pass): [S], the same on every rank.
    Arguments as vocab_parallel_loss; the keywords are sequence_logps's.
    Not differentiable."""
    grp, gathered, z, y, off, sl = _logits_exchange(logits, labels, offsets, group, vocab_slice,
                                                     kwargs, _LOGPS_KEYWORDS, False)
    return api.vocab_parallel_logps(z, y, gathered, off, vocab_slice=sl, **kwargs)


# ---- Per-token statistics from the gathered records (no per-token
# vocab-parallel operator exists: the combine and the slice's backward are
# written here in torch, following the library's combine rule).

_LN2 = 0.6931471805599453


def _combine(gathered, scored):
    """The combine of the gathered records [K, N, 4] in rank order ->
    (lse [N], label logit [N]); rows not scored get lse 0 and logit 0.
    CPU records (float64): m, s (natural base), label, tag = 2·rank + owns.
    CUDA records (the library's 16 bytes as int32): float m and s in base 2
    (m an integer, so 2^(m_r - M) is exact), float label, int32 tag.
    Raises RuntimeError when a scored row's records do not hold every rank
    once in its slot, or its label is owned by other than one rank (the same
    on every rank: the same gathered bytes)."""
    k = gathered.shape[0]
    if gathered.dtype == torch.float64:
        m, s, label = gathered[..., 0], gathered[..., 1], gathered[..., 2]
        tag = gathered[..., 3].to(torch.int64)
        base2 = False
    else:
        f = gathered.view(torch.float32)
        m, s, label = f[..., 0], f[..., 1], f[..., 2]
        tag = gathered[..., 3].to(torch.int64)
        base2 = True
    ranks = torch.arange(k, device=gathered.device).unsqueeze(1)
    owns = (tag % 2) == 1
    bad = ((tag // 2) != ranks) & scored
    owners = owns.sum(0)
    if bool(bad.any()) or bool(((owners != 1) & scored).any()):
        raise RuntimeError("geopref.distributed: invalid gathered records (a scored row's "
                           "records do not hold every rank once, or its label is owned by "
                           "other than one slice)")
    big = torch.where(scored, m.max(0).values, torch.zeros_like(m[0]))
    total = torch.zeros_like(big)
    for r in range(k):  # rank order, one rounding per rank, as the library's combine
        e = torch.exp2(m[r] - big) if base2 else torch.exp(m[r] - big)
        total = total + torch.where(scored, s[r] * e, torch.zeros_like(e))
    total = torch.where(scored, total, torch.ones_like(total))
    lse = (big + torch.log2(total)) * _LN2 if base2 else big + torch.log(total)
    logit = torch.where(owns, label, torch.zeros_like(label)).sum(0)
    zero = torch.zeros_like(lse)
    return torch.where(scored, lse, zero), torch.where(scored, logit, zero)


def _transform(z, tr):
    """(z', dz'/dz or None for the identity) of the logit transform, as
    geopref's apply and slope (include/geopref/options.hpp)."""
    scale, softcap, temperature = tr
    if softcap > 0.0:
        th = torch.tanh(scale * z / softcap)
        return softcap * th / temperature, scale / temperature * (1.0 - th * th)
    if scale == 1.0 and temperature == 1.0:
        return z, None
    return scale * z / temperature, scale / temperature


def _slice_grad(z, cols, lse, g, tr, e=None, h=None):
    """d(Σ_t g_t logp_t + e_t H_t)/dz over one chunk of the slice's logits z
    [n, W] (in the compute dtype): (g_t (1[v = y_t] - p_tv) - e_t p_tv
    (log p_tv + H_t)) dz'/dz with p_tv = exp(z'_tv - lse_t), the one-hot only
    on rows whose label lies in the slice (cols: the label's slice column, or
    -1). g and e are 0, lse is +inf on rows that are not scored. e (the
    entropy's upstream) and h (the entropy of the whole vocabulary) None:
    no entropy term. Every term is local: lse and H are the whole row's."""
    zt, slope = _transform(z, tr)
    lp = zt - lse.unsqueeze(1)
    p = torch.exp(lp)
    grad = -g.unsqueeze(1) * p
    if e is not None:  # p = 0 (z' = -inf, or a row not scored) adds 0, not 0·inf
        term = torch.where(p > 0, p * (lp + h.unsqueeze(1)), torch.zeros_like(p))
        grad = grad - e.unsqueeze(1) * term
    own = cols >= 0
    if bool(own.any()):
        rows = own.nonzero().squeeze(1)
        grad[rows, cols[rows]] += g[rows]
    if slope is not None:
        grad = grad * slope
    return grad


def _compute_dtype(t):
    return torch.float64 if t.device.type == "cpu" else torch.float32


def _out_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _token_setup(y, ignore_index, sl):
    """(scored rows, the label's column in the slice or -1)."""
    scored = y != ignore_index
    inside = scored & (y >= sl.begin) & (y < sl.begin + sl.width)
    return scored, torch.where(inside, y - sl.begin, torch.full_like(y, -1))


class _Slice(NamedTuple):  # VocabSlice plus its width, for the token functions
    begin: int
    total: int
    rank: int
    n_ranks: int
    width: int


class _TokenLogpsFromLogits(torch.autograd.Function):
    """Attaches the slice's backward to per-token log-probs combined from
    the records: forward returns logp; backward gives the slice's grad."""

    @staticmethod
    def forward(ctx, z, logp, ent, h, cols, lse, g_mask, tr, chunk_rows):
        ctx.save_for_backward(z, cols, lse, g_mask, h)
        ctx.tr, ctx.chunk_rows = tr, chunk_rows
        return (logp.clone(), ent.clone()) if ent is not None else logp.clone()

    @staticmethod
    def backward(ctx, grad, grad_ent=None):
        z, cols, lse, g_mask, h = ctx.saved_tensors
        none = (None,) * 8
        if not ctx.needs_input_grad[0] or (grad is None and grad_ent is None):
            return (None,) + none
        g, e = _upstreams(grad, grad_ent, g_mask, lse)
        out = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        for a in range(0, z.shape[0], ctx.chunk_rows):
            b = min(a + ctx.chunk_rows, z.shape[0])
            out[a:b] = _slice_grad(z[a:b].to(lse.dtype), cols[a:b], lse[a:b], g[a:b], ctx.tr,
                                   None if e is None else e[a:b],
                                   None if e is None else h[a:b]).to(z.dtype)
        return (out,) + none


def _upstreams(grad, grad_ent, g_mask, lse):
    """(g, e): the log-probs' and the entropy's upstreams in the compute
    dtype, 0 on rows not scored; e None without an entropy upstream."""
    zero = torch.zeros_like(lse)
    g = zero if grad is None else torch.where(g_mask, grad.to(lse.dtype), zero)
    e = None if grad_ent is None else torch.where(g_mask, grad_ent.to(lse.dtype), zero)
    return g, e


def _attach(fn, first, logp, stats, want, scored, lse, cd, od, rest):
    """logp (and the entropy, when asked for) through the slice's backward
    `fn` (_TokenLogpsFromLogits / _TokenLogpsFromLinear): returns logp and
    updates stats["entropy"]."""
    lse_b = torch.where(scored, lse, torch.full_like(lse, float("inf")))
    if not want["entropy"]:
        return fn.apply(*first, logp, None, None, rest[0], lse_b, scored, *rest[1:])
    h = stats["entropy"]
    logp, ent = fn.apply(*first, logp, h.to(od), h.to(cd), rest[0], lse_b, scored, *rest[1:])
    stats["entropy"] = ent
    return logp


def _chunk_rows(width, cd, chunk_bytes):
    per_row = max(1, width) * torch.finfo(cd).bits // 8
    return max(1, int(chunk_bytes) // per_row)


def _tr(logit_scale, softcap, temperature):
    return tuple(api._logit_transform(logit_scale=logit_scale, softcap=softcap,
                                      temperature=temperature))


def _sum_in_rank_order(part, grp):
    """Σ_r part_r over the group, added in rank order from one all-gather:
    the same bits on every rank, whatever the collective's algorithm."""
    parts = _all_gather(part.reshape((1,) + tuple(part.shape)), grp)[:, 0]
    out = parts[0].clone()
    for r in range(1, grp.size):
        out += parts[r]
    return out


# The statistics of the whole vocabulary per token beyond the log-prob
# (TRL 1.16.0's FusedCausalLMOutput fields), each on request: every rank
# forms its slice's share per row, ONE all-gather of the shares [N, c]
# (float64: c = 1 per sum asked for, 2 for is_top1), and every rank combines
# them in rank order (the same bits on every rank).
_SUMS = ("entropy", "log_sum_sq_probs", "mean_logits")


def _stat_columns(want):
    return [n for n in _SUMS if want[n]] + (["max", "argmax"] if want["is_top1"] else [])


def _slice_shares(z, lse, tr, cols, begin):
    """The shares of one chunk of the slice's logits z [n, W] as given (the
    compute dtype) with the rows' global lse [n]: Σ p (lse - z') (entropy),
    Σ p² = Σ exp(2(z' - lse)), Σ z', and the slice's maximum of the logits
    as given with its FIRST global column (torch.max's index on ties)."""
    zt, _ = _transform(z, tr)
    d = lse.unsqueeze(1) - zt
    out = []
    for c in cols:
        if c == "entropy":
            out.append((torch.exp(-d) * d).sum(1))
        elif c == "log_sum_sq_probs":
            out.append(torch.exp(-2.0 * d).sum(1))
        elif c == "mean_logits":
            out.append(zt.sum(1))
        elif c == "max":
            m, i = z.max(1)
            out += [m, i + begin]
    return torch.stack([o.to(torch.float64) for o in out], 1)


def _token_stats(grp, n, lse, scored, y, total, chunk_rows, logits_of, want, tr, begin):
    """{name: [N]} for the statistics asked for in `want` (TOKEN_STATS ->
    bool) of the whole vocabulary: each rank's shares over its slice
    (logits_of(a, b): the slice's logits of rows a:b as given, in the
    compute dtype), one all-gather of [N, c], then in rank order
      entropy          Σ_r share_r,
      log_sum_sq_probs log Σ_r Σ_v exp(2(z'_v - lse)),
      mean_logits      Σ_r Σ_v z'_v / V,
      is_top1          the label is the first column reaching the largest of
                       the K slice maxima (of the logits as given, the
                       single-device rule), taken from the first rank that
                       holds it; False when a logit of the row is NaN.
    0 (False) on rows not scored. Not differentiable."""
    cols = _stat_columns(want)
    if not cols:
        return {}
    lse0 = torch.where(scored, lse, torch.zeros_like(lse))
    part = torch.zeros((n, len(cols)), dtype=torch.float64, device=lse.device)
    with torch.no_grad():
        for a in range(0, n, chunk_rows):
            b = min(a + chunk_rows, n)
            part[a:b] = _slice_shares(logits_of(a, b), lse0[a:b], tr, cols, begin)
    part = torch.where(scored.unsqueeze(1), part, torch.zeros_like(part))
    parts = _all_gather(part.unsqueeze(0), grp)[:, 0]  # [K, N, c], group-rank order
    out, zero = {}, torch.zeros(n, dtype=torch.float64, device=lse.device)
    for j, c in enumerate(cols[:len(cols) - (2 if want["is_top1"] else 0)]):
        acc = parts[0, :, j].clone()
        for r in range(1, grp.size):
            acc += parts[r, :, j]
        if c == "log_sum_sq_probs":
            acc = torch.where(scored, torch.log(torch.where(scored, acc, zero + 1)), zero)
        elif c == "mean_logits":
            acc = acc / total
        out[c] = acc
    if want["is_top1"]:
        m, arg = parts[:, :, -2], parts[:, :, -1]
        big = m.max(0).values
        first = (m == big).to(torch.int8).argmax(0)  # the first rank holding the maximum
        col = arg.gather(0, first.unsqueeze(0))[0]
        out["is_top1"] = (scored & ~torch.isnan(m).any(0)
                          & (col == y.to(torch.float64)))
    return out


def vocab_parallel_token_logps(logits, labels, ignore_index: int = -100, *, group=None,
                               vocab_slice: Optional[VocabSlice] = None,
                               logit_scale: float = 1.0, softcap: float = 0.0,
                               temperature: float = 1.0, return_entropy: bool = False,
                               outputs: Optional[Sequence[str]] = None,
                               check: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """token_logps over a group whose ranks hold slices of the logits'
    vocabulary: log softmax(z_t)[y_t] of the whole vocabulary per token,
    shaped like labels, the same bits on every rank (0 on ignored rows).

    logits: this rank's [..., V_r] (plain with vocab_slice, or a DTensor
    sharded on the last dimension); labels [...] the same on every rank.
    Differentiable with respect to the slice: the backward (no collective)
    is g_t (1[v = y_t] - softmax_tv) over the slice, formed in torch one
    chunk of at most chunk_bytes of rows at a time (float64 on CPU, float32
    on CUDA). The forward is vocab_parallel_stats (one sequence holding
    every row), the exchange, and the combine of the records in torch.
    return_entropy: also the per-token entropy of the whole vocabulary
    (labels' shape, 0 on ignored rows); returns (logps, entropy) then.
    outputs: TRL 1.16.0's statistics, as token_logps's (names among
    geopref_torch.TOKEN_OUTPUTS): returns a geopref_torch.TokenStats. The
    entropy, log_sum_sq_probs, mean_logits and is_top1 asked for come from
    ONE more all-gather of float64 shares [N, c] per rank (c: one per sum,
    two for is_top1, the slice's maximum and its first column), combined in
    rank order. Differentiable, as on one device: the log-probs and the
    entropy (its slice gradient -e p (log p + H) needs only the row's lse
    and H: no collective in the backward); the other three are not."""
    grp = _group(group, (logits, labels))
    want = api._token_outputs(outputs, return_entropy)

    def local():
        z, sl = _sharded(logits, -1, vocab_slice, grp, "logits")
        y = _replicated(labels, "labels")
        if z.dim() < 1 or y.shape != z.shape[:-1]:
            raise ValueError(f"geopref.distributed: labels must have shape logits.shape[:-1] = "
                             f"{list(z.shape[:-1])}, got {list(y.shape)}")
        z2, y1 = z.reshape(-1, z.shape[-1]), y.reshape(-1)
        off = torch.tensor([0, y1.shape[0]], dtype=torch.int64, device=z.device)
        rec = api.vocab_parallel_stats(z2, y1, off, vocab_slice=sl, ignore_index=ignore_index,
                                       logit_scale=logit_scale, softcap=softcap,
                                       temperature=temperature, check=check)
        return rec, _layout(y1.shape[0], -1, sl, z.shape[-1]), (z, z2, y, y1, sl)

    gathered, (z, z2, y, y1, sl) = _exchange(grp, local)
    sl = _Slice(*sl, width=z.shape[-1])
    scored, cols = _token_setup(y1, ignore_index, sl)
    lse, logit = _combine(gathered, scored)
    cd = lse.dtype
    logp = (logit - lse).to(_out_dtype(z))
    tr = _tr(logit_scale, softcap, temperature)
    rows = _chunk_rows(z.shape[-1], cd, chunk_bytes)
    zd = z2.detach()
    stats = _token_stats(grp, zd.shape[0], lse, scored, y1, sl.total, rows,
                         lambda a, b: zd[a:b].to(cd), want, tr, sl.begin)
    if torch.is_grad_enabled() and z2.requires_grad:
        logp = _attach(_TokenLogpsFromLogits, (z2,), logp, stats, want, scored, lse, cd,
                       _out_dtype(z), (cols, tr, rows))
    return _token_result(y.shape, logp, stats, want, outputs, return_entropy, _out_dtype(z))


def _token_result(shape, logp, stats, want, outputs, return_entropy, od):
    """token_logps's result form (api._token_result) from the combined stats."""
    full = [None if n not in stats else
            (stats[n] if n == "is_top1" else stats[n].to(od)) for n in api.TOKEN_STATS]
    return api._token_result(shape, logp, full, want, outputs, return_entropy)


# ---- The hidden-state path

class _SumGradOverGroup(torch.autograd.Function):
    """Identity forward; the backward sums the hidden states' partial
    gradients over the group (mode "all_reduce" or "rank_order")."""

    @staticmethod
    def forward(ctx, x, grp, mode):
        ctx.grp, ctx.mode = grp, mode
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grp = ctx.grp
        grad = grad.contiguous()
        if ctx.mode == "all_reduce":
            out = grad.clone()
            dist.all_reduce(out, group=grp.pg)
        else:
            out = _sum_in_rank_order(grad, grp)
        return out, None, None


def _hidden_for_step(x, grp, mode):
    """x with its gradient summed over the group by `mode` (checked before
    the exchange, in _linear_local)."""
    if mode == "partial" or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _SumGradOverGroup.apply(x, grp, mode)


def _linear_local(hidden, weight, bias, labels, offsets, grp, vocab_slice, grad_hidden):
    """The hidden path's local inputs: (x, w, b, y, off, slice)."""
    if grad_hidden not in GRAD_HIDDEN_MODES:
        raise ValueError(f"geopref.distributed: grad_hidden must be one of {GRAD_HIDDEN_MODES}, "
                         f"got {grad_hidden!r}")
    if grad_hidden == "partial" and _is_dtensor(hidden):
        raise ValueError("geopref.distributed: grad_hidden='partial' returns a rank's partial "
                         "gradient: pass the hidden states as a plain tensor")
    w, sl = _sharded(weight, 0, vocab_slice, grp, "weight")
    b = None
    if bias is not None:
        b, bsl = _sharded(bias, 0, sl if not _is_dtensor(bias) else None, grp, "bias")
        if bsl != sl:
            raise ValueError(f"geopref.distributed: the bias's slice {tuple(bsl)} is not the "
                             f"weight's {tuple(sl)}")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"geopref.distributed: bias [{b.shape[0]}] for weight rows "
                             f"[{w.shape[0]}]")
    x = _replicated(hidden, "hidden")
    y, off = _replicated(labels, "labels"), _replicated(offsets, "offsets")
    return x, w, b, y, off, sl


def _accumulators(acc_w, acc_b, w, b):
    """The caller's gradient accumulators as this rank's buffers (a DTensor's
    local shard), checked before the exchange: grad_weight_accumulator
    [V_r, H] float32 or the weight's dtype, grad_bias_accumulator [V_r]
    float32, each given when its parameter requires grad. None without any."""
    if acc_w is None and acc_b is None:
        return None
    acc_w, acc_b = (a.to_local() if _is_dtensor(a) else a for a in (acc_w, acc_b))
    if acc_w is None and w.requires_grad:
        raise ValueError("geopref.distributed: grad_bias_accumulator without "
                         "grad_weight_accumulator for a weight that requires grad: give both, "
                         "or neither")
    if acc_b is None and b is not None and b.requires_grad:
        raise ValueError("geopref.distributed: grad_weight_accumulator with a bias that requires "
                         "grad: give grad_bias_accumulator too ([V_r] float32)")
    for acc, like, name, dtypes in ((acc_w, w, "grad_weight_accumulator",
                                     (torch.float32, w.dtype)),
                                    (acc_b, b, "grad_bias_accumulator", (torch.float32,))):
        if acc is None:
            continue
        if like is None:
            raise ValueError(f"geopref.distributed: {name} is given without a bias")
        if acc.shape != like.shape:
            raise ValueError(f"geopref.distributed: {name} must have the shape of this rank's "
                             f"slice {list(like.shape)}, got {list(acc.shape)}")
        if acc.dtype not in dtypes:
            raise TypeError(f"geopref.distributed: {name} must be "
                            f"{' or '.join(str(d) for d in dict.fromkeys(dtypes))}, "
                            f"got {acc.dtype}")
    return acc_w, acc_b


def _linear_exchange(hidden, weight, labels, offsets, bias, group, vocab_slice, grad_hidden,
                     kwargs, allowed, pairs_ok, accumulators=(None, None)):
    grp = _group(group, (hidden, weight, bias, labels))

    def local():
        x, w, b, y, off, sl = _linear_local(hidden, weight, bias, labels, offsets, grp,
                                            vocab_slice, grad_hidden)
        _validate(kwargs, allowed, y, off, x.device, pairs_ok)
        acc = _accumulators(*accumulators, w, b)
        rec = api.vocab_linear_stats(x, w, y, off, vocab_slice=sl, bias=b,
                                     **_stats_kwargs(kwargs),
                                     **({"chunk_bytes": kwargs["chunk_bytes"]}
                                        if "chunk_bytes" in kwargs else {}))
        return (rec, _layout(rec.shape[0], _seqs(y, off), sl, w.shape[0], x.shape[-1]),
                (x, w, b, y, off, sl, acc))

    gathered, rest = _exchange(grp, local)
    return (grp, gathered) + rest


def vocab_linear_loss(hidden, weight, labels, offsets=None, *, bias=None, group=None,
                      vocab_slice: Optional[VocabSlice] = None, grad_hidden: str = "all_reduce",
                      grad_weight_accumulator: Optional[torch.Tensor] = None,
                      grad_bias_accumulator: Optional[torch.Tensor] = None,
                      **kwargs) -> DPOOutput:
    """fused_linear_preference_loss over a group whose ranks hold rows of the
    lm_head: weight [V_r, H] and bias [V_r] (plain tensors with vocab_slice,
    or DTensors sharded on dimension 0 over a 1-D mesh), and the same hidden
    states ([B, T, H] with labels [B, T], or [N, H] with labels [N] and
    offsets; a plain tensor or a replicated DTensor) on every rank. The
    weight is never gathered: on each rank the weight-sized buffers are its
    slice and the gradient of its slice (plus one chunk of logits on CUDA).

    Every keyword of geopref_torch.vocab_linear_loss (the option keywords,
    the logit transform, chunk_bytes, check). grad_hidden: "all_reduce",
    "rank_order" or "partial" (the module's docstring). Returns DPOOutput,
    the same bits on every rank; weight.grad and bias.grad are the rank's
    slices (DTensors of the same placement for DTensor inputs).

    grad_weight_accumulator, grad_bias_accumulator: as
    fused_linear_preference_loss's, for this rank's slice: [V_r, H] float32
    (or the weight's dtype) and [V_r] float32 buffers (plain tensors, or
    DTensors sharded as the weight: their local shards) kept across
    micro-batches, into which the backward adds upstream * dLoss/dW_r and
    dLoss/db_r (the library's accumulate and grad_weight_float32: each sum
    rounded once) instead of giving the weight and bias a .grad. The
    forward then computes the loss only and the backward runs the step
    again with the upstream gradient (vocab_linear_accumulate); hidden.grad
    as without them. A bad accumulator fails before the exchange (every
    rank raises RankFailed). Eager mode (not for torch.compile)."""
    grp, gathered, x, w, b, y, off, sl, acc = _linear_exchange(
        hidden, weight, labels, offsets, bias, group, vocab_slice, grad_hidden, kwargs,
        _LINEAR_LOSS_KEYWORDS, True, (grad_weight_accumulator, grad_bias_accumulator))
    x = _hidden_for_step(x, grp, grad_hidden)
    if acc is None:
        return api.vocab_linear_loss(x, w, y, gathered, off, vocab_slice=sl, bias=b, **kwargs)
    args = _vocab_linear_args(x, w, b, y, gathered, off, sl, kwargs)
    if torch.is_grad_enabled():
        out = _VocabLinearAccumulate.apply(args["hidden"], args["weight"], args["bias"], args,
                                           *acc)
    else:  # no backward will run: the loss alone
        out = ops.vocab_linear_step(**args)[:4]
    value, seq_logps, metrics, sums = out
    return DPOOutput(value, seq_logps, dict(zip(METRIC_NAMES, metrics.unbind(0))), sums)


_VOCAB_LINEAR_LOSS = inspect.signature(api.vocab_linear_loss)


def _vocab_linear_args(x, w, b, y, gathered, off, sl, kwargs):
    """api.vocab_linear_loss's arguments (its defaults for the keywords not
    given) -> vocab_linear_step's, by the names of its schema, with no
    gradient asked for (grad_mask all False: the loss only)."""
    a = _VOCAB_LINEAR_LOSS.bind(x, w, y, gathered, off, vocab_slice=sl, bias=b, **kwargs)
    a.apply_defaults()
    a = a.arguments
    x, w, b = api._autocast(x, w, b)
    tw = api._token_weights(a["token_weights"], y)
    x, y, off = api._tokens(x, y, off, what="hidden states")
    soft, options = api._loss_config(off, a["pairs"], x.device, a["soft_labels"],
                                     a["label_smoothing"], **api._options_of(a))
    transform = api._logit_transform(**{f.keyword: a[f.keyword] for f in LOGIT_TRANSFORM_FIELDS})
    return dict(hidden=x, weight=w, bias=b, labels=y, offsets=off, records=gathered,
                pairs=a["pairs"], soft_labels=soft, ref_logps=a["ref_logps"],
                weights=a["weights"], token_weights=tw, vocab_slice=api._vocab_slice(sl),
                options=options, chunk_bytes=int(a["chunk_bytes"]), grad_mask=[False] * 3,
                check=bool(a["check"]), logit_transform=transform)


class _VocabLinearAccumulate(torch.autograd.Function):
    """vocab_linear_loss with the caller's gradient accumulators: the forward
    is vocab_linear_step without gradients; the backward runs
    vocab_linear_accumulate with the upstream gradient, which adds this
    rank's slice of dLoss/dweight (and dLoss/dbias) into the accumulators and
    returns the partial grad_hidden. Only hidden gets an autograd gradient;
    weight and bias are inputs so that the backward runs when only they
    require grad (a frozen body)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, args, acc_w, acc_b):
        value, seq_logps, metrics, sums = ops.vocab_linear_step(**args)[:4]
        ctx.args, ctx.acc = args, (acc_w, acc_b)
        ctx.mark_non_differentiable(seq_logps, metrics, sums)
        return value, seq_logps, metrics, sums

    @staticmethod
    def backward(ctx, grad_loss, *_):
        need_hidden = ctx.needs_input_grad[0]
        args = dict(ctx.args, grad_mask=[need_hidden, False, False])
        grad_hidden = ops.vocab_linear_accumulate(grad_loss, **args, grad_weight_acc=ctx.acc[0],
                                                  grad_bias_acc=ctx.acc[1])
        return (grad_hidden if need_hidden else None), None, None, None, None, None


def vocab_linear_logps(hidden, weight, labels, offsets=None, *, bias=None, group=None,
                       vocab_slice: Optional[VocabSlice] = None, **kwargs) -> torch.Tensor:
    """fused_linear_logps over a group whose ranks hold rows of the lm_head
    (the reference model's pass): [S] sequence log-probs, the same on every
    rank, in the form the loss's margin uses (the option keywords as
    sequence_logps's). Arguments as vocab_linear_loss. Not differentiable:
    the step of vocab_linear_loss with no pairs, under no_grad."""
    grp, gathered, x, w, b, y, off, sl, _ = _linear_exchange(
        hidden, weight, labels, offsets, bias, group, vocab_slice, "all_reduce", kwargs,
        _LINEAR_LOGPS_KEYWORDS, False)
    # The pairing and the reduction do not change the log-probs: TRL's
    # pairing when the sequence count is even, else one pair (0, 1).
    n_seqs = _seqs(y, off)
    pairs = (None if n_seqs % 2 == 0 else
             torch.tensor([[0, min(1, n_seqs - 1)]], dtype=torch.int64, device=x.device))
    kw = {k: v for k, v in kwargs.items() if k not in ("reduction", "normalizer")}
    with torch.no_grad():
        return api.vocab_linear_loss(x, w, y, gathered, off, vocab_slice=sl, bias=b,
                                     pairs=pairs, reduction="sum", **kw).logps


class _TokenLogpsFromLinear(torch.autograd.Function):
    """The hidden path's per-token backward over the slice, one chunk of rows
    at a time: Z_c = H_c·W_rᵀ + b_r again, G_c (_slice_grad), then
    grad_H_c = G_c·W_r (the partial), grad_W_r += G_cᵀ·H_c, grad_b_r += Σ G_c."""

    @staticmethod
    def forward(ctx, x, w, b, logp, ent, h, cols, lse, g_mask, tr, chunk_rows):
        ctx.save_for_backward(x, w, b, cols, lse, g_mask, h)
        ctx.tr, ctx.chunk_rows = tr, chunk_rows
        return (logp.clone(), ent.clone()) if ent is not None else logp.clone()

    @staticmethod
    def backward(ctx, grad, grad_ent=None):
        x, w, b, cols, lse, g_mask, h = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        if (grad is None and grad_ent is None) or not any(need):
            return (None,) * 11
        cd = lse.dtype
        g, e_up = _upstreams(grad, grad_ent, g_mask, lse)
        wc = w.to(cd)
        bc = b.to(cd) if b is not None else None
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need[0] else None
        gw = torch.zeros(w.shape, dtype=cd, device=w.device) if need[1] else None
        gb = torch.zeros(b.shape, dtype=cd, device=b.device) if need[2] else None
        for a in range(0, x.shape[0], ctx.chunk_rows):
            e = min(a + ctx.chunk_rows, x.shape[0])
            xc = x[a:e].to(cd)
            z = xc @ wc.t()
            if bc is not None:
                z = z + bc
            gz = _slice_grad(z, cols[a:e], lse[a:e], g[a:e], ctx.tr,
                             None if e_up is None else e_up[a:e],
                             None if e_up is None else h[a:e])
            if gx is not None:
                gx[a:e] = (gz @ wc).to(x.dtype)
            if gw is not None:
                gw.addmm_(gz.t(), xc)  # in place: no second [V_r, H] buffer
            if gb is not None:
                gb += gz.sum(0)
        return (gx, None if gw is None else gw.to(w.dtype),
                None if gb is None else gb.to(b.dtype)) + (None,) * 8


def vocab_linear_token_logps(hidden, weight, labels, ignore_index: int = -100, *, bias=None,
                             group=None, vocab_slice: Optional[VocabSlice] = None,
                             grad_hidden: str = "all_reduce", logit_scale: float = 1.0,
                             softcap: float = 0.0, temperature: float = 1.0,
                             return_entropy: bool = False,
                             outputs: Optional[Sequence[str]] = None,
                             chunk_bytes: int = DEFAULT_CHUNK_BYTES, check: bool = True):
    """linear_token_logps over a group whose ranks hold rows of the lm_head
    (e.g. TRL's head with a DTensor lm_head weight sharded on the
    vocabulary, instead of weight.full_tensor()): log softmax(hidden·Wᵀ +
    b)[y_t] per token of hidden [..., H] (the same on every rank), shaped like
    labels, the same bits on every rank.

    weight [V_r, H], bias [V_r]: plain with vocab_slice, or DTensors sharded
    on dimension 0. Differentiable with respect to hidden (summed over the
    group per grad_hidden), weight and bias (the rank's slices). The
    forward is vocab_linear_stats (the logits one chunk at a time on CUDA),
    the exchange and the combine in torch; the backward forms the slice's
    logits again in torch, chunk_bytes of rows at a time (float64 on CPU,
    float32 on CUDA). return_entropy and outputs (TRL's statistics, a
    TokenStats): as vocab_parallel_token_logps's, the slice's logits formed
    once more per chunk for all the statistics asked for together."""
    grp = _group(group, (hidden, weight, bias, labels))
    want = api._token_outputs(outputs, return_entropy)

    def local():
        x, w, b, y, _, sl = _linear_local(hidden, weight, bias, labels, None, grp, vocab_slice,
                                          grad_hidden)
        # Under autocast, the dtype the records are formed in (vocab_linear_stats
        # casts the same way): the statistics and the backward below form the
        # logits again from these, so p = exp(z' - lse) sums to 1.
        x, w, b = api._autocast(x, w, b)
        if x.dim() < 1 or y.shape != x.shape[:-1]:
            raise ValueError(f"geopref.distributed: labels must have shape hidden.shape[:-1] = "
                             f"{list(x.shape[:-1])}, got {list(y.shape)}")
        x2, y1 = x.reshape(-1, x.shape[-1]), y.reshape(-1)
        off = torch.tensor([0, y1.shape[0]], dtype=torch.int64, device=x.device)
        rec = api.vocab_linear_stats(x2, w, y1, off, vocab_slice=sl, bias=b,
                                     ignore_index=ignore_index, logit_scale=logit_scale,
                                     softcap=softcap, temperature=temperature,
                                     chunk_bytes=chunk_bytes, check=check)
        return (rec, _layout(y1.shape[0], -1, sl, w.shape[0], x.shape[-1]),
                (x, x2, w, b, y, y1, sl))

    gathered, (x, x2, w, b, y, y1, sl) = _exchange(grp, local)
    sl = _Slice(*sl, width=w.shape[0])
    scored, cols = _token_setup(y1, ignore_index, sl)
    lse, logit = _combine(gathered, scored)
    cd = lse.dtype
    logp = (logit - lse).to(_out_dtype(x))
    tr = _tr(logit_scale, softcap, temperature)
    rows = _chunk_rows(w.shape[0], cd, chunk_bytes)
    stats = {}
    if any(want.values()):  # the slice's weight in the compute dtype only when needed
        xd, wc = x2.detach(), w.detach().to(cd)
        bc = None if b is None else b.detach().to(cd)

        def logits_of(a, e):
            z = xd[a:e].to(cd) @ wc.t()
            return z if bc is None else z + bc

        stats = _token_stats(grp, xd.shape[0], lse, scored, y1, sl.total, rows, logits_of,
                             want, tr, sl.begin)
    need = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b))
    if need:
        x2 = _hidden_for_step(x2, grp, grad_hidden)
        logp = _attach(_TokenLogpsFromLinear, (x2, w, b), logp, stats, want, scored, lse, cd,
                       _out_dtype(x), (cols, tr, rows))
    return _token_result(y.shape, logp, stats, want, outputs, return_entropy, _out_dtype(x))


# ---- Data parallelism

def data_parallel_normalizers(labels, offsets=None, *, pairs=None, weights=None,
                              ignore_index: int = -100, group=None,
                              gradient_average: bool = False) -> Dict[str, float]:
    """The global normalisers of a data-parallel step, from one all-reduce
    of five float64 numbers (the three sums, a failure count and the failing
    ranks): {"normalizer": P (the pair count of every
    rank), "nll_tokens": the scored tokens of the chosen responses of every
    rank's pairs with non-zero weight, "nll_weight": those pairs' weights'
    sum}. Pass them to every rank's loss (dpo_loss(..., **norms),
    fused_linear_preference_loss, vocab_parallel_loss, ...): the ranks'
    losses then sum to the one-process loss of the whole batch and their
    gradients to its gradient (an sft term needs nll_*; without one they
    change nothing). Gradient accumulation: sum over the micro-batches too.
    labels [B, T] (TRL's layout) or [N] with offsets; pairs [P, 2] or None
    (the first half chosen); weights [P] or None (1).
    gradient_average: the normalizer divided by the group's size, for a
    wrapper whose gradient all-reduce averages instead of summing (DDP, and
    FSDP2's default reduce-scatter): every rank's loss is then K times its
    share, and the averaged gradients are the one-process ones (the loss to
    log is the sum of the ranks' losses divided by K). A rank whose inputs are
    bad makes every rank raise RankFailed (the fourth number counts them)."""
    grp = _group(group, (labels,))
    err, local = None, [0.0] * 5
    try:
        y = _replicated(labels, "labels")
        if offsets is None:
            if y.dim() != 2:
                raise ValueError("geopref.distributed: [N] labels need offsets [S + 1]")
            counts = (y != ignore_index).sum(1).to(torch.float64)
        else:
            if offsets.dim() != 1 or offsets.shape[0] < 1:
                raise ValueError("geopref.distributed: offsets must be [S + 1]")
            csum = torch.cat([torch.zeros(1, dtype=torch.float64, device=y.device),
                              (y.reshape(-1) != ignore_index).to(torch.float64).cumsum(0)])
            off = offsets.to(device=y.device, dtype=torch.int64)
            counts = csum[off[1:]] - csum[off[:-1]]
        s = counts.shape[0]
        if pairs is None:
            if s % 2:
                raise ValueError(f"geopref.distributed: {s} sequences: TRL's layout needs an "
                                 "even count (chosen, then rejected), or pass pairs")
            chosen = torch.arange(s // 2, device=counts.device)
        else:
            if pairs.dim() != 2 or pairs.shape[1] != 2:
                raise ValueError(f"geopref.distributed: pairs must be [P, 2], got "
                                 f"{list(pairs.shape)}")
            chosen = pairs[:, 0].to(device=counts.device, dtype=torch.int64)
            if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= s):
                raise IndexError(f"geopref.distributed: a pair index out of [0, {s})")
        p = chosen.shape[0]
        w = (torch.ones(p, dtype=torch.float64, device=counts.device) if weights is None
             else weights.to(device=counts.device, dtype=torch.float64))
        if w.shape != (p,):
            raise ValueError(f"geopref.distributed: weights must be [P] = [{p}], got "
                             f"{list(w.shape)}")
        live = w != 0
        local = [float(p), float(counts[chosen][live].sum()), float(w[live].sum()), 0.0, 0.0]
    except Exception as e:  # noqa: BLE001 - the other ranks must learn of it
        # The failure count, and which ranks (as bits, exact in float64 for
        # the first 52 ranks).
        err, local = e, [0.0, 0.0, 0.0, 1.0, float(2 ** grp.rank) if grp.rank < 52 else 0.0]
    t = torch.tensor(local, dtype=torch.float64, device=grp.device)
    dist.all_reduce(t, group=grp.pg)
    pairs_g, tokens, weight, failed, bits = t.tolist()
    if failed:
        ranks = [r for r in range(min(grp.size, 52)) if int(bits) >> r & 1]
        raise RankFailed(f"geopref.distributed: {int(failed)} rank(s) of {grp.size} {ranks} "
                         f"failed in data_parallel_normalizers, so every rank raises (the "
                         f"failing rank's error is its __cause__)", ranks) from err
    if gradient_average:
        pairs_g /= grp.size
    return {"normalizer": pairs_g, "nll_tokens": tokens, "nll_weight": weight}


def global_metrics(out: DPOOutput, group=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(the global loss, the global batch's metrics) of a data-parallel step
    from every rank's DPOOutput (losses with the global normalizer): one
    all-reduce (sum) of [loss, metric_sums...], then metrics_from_sums.
    Not differentiable (for logging)."""
    grp = _group(group, ())
    if out.loss.dim() != 0:
        raise ValueError("geopref.distributed: global_metrics needs a reduced loss")
    if out.metric_sums.shape != (len(METRIC_SUM_NAMES),):  # before the collective
        raise ValueError(f"geopref.distributed: metric_sums must have shape "
                         f"[{len(METRIC_SUM_NAMES)}], got {list(out.metric_sums.shape)}")
    t = torch.cat([out.loss.detach().to(torch.float64).reshape(1),
                   out.metric_sums.to(torch.float64)]).to(grp.device)
    dist.all_reduce(t, group=grp.pg)
    return t[0], metrics_from_sums(t[1:])
