"""The DPO-family losses written op by op in plain PyTorch, independently of
geopref (from the formulas of docs/math.md and TRL's definitions): the
yardstick the operators are tested against. Everything in float64 on the
logits as given (already rounded to their dtype), differentiated by autograd.
"""
import torch
import torch.nn.functional as F


def _margin_losses():
    ls = F.logsigmoid

    def dpo(h, p, c):
        return -ls(c["beta"] * h)

    def ipo(h, p, c):
        return (h - 1 / (2 * c["beta"])) ** 2

    def ropo(h, p, c):
        z = c["beta"] * h
        return c["alpha"] * torch.sigmoid(-z) - c["gamma"] * ls(z)

    def geometric(f):
        return lambda h, p, c: f((2 * p - 1) * h, p, c)

    def cdpo(h, p, c):
        z = c["beta"] * h
        return -p * ls(z) - (1 - p) * ls(-z)

    def cipo(h, p, c):
        k = 1 / (2 * c["beta"])
        return p * (h - k) ** 2 + (1 - p) * (h + k) ** 2

    def hinge(h, p, c):
        return torch.relu(1 - c["beta"] * h)

    def robust(h, p, c):
        z, e = c["beta"] * h, c["epsilon"]
        return (-(1 - e) * ls(z) + e * ls(-z)) / (1 - 2 * e)

    def exo_pair(h, p, c):
        z, e = c["beta"] * h, torch.tensor(c["epsilon"], dtype=h.dtype)
        return (torch.sigmoid(z) * (ls(z) - torch.log1p(-e))
                + torch.sigmoid(-z) * (ls(-z) - torch.log(e)))

    def discopop(h, p, c):
        z = c["beta"] * h
        m = torch.sigmoid(z / c["tau"])
        return (1 - m) * (-ls(z)) + m * torch.exp(-z)

    def simpo(h, p, c):
        return -ls(c["beta"] * h - c["gamma"])

    return {"dpo": dpo, "cdpo": cdpo, "ipo": ipo, "cipo": cipo, "ropo": ropo, "hinge": hinge,
            "robust": robust, "exo_pair": exo_pair, "discopop": discopop, "simpo": simpo,
            "gdpo": geometric(dpo), "gipo": geometric(ipo), "gropo": geometric(ropo)}


MARGIN_LOSSES = _margin_losses()
AVERAGING_LOSSES = {"simpo"}  # margins always from length-averaged log-probs


def sequence_logps(logits, labels, offsets, average, ignore_index=-100, token_weights=None):
    """(L_s or L_s / n_s, n_s) from [N, V] logits, [N] labels, [S + 1] offsets;
    L_s = sum of w_t log p_t with token_weights [N]."""
    z = logits.double()
    logp = torch.log_softmax(z, dim=-1)
    scored = labels != ignore_index
    tok = logp.gather(1, torch.where(scored, labels, 0).long()[:, None]).squeeze(1)
    if token_weights is not None:
        tok = tok * token_weights.double()
    tok = torch.where(scored, tok, torch.zeros_like(tok))
    s = offsets.numel() - 1
    lengths = (offsets[1:] - offsets[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(s), lengths)
    end = int(offsets[-1])
    total = torch.zeros(s, dtype=torch.float64).index_add(0, seg, tok[:end])
    n = torch.zeros(s, dtype=torch.float64).index_add(0, seg, scored[:end].double())
    if average:
        total = torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total))
    return total, n


def pref_loss(logits, labels, offsets, loss, *, pairs=None, soft=None, ref=None, weights=None,
              beta=0.1, alpha=1.0, gamma=0.0, epsilon=0.0, tau=0.05, average=False,
              reduction="mean", normalizer=None, ignore_index=-100, token_weights=None):
    """(loss, seq_logps, metrics list in METRIC_NAMES order), float64."""
    avg = average or loss in AVERAGING_LOSSES
    L, _ = sequence_logps(logits, labels, offsets, avg, ignore_index, token_weights)
    s = L.numel()
    if pairs is None:
        P = s // 2
        a, b = torch.arange(P), torch.arange(P, 2 * P)
    else:
        P = pairs.shape[0]
        a, b = pairs[:, 0].long(), pairs[:, 1].long()
    R = ref.double() if ref is not None else torch.zeros(s, dtype=torch.float64)
    p = soft.double() if soft is not None else torch.ones(P, dtype=torch.float64)
    w = weights.double() if weights is not None else torch.ones(P, dtype=torch.float64)
    ra, rb = L[a] - R[a], L[b] - R[b]
    h = ra - rb
    cfg = dict(beta=beta, alpha=alpha, gamma=gamma, epsilon=epsilon, tau=tau)
    f = w * MARGIN_LOSSES[loss](h, p, cfg)
    if reduction == "none":
        value = f
    elif reduction == "sum":
        value = f.sum()
    elif reduction == "normalizer":
        value = f.sum() / normalizer
    else:
        value = f.sum() / max(P, 1)
    with torch.no_grad():
        rc, rr = beta * ra, beta * rb
        metrics = [rc.mean(), rr.mean(), (rc > rr).double().mean(), (rc - rr).mean(),
                   L[a].mean(), L[b].mean(), (torch.sigmoid(beta * h) - p).abs().mean()]
    return value, L, [float(m) for m in metrics]
