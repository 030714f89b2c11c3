"""Update rules. Per parameter, after the gradients are summed over iter_size passes:
clip (global L2 norm), divide by iter_size, add weight decay, the solver's rule, w -= step.

All arithmetic in the parameters' dtype (float32), with float32 scalars, like Caffe.
"""
from __future__ import annotations

import numpy as np


class SGD:
    """Momentum SGD: v = momentum*v + local_rate*g; w -= v (the rate sits inside v, as in Caffe)."""

    type = "SGD"

    def __init__(self, params, cfg):
        self.params, self.cfg = params, cfg
        self.history = [np.zeros_like(p.blob.data) for p in params]

    def history_arrays(self) -> dict:
        return {f"{p.key}": h for p, h in zip(self.params, self.history)}

    def load_history(self, arrays: dict, source: str):
        from netspec.errors import UserError
        keys = [p.key for p in self.params]
        if sorted(arrays) != sorted(keys):
            extra, missing = sorted(set(arrays) - set(keys)), sorted(set(keys) - set(arrays))
            raise UserError(f"{source}: error: the snapshot's solver history does not fit this net "
                            f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the net the "
                            "snapshot was taken with, or start from its weights with --weights")
        for p, h in zip(self.params, self.history):
            a = arrays[p.key]
            if a.shape != h.shape:
                raise UserError(f"{source}: error: history of param '{p.key}' has shape {list(a.shape)} "
                                f"but the net's param has {list(h.shape)}; resume with the same net")
            h[...] = a

    def apply_update(self, rate: float):
        cfg = self.cfg
        dtype = self.params[0].blob.data.dtype.type if self.params else np.float32
        if cfg.clip_gradients >= 0:
            norm = float(np.sqrt(sum(float(np.dot(p.blob.diff.ravel(), p.blob.diff.ravel()))
                                     for p in self.params if p.lr_mult)))
            if norm > cfg.clip_gradients:
                scale = dtype(cfg.clip_gradients / norm)
                for p in self.params:
                    p.blob.diff *= scale
        for p, h in zip(self.params, self.history):
            if p.lr_mult == 0:
                continue
            g, w = p.blob.diff, p.blob.data
            if cfg.iter_size > 1:
                g *= dtype(1.0 / cfg.iter_size)
            decay = dtype(cfg.weight_decay * p.decay_mult)
            if decay:
                g += decay * (w if cfg.regularization_type == "L2" else np.sign(w))
            self.rule(g, h, dtype(rate * p.lr_mult))
            w -= g

    def rule(self, g, h, local_rate):
        """Turn the gradient g into the step, in place; h is this param's history."""
        h *= h.dtype.type(self.cfg.momentum)
        h += local_rate * g
        g[...] = h


SOLVERS = {"SGD": SGD}
