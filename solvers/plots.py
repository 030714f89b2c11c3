"""Curves from metrics files, through the optional `plots` extra (matplotlib)."""
from __future__ import annotations

import json
import os

from netspec.errors import UserError


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'yaffe[plots]' (or pip install matplotlib); the "
                        "metrics files are JSON lines that any tool can read") from None
    return plt


def read_metrics(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such metrics file") from None
    except ValueError as e:
        raise UserError(f"{path}: error: not a JSON-lines metrics file ({e})") from None


def plot_metrics(paths, output: str):
    """Training and test loss, test accuracy and the learning rate against iteration; runs overlaid."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    for path in paths:
        recs, name = read_metrics(path), os.path.basename(path).replace("_metrics.jsonl", "")
        train = [r for r in recs if r.get("phase") == "train" and r.get("loss") is not None]
        test = [r for r in recs if r.get("phase") == "test"]
        ax_loss.plot([r["iter"] for r in train], [r["loss"] for r in train], label=f"{name} train")
        if test:
            ax_loss.plot([r["iter"] for r in test], [r["loss"] for r in test], "o-", label=f"{name} test")
            acc = [r for r in test if isinstance(r.get("accuracy"), (int, float))]
            ax_acc.plot([r["iter"] for r in acc], [r["accuracy"] for r in acc], "o-", label=name)
        lr = [r for r in train if r.get("lr") is not None]
        ax_lr.plot([r["iter"] for r in lr], [r["lr"] for r in lr], label=name)
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("test accuracy")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def plot_lr(result: dict, output: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r for r in result["rows"] if r[2] == r[2]]
    ax.semilogx([r[0] for r in rows], [r[1] for r in rows], color="0.75", lw=0.8, label="loss")
    ax.semilogx([r[0] for r in rows], [r[2] for r in rows], color="C0", label="smoothed")
    marks = (("too_small", "0.4", ":", "too small below"), ("diverges", "C3", ":", "diverges from"),
             ("suggested", "C2", "--", "suggested"))
    for key, colour, style, what in marks:
        if result.get(key):
            ax.axvline(result[key], color=colour, ls=style, label=f"{what} {result[key]:.3g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
