"""Trains a tiny randomly initialised causal LM with geopref's soft-label DPO
loss for a few steps on CPU, TRL-style, and checks every step against plain
PyTorch: the loss, the metrics, and the gradient of every model parameter.
Nothing is downloaded: the model is built here and the data is random tokens.

    pip install --no-build-isolation ./bindings/torch
    python3 bindings/torch/examples/train_tiny_lm.py [--steps 8] [--loss gdpo] [--fused-linear]

--fused-linear computes geopref's side from the last hidden states and the LM
head (fused_linear_preference_loss, fused_linear_logps for the reference)
instead of the logits: the gradients reach the head's weight and, through
the hidden states, the rest of the model.

The batch is TRL's concatenated layout: P prompts, each with a chosen and a
rejected completion, stacked as [2P, T] (chosen rows first). The plain
formulation follows TRL v0.28's DPOTrainer.concatenated_forward (labels =
input_ids rolled by one, completion mask rolled with them, per-token
log-probs summed per row) and its dpo_loss for loss_type="sigmoid", with the
soft label applied geometrically (margin times 2p - 1) for gdpo.
Exit status 0 when every step agreed, 1 otherwise.
"""
import argparse
import copy
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import geopref_torch as gp


class TinyCausalLM(nn.Module):
    """Embedding, one pre-norm causal self-attention block with an MLP, LM head."""

    def __init__(self, vocab=64, dim=32, heads=4, max_len=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids):
        return self.head(self.hidden(input_ids))  # [B, T, V]

    def hidden(self, input_ids):
        """The last hidden states [B, T, dim]: what the LM head projects."""
        T = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.norm3(x)


def make_batch(gen, P, prompt_len, max_completion, vocab):
    """input_ids [2P, T] (chosen rows first), completion mask [2P, T], soft labels [P]."""
    T = prompt_len + max_completion
    ids = torch.randint(0, vocab, (2 * P, T), generator=gen)
    mask = torch.zeros(2 * P, T, dtype=torch.bool)
    for r in range(2 * P):
        n = int(torch.randint(1, max_completion + 1, (1,), generator=gen))
        mask[r, prompt_len:prompt_len + n] = True
        ids[r, prompt_len + n:] = 0  # padding
    ids[P:, :prompt_len] = ids[:P, :prompt_len]  # a pair shares its prompt
    soft = torch.rand(P, generator=gen)
    return ids, mask, soft


def shifted_labels(input_ids, completion_mask, ignore_index=-100):
    """Row t of the logits scores input_ids[t + 1] where that token is part of
    the completion; every other row (prompt, padding, the last) is ignored."""
    labels = torch.roll(input_ids, shifts=-1, dims=1)
    scored = torch.roll(completion_mask, shifts=-1, dims=1)
    scored[:, -1] = False
    return torch.where(scored, labels, torch.full_like(labels, ignore_index))


def plain_logps(logits, input_ids, completion_mask):
    """TRL v0.28 concatenated_forward's all_logps, op by op."""
    labels = torch.roll(input_ids, shifts=-1, dims=1)
    loss_mask = torch.roll(completion_mask, shifts=-1, dims=1).bool()
    labels = torch.where(loss_mask, labels, torch.zeros_like(labels))
    per_token = torch.gather(logits.float().log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    per_token = torch.where(loss_mask, per_token, torch.zeros_like(per_token))
    per_token = torch.roll(per_token, shifts=1, dims=1)
    return per_token[:, 1:].sum(-1)


def plain_loss(policy_logps, ref_logps, soft, beta, geometric):
    P = soft.numel()
    chosen, rejected = policy_logps[:P], policy_logps[P:]
    h = (chosen - ref_logps[:P]) - (rejected - ref_logps[P:])
    if geometric:
        h = (2 * soft - 1) * h
    loss = -F.logsigmoid(beta * h).mean()
    rc, rr = beta * (chosen - ref_logps[:P]), beta * (rejected - ref_logps[P:])
    metrics = {"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
               "rewards/accuracies": (rc > rr).float().mean(), "rewards/margins": (rc - rr).mean(),
               "logps/chosen": chosen.mean(), "logps/rejected": rejected.mean()}
    # rewards/accuracies counts chosen > rejected: a pair whose two rewards are
    # equal up to rounding (every pair at step 0, when policy = reference) may
    # count differently in double (geopref) and float32 (here); the smallest
    # gap tells the caller whether the comparison is meaningful.
    min_gap = float((rc - rr).detach().abs().min())
    return loss, {k: v.detach() for k, v in metrics.items()}, min_gap


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--loss", default="gdpo", choices=["gdpo", "sigmoid"])
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fused-linear", action="store_true",
                    help="geopref from hidden states and the LM head, not the logits")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    vocab, P = 64, 4
    policy = TinyCausalLM(vocab)
    reference = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    params = [p for p in policy.parameters()]
    failures = 0
    # float32 throughout; the op's loss and log-probs come from double sums of
    # the same float32 logits, the plain path sums in float32: 1e-5 relative
    # covers the plain side's rounding over ~100 tokens and ~1e4 logits.
    rtol, atol = 1e-4, 1e-6
    print(f"{'step':>4} {'loss (geopref)':>15} {'loss (plain)':>13} {'max |dgrad|':>12} "
          f"{'accuracy':>9} {'margin':>8}")
    for step in range(args.steps):
        ids, mask, soft = make_batch(gen, P, prompt_len=5, max_completion=9, vocab=vocab)
        labels = shifted_labels(ids, mask)
        logits = policy(ids)
        if args.fused_linear:  # never the [2P, T, V] logits on geopref's side
            with torch.no_grad():
                ref_logps = gp.fused_linear_logps(reference.hidden(ids), reference.head.weight,
                                                  labels)
            out = gp.fused_linear_preference_loss(policy.hidden(ids), policy.head.weight, labels,
                                                  loss_type=args.loss, beta=args.beta,
                                                  soft_labels=soft, ref_logps=ref_logps)
        else:
            with torch.no_grad():  # the reference model's pass: the same op, forward only
                ref_logps = gp.sequence_logps(reference(ids), labels)
            out = gp.dpo_loss(logits, labels, loss_type=args.loss, beta=args.beta,
                              soft_labels=soft, ref_logps=ref_logps)
        grads = torch.autograd.grad(out.loss, params, retain_graph=True)

        with torch.no_grad():
            ref_plain = plain_logps(reference(ids), ids, mask)
        loss_p, metrics_p, min_gap = plain_loss(plain_logps(logits, ids, mask), ref_plain, soft,
                                       args.beta, geometric=args.loss == "gdpo")
        grads_p = torch.autograd.grad(loss_p, params)

        ok = torch.allclose(out.loss, loss_p, rtol=rtol, atol=atol)
        ok &= torch.allclose(ref_logps, ref_plain, rtol=rtol, atol=atol)
        for k, v in metrics_p.items():
            if k == "rewards/accuracies" and min_gap < 1e-5:
                continue  # a tie within rounding: either count is right
            ok &= torch.allclose(out.metrics[k].float(), v, rtol=rtol, atol=atol)
        worst = 0.0
        for g, gp_ in zip(grads, grads_p):
            worst = max(worst, float((g - gp_).abs().max()))
            ok &= torch.allclose(g, gp_, rtol=rtol, atol=atol)
        m = gp.metrics_to_floats(out.metrics)
        print(f"{step:>4} {out.loss.item():>15.7f} {loss_p.item():>13.7f} {worst:>12.2e} "
              f"{m['rewards/accuracies']:>9.3f} {m['rewards/margins']:>8.4f}"
              + ("" if ok else "   MISMATCH"))
        failures += 0 if ok else 1
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"{args.steps - failures} of {args.steps} steps agreed with plain PyTorch "
          f"(loss, metrics, every parameter's gradient)")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
