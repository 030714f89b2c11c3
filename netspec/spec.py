"""Loading and checking spec files: a net or a solver, YAML, with every finding at once."""
from __future__ import annotations

import os

from layers.base import resolve
from solvers.lr_policy import missing_fields
from solvers.params import SOLVER_FIELDS
from . import schema
from .errors import Finding, SpecError, UserError
from .loader import Node, load


def kind_of(doc) -> str:
    """'net' or 'solver', from the fields a spec holds."""
    if isinstance(doc, dict) and ("layer" in doc or "layers" in doc):
        return "net"
    if isinstance(doc, dict) and ("net" in doc or "base_lr" in doc or "max_iter" in doc):
        return "solver"
    return "net"


def load_net(path: str) -> Node:
    doc = load(path)
    findings = schema.check(doc, schema.net_schema(), path)
    if findings:
        raise SpecError(findings)
    return doc


def solver_findings(doc: Node, path: str) -> list[Finding]:
    """Checks of a schema-valid solver beyond the schema."""
    cfg = resolve(SOLVER_FIELDS, doc)
    out = []

    def err(key, message):
        w = doc.at(key) if key in doc else doc.where
        out.append(Finding(w[0], w[1], w[2], "error", message))

    for f in missing_fields(cfg):
        err("lr_policy", f"lr_policy '{cfg.lr_policy}' needs '{f}', which is not given; add {f}: ...")
    if cfg.lr_policy == "multistep" and any(a >= b for a, b in zip(cfg.stepvalue, cfg.stepvalue[1:])):
        err("stepvalue", f"stepvalue must be increasing; received {cfg.stepvalue}")
    if cfg.lr_policy == "poly" and not cfg.max_iter:
        err("max_iter", "lr_policy 'poly' needs max_iter > 0")
    if cfg.test_interval and not cfg.test_iter:
        err("test_interval", f"test_interval {cfg.test_interval} is set but test_iter is not; add test_iter "
                             "(batches per test pass) or remove test_interval")
    if cfg.clip_gradients == 0:
        err("clip_gradients", "clip_gradients 0 would zero every gradient; use a positive norm, or -1 for off")
    net_path = os.path.join(os.path.dirname(path), cfg.net)
    if not os.path.isfile(net_path):
        err("net", f"net file '{cfg.net}' not found (looked at {net_path}); the path is relative to the "
                   "solver file")
    return out


def load_solver(path: str):
    """(doc, resolved config, net path); raises SpecError with every finding."""
    doc = load(path)
    findings = schema.check(doc, schema.solver_schema(), path)
    if not findings:
        findings = solver_findings(doc, path)
    if findings:
        raise SpecError(findings)
    cfg = resolve(SOLVER_FIELDS, doc)
    return doc, cfg, os.path.join(os.path.dirname(path), cfg.net)


def validate(paths) -> list[Finding]:
    """Every finding of every file (a solver brings its net), in file order."""
    from .net import Net
    findings: list[Finding] = []
    seen = set()
    queue = list(paths)
    while queue:
        path = queue.pop(0)
        if os.path.abspath(path) in seen:
            continue
        seen.add(os.path.abspath(path))
        try:
            doc = load(path)
            kind = kind_of(doc)
            if kind == "solver":
                doc, cfg, net_path = load_solver(path)
                queue.append(net_path)
                continue
            doc = load_net(path)
            for phase in ("TRAIN", "TEST"):
                Net(doc, phase, path, seed=0, allocate=False)  # shapes of both phases; reads no data
        except SpecError as e:
            findings.extend(f for f in e.findings if f not in findings)
        except UserError as e:
            findings.append(Finding(path, 1, 1, "error", str(e).split(": error: ", 1)[-1]))
    return findings
