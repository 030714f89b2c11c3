"""Learning-rate policies, with Caffe's formulas (`iter` = completed updates).

fixed: base_lr                         step: base_lr * gamma^floor(iter/stepsize)
exp: base_lr * gamma^iter               inv: base_lr * (1 + gamma*iter)^(-power)
multistep: base_lr * gamma^current_step (advances by at most one per call)
poly: base_lr * (1 - iter/max_iter)^power      sigmoid: base_lr / (1 + exp(-gamma*(iter - stepsize)))
plateau: base_lr * gamma^drops (at least min_lr); a drop when the test loss has not improved for `patience`
tests, restarting from the best test's weights (yaffe's; not in Caffe)
"""
from __future__ import annotations

import math

import numpy as np

REQUIRED = {"fixed": (), "step": ("stepsize", "gamma"), "exp": ("gamma",), "inv": ("gamma", "power"),
            "multistep": ("stepvalue", "gamma"), "poly": ("power",), "sigmoid": ("gamma", "stepsize"),
            "plateau": ()}


def missing_fields(cfg) -> list[str]:
    """Fields the configured policy needs but the solver does not give."""
    return [f for f in REQUIRED[cfg.lr_policy] if getattr(cfg, f) in (None, [])]


class LearningRate:
    """rate(iter) for a resolved solver config; `current_step` is multistep's state (snapshotted)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.current_step = 0
        self.plateau_scale = 1.0  # plateau: gamma^(number of drops so far)

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
        else:
            raise ValueError(f"unknown lr_policy {policy!r}")
        return float(np.float32(rate))  # Caffe computes the rate as a float
