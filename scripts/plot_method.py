#!/usr/bin/env python3
"""Regenerates the figures of docs/method.md from the two examples.

Runs examples/gradient_scale and examples/bandit with the commands that
docs/method.md documents, then draws

  docs/figures/gradient_scale.png   gradient factor of dpo, cdpo, gdpo vs the margin
  docs/figures/bandit.png           the 1-D bandit: data, labels, learned policies, training
  docs/figures/bandit_beta.png      the learned cdpo/dpo/gdpo policies for several beta

Usage:  python3 scripts/plot_method.py [--build build] [--out docs/figures]
Needs numpy and matplotlib (python3 -m pip install numpy matplotlib); the
examples themselves need neither, and CI does not run this script.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"dpo": "tab:blue", "cdpo": "tab:orange", "gdpo": "tab:green",
          "ipo": "tab:purple", "gipo": "tab:olive"}


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [r[k] for r in rows] for k in rows[0]}


def floats(xs):
    return np.array([float(x) for x in xs])


def plot_gradient_scale(path, out):
    d = read_csv(path)
    p_all = floats(d["p_hat"])
    h_all = floats(d["h"])
    bh_all = floats(d["beta_h"])
    ps = sorted(set(p_all))
    fig, axes = plt.subplots(1, len(ps), figsize=(4 * len(ps), 3.4), sharey=True)
    for ax, p in zip(axes, ps):
        m = p_all == p
        h = h_all[m]
        for name in ("dpo", "cdpo", "gdpo"):
            ax.plot(h, floats(np.array(d[name])[m]), color=COLORS[name], label=name,
                    lw=2 if name == "gdpo" else 1.5)
        ax.axhline(0, color="gray", lw=0.7)
        if p < 1:
            beta = bh_all[m][-1] / h[-1]
            h_star = np.log(p / (1 - p)) / beta
            ax.axvline(h_star, color=COLORS["cdpo"], ls=":", lw=1)
        ax.set_title(f"p̂ = {p:g}")
        ax.set_xlabel("margin h")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gradient factor  −f′(h)/β")
    axes[0].legend(loc="lower left")
    beta = bh_all[-1] / h_all[-1]
    fig.suptitle(f"Gradient scale of dpo, cdpo, gdpo (β = {beta:g}); "
                 "dotted: cdpo's zero at σ(βh) = p̂", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_bandit(dist_path, trace_path, pairs_path, out):
    d = read_csv(dist_path)
    a = floats(d["action"])
    reward = floats(d["reward"])
    losses = [k for k in d if k not in ("action", "reward", "data_freq", "data_prob", "ref_prob")]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))

    ax0 = ax[0, 0]
    ax0.bar(a, floats(d["data_freq"]), width=1.0, color="lightgray", label="training actions")
    ax0.plot(a, floats(d["ref_prob"]), color="black", lw=1, label="π_ref (data-fitted)")
    ax0.set_xlabel("action")
    ax0.set_ylabel("probability")
    ax0r = ax0.twinx()
    ax0r.plot(a, reward, color="tab:red", lw=1.5, label="true reward r(a)")
    ax0r.set_ylabel("reward", color="tab:red")
    h0, l0 = ax0.get_legend_handles_labels()
    h1, l1 = ax0r.get_legend_handles_labels()
    ax0.legend(h0 + h1, l0 + l1, loc="upper right", fontsize=8)
    ax0.set_title("data and reward")

    p = read_csv(pairs_path)
    ax1 = ax[0, 1]
    ax1.hist(floats(p["p_hat"]), bins=np.linspace(0.5, 1.0, 26), color="gray")
    ax1.set_xlabel("soft label p̂ = σ(r(a) − r(b)) of the training pairs")
    ax1.set_ylabel("pairs")
    ax1.set_title("preference labels")

    ax2 = ax[1, 0]
    ax2.fill_between(a, floats(d["ref_prob"]), color="lightgray", step="mid", label="π_ref")
    for name in losses:
        main = name in ("dpo", "cdpo", "gdpo")
        ax2.plot(a, floats(d[name]), color=COLORS.get(name), lw=1.8 if main else 0.9,
                 ls="-" if main else "--", label=name, drawstyle="steps-mid")
    ax2r = ax2.twinx()
    ax2r.plot(a, reward, color="tab:red", lw=0.8, alpha=0.5)
    ax2r.set_yticks([])
    ax2.set_xlabel("action")
    ax2.set_ylabel("learned π(a)")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_title("learned action distributions (red: reward)")

    t = read_csv(trace_path)
    ax3 = ax[1, 1]
    names = np.array(t["loss"])
    for name in losses:
        m = names == name
        main = name in ("dpo", "cdpo", "gdpo")
        ax3.plot(floats(np.array(t["step"])[m]), floats(np.array(t["expected_reward"])[m]),
                 color=COLORS.get(name), lw=1.8 if main else 0.9, ls="-" if main else "--",
                 label=name)
    ax3.set_xlabel("gradient step")
    ax3.set_ylabel("expected true reward E_π[r]")
    ax3.legend(fontsize=8)
    ax3.grid(alpha=0.3)
    ax3.set_title("expected reward during training")

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_bandit_beta(runs, out):
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), sharey=True)
    for ax, (beta, path) in zip(axes, runs):
        d = read_csv(path)
        a = floats(d["action"])
        ax.fill_between(a, floats(d["ref_prob"]), color="lightgray", step="mid", label="π_ref")
        for name in ("dpo", "cdpo", "gdpo"):
            ax.plot(a, floats(d[name]), color=COLORS[name], lw=1.5, label=name,
                    drawstyle="steps-mid")
        ax.set_title(f"β = {beta}")
        ax.set_xlabel("action")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1)
    axes[0].set_ylabel("learned π(a)  (log scale)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default="build", help="CMake build directory with the examples")
    ap.add_argument("--out", default=os.path.join("docs", "figures"))
    args = ap.parse_args()
    gs = os.path.join(args.build, "examples", "gradient_scale", "gradient_scale")
    bd = os.path.join(args.build, "examples", "bandit", "bandit")
    for exe in (gs, bd):
        if not os.access(exe, os.X_OK):
            sys.exit(f"{exe} not found: build it first (cmake --build {args.build} "
                     f"--target gradient_scale bandit)")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        j = lambda name: os.path.join(tmp, name)  # noqa: E731
        run([gs, "--csv", j("gradient_scale.csv")])
        plot_gradient_scale(j("gradient_scale.csv"), os.path.join(args.out, "gradient_scale.png"))

        run([bd, "--seed", "1", "--csv", j("bandit.csv"), "--trace", j("trace.csv"),
             "--pairs-csv", j("pairs.csv")])
        plot_bandit(j("bandit.csv"), j("trace.csv"), j("pairs.csv"),
                    os.path.join(args.out, "bandit.png"))

        runs = []
        for beta in ("0.5", "1", "2"):
            path = j(f"bandit_beta{beta}.csv")
            run([bd, "--seed", "1", "--beta", beta, "--losses", "dpo,cdpo,gdpo", "--csv", path])
            runs.append((beta, path))
        plot_bandit_beta(runs, os.path.join(args.out, "bandit_beta.png"))
    print("wrote", ", ".join(os.path.join(args.out, f) for f in
                             ("gradient_scale.png", "bandit.png", "bandit_beta.png")))


if __name__ == "__main__":
    main()
