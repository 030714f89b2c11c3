"""Learning-rate policies, with Caffe's formulas (`iter` = completed updates).

fixed: base_lr                         step: base_lr * gamma^floor(iter/stepsize)
exp: base_lr * gamma^iter               inv: base_lr * (1 + gamma*iter)^(-power)
multistep: base_lr * gamma^current_step (advances by at most one per call)
poly: base_lr * (1 - iter/max_iter)^power      sigmoid: base_lr / (1 + exp(-gamma*(iter - stepsize)))
plateau: base_lr * gamma^drops (at least min_lr); a drop when the test loss has not improved for `patience`
tests, restarting from the best test's weights (yaffe's; not in Caffe)
cosine: min_lr + (base_lr - min_lr) * (1 + cos(pi * t / C)) / 2, t = iter mod C, C = cosine_cycle or max_iter
onecycle: from base_lr / div_factor up to base_lr over pct_start of max_iter, then down to
  base_lr / div_factor / final_div_factor, both halves along a cosine (PyTorch's OneCycleLR, anneal "cos"); with
  cycle_momentum the momentum goes the other way, max_momentum -> base_momentum -> max_momentum
warmup (any policy): times warmup_start_factor + (1 - warmup_start_factor) * iter / warmup_iter while
  iter < warmup_iter
"""
from __future__ import annotations

import math

import numpy as np

REQUIRED = {"fixed": (), "step": ("stepsize", "gamma"), "exp": ("gamma",), "inv": ("gamma", "power"),
            "multistep": ("stepvalue", "gamma"), "poly": ("power",), "sigmoid": ("gamma", "stepsize"),
            "plateau": (), "cosine": ("max_iter",), "onecycle": ("max_iter",)}


def missing_fields(cfg) -> list[str]:
    """Fields the configured policy needs but the solver does not give."""
    return [f for f in REQUIRED[cfg.lr_policy] if getattr(cfg, f) in (None, [])]


class LearningRate:
    """rate(iter) for a resolved solver config; `current_step` is multistep's state (snapshotted)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.current_step = 0
        self.plateau_scale = 1.0  # plateau: gamma^(number of drops so far)

    def momentum(self, it: int) -> float | None:
        """onecycle with cycle_momentum: the momentum of iteration `it`, the rate's cycle mirrored between
        max_momentum and base_momentum along the same cosines (PyTorch's OneCycleLR); else None (the solver's)."""
        c = self.cfg
        if c.lr_policy != "onecycle" or not c.cycle_momentum:
            return None
        low, high = c.base_momentum, c.max_momentum
        up = max(1.0, c.pct_start * c.max_iter)
        if it <= up:
            return high - (high - low) * (1 - math.cos(math.pi * it / up)) / 2
        down = max(1.0, c.max_iter - up)
        return low + (high - low) * (1 - math.cos(math.pi * min(it - up, down) / down)) / 2

    def __call__(self, it: int) -> float:
        c = self.cfg
        policy, base = c.lr_policy, c.base_lr
        if policy == "fixed":
            rate = base
        elif policy == "step":
            rate = base * c.gamma ** (it // c.stepsize)
        elif policy == "exp":
            rate = base * c.gamma ** it
        elif policy == "inv":
            rate = base * (1.0 + c.gamma * it) ** (-c.power)
        elif policy == "multistep":
            if self.current_step < len(c.stepvalue) and it >= c.stepvalue[self.current_step]:
                self.current_step += 1
            rate = base * c.gamma ** self.current_step
        elif policy == "poly":
            rate = base * (1.0 - it / c.max_iter) ** c.power if c.max_iter else base
        elif policy == "sigmoid":
            rate = base / (1.0 + math.exp(-c.gamma * (it - c.stepsize)))
        elif policy == "plateau":  # lowered by the trainer when the test loss stops improving
            rate = max(base * self.plateau_scale, c.min_lr)
        elif policy == "cosine":
            cycle = c.cosine_cycle or c.max_iter
            rate = c.min_lr + (base - c.min_lr) * (1 + math.cos(math.pi * (it % cycle) / cycle)) / 2
        elif policy == "onecycle":
            start = base / c.div_factor
            end = start / c.final_div_factor
            up = max(1.0, c.pct_start * c.max_iter)
            if it <= up:
                rate = start + (base - start) * (1 - math.cos(math.pi * it / up)) / 2
            else:
                down = max(1.0, c.max_iter - up)
                rate = end + (base - end) * (1 + math.cos(math.pi * min(it - up, down) / down)) / 2
        else:
            raise ValueError(f"unknown lr_policy {policy!r}")
        if c.warmup_iter and it < c.warmup_iter:
            f = c.warmup_start_factor
            rate *= f + (1 - f) * it / c.warmup_iter
        return float(np.float32(rate))  # Caffe computes the rate as a float
