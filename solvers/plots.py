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


def run_labels(paths, runs) -> list[str]:
    """A label per run: the solver fields that differ between the runs (from each file's "run" record, written
    when training starts), else the part of the file names that differs."""
    solvers = [next((r.get("solver") for r in recs if r.get("phase") == "run"), None) or {} for recs in runs]
    keys = sorted({k for s in solvers for k in s})
    differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in solvers}) > 1]
    if len(runs) > 1 and differ:
        return [", ".join(f"{k}={s.get(k)}" for k in differ) for s in solvers]
    names = [os.path.abspath(p).replace("_metrics.jsonl", "") for p in paths]
    common = os.path.commonpath(names) if len(names) > 1 else os.path.dirname(names[0])
    return [os.path.relpath(n, common) if n != common else os.path.basename(n) for n in names]


def plot_metrics(paths, output: str):
    """Training and test loss, test accuracy and the learning rate against iteration, runs overlaid: one colour
    per run in every panel, test points marked, the rate as steps, the loss on a log axis when it spans more
    than two decades."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    runs = [read_metrics(p) for p in paths]
    low, high = float("inf"), 0.0
    for k, (recs, name) in enumerate(zip(runs, run_labels(paths, runs))):
        colour = f"C{k % 10}"
        train = [r for r in recs if r.get("phase") == "train" and isinstance(r.get("loss"), (int, float))]
        test = [r for r in recs if r.get("phase") == "test" and isinstance(r.get("loss"), (int, float))]
        for series, style, what in ((train, "-", "train"), (test, "o--", "test")):
            if series:
                marker = "o" if len(series) == 1 or what == "test" else None
                ax_loss.plot([r["iter"] for r in series], [r["loss"] for r in series], style if marker is None else
                             style.replace("o", ""), marker=marker, color=colour, label=f"{name} {what}")
                positive = [r["loss"] for r in series if r["loss"] > 0]
                if positive:
                    low, high = min(low, min(positive)), max(high, max(positive))
        acc = [r for r in test if isinstance(r.get("accuracy"), (int, float))]
        if acc:
            ax_acc.plot([r["iter"] for r in acc], [r["accuracy"] for r in acc], "o-", color=colour, label=name)
        rates = sorted({(r["iter"], r["lr"]) for r in recs if r.get("phase") in ("train", "lr")
                        and isinstance(r.get("lr"), (int, float))})
        if rates:
            ax_lr.plot([i for i, _ in rates], [v for _, v in rates], drawstyle="steps-post", color=colour,
                       marker="o" if len(rates) == 1 else None, label=name)
    if high > 0 and low < float("inf") and high / low > 100:
        ax_loss.set_yscale("log")
    rates = [v for line in ax_lr.lines for v in line.get_ydata() if v > 0]
    if rates and max(rates) / min(rates) >= 10:
        ax_lr.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("test accuracy")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
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
