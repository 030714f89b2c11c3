"""From a loaded net spec to an ordered list of layer definitions for one phase.

Steps (Caffe's net.cpp and insert_splits.cpp): phase filtering with include/exclude
rules; scalars of repeated fields become lists; a check that every bottom is produced
by an earlier layer and that no top has two producers; default loss weights; and
automatic Split layers for a blob version read by several layers (their gradients sum).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import layers
from .errors import Finding, SpecError, did_you_mean
from .loader import Node, Where


def as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


@dataclass
class LayerDef:
    """One layer of the compiled net; `node` is its spec (None for an inserted Split)."""

    name: str
    type: str
    bottoms: list
    tops: list
    node: Node | None
    loss_weights: list = field(default_factory=list)
    params: list = field(default_factory=list)       # [{name, lr_mult, decay_mult}]
    propagate_down: list | None = None
    phase: str = "TRAIN"

    def in_place(self, j: int) -> int | None:
        """The index of the bottom that top j overwrites (in place), or None. In place is Caffe's rule, top j named
        as bottom j, plus a recurrent layer's final state named as its initial state (the state carried across
        batches, layers/recurrent.py)."""
        t = self.tops[j]
        if j < len(self.bottoms) and self.bottoms[j] == t:
            return j
        state = len(self.bottoms) - len(self.tops) + j  # the initial state bottom that matches the final state top j
        if j and getattr(layers.REGISTRY.get(self.type), "carries_state", False) and state >= 2 \
                and self.bottoms[state] == t:
            return state
        return None

    def spec(self) -> dict:
        """The spec with repeated fields as lists, as the layer sees it."""
        out = dict(self.node or {})
        out.update(name=self.name, type=self.type, bottom=list(self.bottoms), top=list(self.tops))
        return out

    def where(self, field_path: str | None = None, index: int | None = None) -> Where:
        """Position of a field ("convolution_param.kernel_size"), or of the layer."""
        node = self.node
        if node is None:
            return Where("<auto>", 0, 0)
        if not field_path:
            return node.where
        parts = field_path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                return node.where if isinstance(node, Node) else Where("<auto>", 0, 0)
            child = node[part]
            if i == len(parts) - 1 or not isinstance(child, Node):
                if index is not None and hasattr(child, "at"):
                    return child.at(index)
                return node.at(part)
            node = child
        return node.where


def rule_met(rule: dict, phase: str, level: int, stages) -> bool:
    """Caffe's NetStateRule: every condition that is given must hold."""
    if "phase" in rule and rule["phase"] != phase:
        return False
    if "min_level" in rule and level < rule["min_level"]:
        return False
    if "max_level" in rule and level > rule["max_level"]:
        return False
    if any(s not in stages for s in as_list(rule.get("stage"))):
        return False
    return not any(s in stages for s in as_list(rule.get("not_stage")))


def included(node: dict, phase: str, level: int, stages) -> bool:
    include, exclude = as_list(node.get("include")), as_list(node.get("exclude"))
    if include:
        return any(rule_met(r, phase, level, stages) for r in include)
    return not any(rule_met(r, phase, level, stages) for r in exclude)


def _err(findings, where, message):
    findings.append(Finding(where[0], where[1], where[2], "error", message))


def legacy_input_layer(doc: dict, warnings: list | None) -> Node | None:
    """Caffe's deprecated net-level `input:` + `input_dim:`/`input_shape:` as an Input layer node."""
    if "input" not in doc:
        return None
    names = as_list(doc["input"])
    if "input_shape" in doc:
        shapes = [dict(s) for s in as_list(doc["input_shape"])]
    else:
        dims = as_list(doc.get("input_dim"))
        shapes = [{"dim": dims[4 * i:4 * i + 4]} for i in range(len(dims) // 4)]
    node = Node(name="input", type="Input", top=names, input_param={"shape": shapes})
    node.where = doc.at("input")
    node.key_where = {k: node.where for k in node}
    node.value_where = dict(node.key_where)
    if warnings is not None:
        w = node.where
        warnings.append(Finding(w[0], w[1], w[2], "warning", "the net-level input/input_dim fields are "
                                "deprecated; they were read as an Input layer: write layer: [{name: input, "
                                f"type: Input, top: {names}, input_param: {{shape: [{{dim: [...]}}]}}}}, ...]"))
    return node


def compile_net(doc: dict, phase: str = "TRAIN", level: int = 0, stages=(),
                warnings: list | None = None) -> list[LayerDef]:
    """The ordered layer definitions of `doc` in `phase`; all errors at once as a SpecError.

    Warnings (deprecated fields) are appended to `warnings` when it is given.
    """
    findings: list[Finding] = []
    defs: list[LayerDef] = []
    producers_any_phase: dict = {}
    legacy = legacy_input_layer(doc, warnings)
    nodes = ([legacy] if legacy else []) + list(doc.get("layer", []))
    for node in nodes:
        for t in as_list(node.get("top")):
            producers_any_phase.setdefault(t, node)
    names: dict = {}
    for node in nodes:
        name, type_ = node["name"], node["type"]
        label = f"layer '{name}' ({type_})"
        if node.get("include") and node.get("exclude"):
            _err(findings, node.at("exclude"), f"{label}: give either include or exclude rules, not both; "
                                               "keep one of them")
        if not included(node, phase, level, stages):
            continue
        if name in names and warnings is not None:  # Caffe accepts it (its MNIST autoencoder has two 'loss')
            w = node.at("name")
            first = getattr(names[name], "where", None)  # a net built in Python has no positions
            at = f"layer at line {first.line}" if first is not None and first.line else "an earlier layer"
            warnings.append(Finding(w[0], w[1], w[2], "warning", f"{label}: the name '{name}' is already used by the "
                                    f"{at} in the {phase} net; Caffe accepts it, but "
                                    "weights are loaded by layer name (snapshots keep them apart as "
                                    f"'{name}' and '{name}@2'): give each layer its own name"))
        names.setdefault(name, node)
        cls = layers.REGISTRY[type_]
        own = {cls.param_block, *cls.other_blocks}
        if "blobs" in node and warnings is not None:
            w = node.at("blobs")
            warnings.append(Finding(w[0], w[1], w[2], "warning", f"{label}: weights embedded in the net (blobs) are "
                                    "ignored; load weights with --weights (a .caffemodel or .weights.npz)"))
        for key in node:
            if not (key.endswith("_param") and key not in own):
                continue
            if key == "transform_param" and type_ == "DummyData":
                if warnings is not None:  # harmless (pycaffe's own net_spec test gives one): Caffe ignores it
                    w = node.at(key)
                    warnings.append(Finding(w[0], w[1], w[2], "warning", f"{label}: DummyData ignores "
                                            "transform_param (as Caffe does); remove it"))
            elif key == "transform_param" and cls.is_data:
                _err(findings, node.at(key), f"{label}: {type_} does not transform its data (as in Caffe); "
                                             "remove transform_param and preprocess the files")
            elif warnings is not None:
                w = node.at(key)
                warnings.append(Finding(w[0], w[1], w[2], "warning", f"{label}: {key} does not apply to {type_} "
                                        f"layers and is ignored; remove it, or check the layer's type"))
        block = node.get(cls.param_block) if cls.param_block else None
        if isinstance(block, dict) and warnings is not None:  # a shared block's field that this type does not use
            own_fields = {f.name for f in cls.fields}
            for key in block:
                if key not in own_fields:
                    w = block.at(key) if hasattr(block, "at") else node.at(cls.param_block)
                    warnings.append(Finding(w[0], w[1], w[2], "warning", f"{label}: {cls.param_block}.{key} does "
                                            f"not apply to {type_} layers and is ignored; remove it"))
        bottoms, tops = as_list(node.get("bottom")), as_list(node.get("top"))
        if cls.is_loss and not tops:
            tops = [name]  # Caffe gives a loss layer an automatic top
        for what, got, (lo, hi) in (("bottom", bottoms, cls.bottoms), ("top", tops, cls.tops)):
            if len(got) < lo or (hi is not None and len(got) > hi):
                want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
                _err(findings, node.at(what), f"{label}: takes {want} {what}(s); received {len(got)} "
                                              f"{got}; fix the '{what}' list")
        weights = as_list(node.get("loss_weight"))
        if weights and len(weights) != len(tops):
            _err(findings, node.at("loss_weight"), f"{label}: loss_weight needs one value per top "
                                                   f"({len(tops)}); received {weights}")
        if not weights:
            weights = [1.0 if cls.is_loss and i == 0 else 0.0 for i in range(len(tops))]
        params = [dict(p) for p in as_list(node.get("param"))]
        prop = node.get("propagate_down")
        if prop is not None and len(as_list(prop)) != len(bottoms):
            _err(findings, node.at("propagate_down"), f"{label}: propagate_down needs one value per bottom "
                                                      f"({len(bottoms)}); received {as_list(prop)}")
        defs.append(LayerDef(name, type_, bottoms, tops, node, [float(w) for w in weights], params,
                             as_list(prop) if prop is not None else None, node.get("phase", phase)))
    _check_blobs(defs, findings, phase, producers_any_phase)
    if findings:
        raise SpecError(findings)
    defs = insert_splits(defs, findings)
    if findings:
        raise SpecError(findings)
    return defs


def _check_blobs(defs, findings, phase, producers_any_phase):
    produced: dict = {}
    later = {t: d for d in reversed(defs) for t in d.tops}
    for i, d in enumerate(defs):
        label = f"layer '{d.name}' ({d.type})"
        for j, b in enumerate(d.bottoms):
            if b in produced:
                continue
            where = d.where("bottom", j if isinstance(d.node.get("bottom"), list) else None)
            if b in later and later[b] is not d:
                fix = f"layer '{later[b].name}' produces it later in the file: move that layer above this one"
            elif b in producers_any_phase:
                fix = (f"it is produced by layer '{producers_any_phase[b]['name']}', which is not in the "
                       f"{phase} net: include that layer in {phase} or exclude this one from {phase}")
            else:
                fix = "no layer produces it" + (did_you_mean(b, produced).replace("; ", ": ", 1)
                                                 if did_you_mean(b, produced) else
                                                 f"; known blobs: {', '.join(produced) or 'none'}")
            _err(findings, where, f"{label}: bottom '{b}' is not produced by any earlier layer in the "
                                  f"{phase} net; {fix}")
        cls = layers.REGISTRY[d.type]
        for j, t in enumerate(d.tops):
            in_place = d.in_place(j) is not None
            where = d.where("top", j if isinstance(d.node.get("top"), list) else None)
            if in_place and not cls.in_place_ok and d.in_place(j) == j:
                _err(findings, where, f"{label}: cannot compute in place (top '{t}' is also its bottom); "
                                      f"give the top a new name")
            elif t in produced and not in_place:
                _err(findings, where, f"{label}: top '{t}' is already produced by layer "
                                      f"'{produced[t].name}'; give it a new name (only a layer whose top "
                                      "equals its bottom may reuse a name, in place)")
            produced[t] = d


def insert_splits(defs: list[LayerDef], findings) -> list[LayerDef]:
    """Insert a Split after each blob version that several layers read (Caffe's InsertSplits)."""
    version: dict = {}     # blob name -> (producer index, top index) of its current version
    consumers: dict = {}   # (producer index, top index) -> [(consumer index, bottom index)]
    for i, d in enumerate(defs):
        for j, b in enumerate(d.bottoms):
            consumers.setdefault(version[b], []).append((i, j))
        for j, t in enumerate(d.tops):
            version[t] = (i, j)
    out: list[LayerDef] = []
    rename: dict = {}      # (consumer index, bottom index) -> split top name
    for i, d in enumerate(defs):
        d.bottoms = [rename.get((i, j), b) for j, b in enumerate(d.bottoms)]
        out.append(d)
        for j, t in enumerate(d.tops):
            readers = consumers.get((i, j), [])
            has_loss = d.loss_weights[j] != 0
            if len(readers) + has_loss <= 1:
                continue
            base = f"{t}_{d.name}_{j}_split"
            split_tops = [f"{base}_{k}" for k in range(len(readers) + has_loss)]
            weights = [0.0] * len(split_tops)
            if has_loss:
                weights[0], d.loss_weights[j] = d.loss_weights[j], 0.0
            for k, (ci, cj) in enumerate(readers, start=int(has_loss)):
                c = defs[ci]
                if cj < len(c.tops) and c.tops[cj] == t:
                    first = defs[readers[0][0]]
                    _err(findings, c.where("top"), f"layer '{c.name}' ({c.type}) changes '{t}' in place, but "
                         f"layer '{first.name}' listed before it also reads '{t}'; move '{c.name}' above "
                         f"'{first.name}', or give its top a new name")
                rename[(ci, cj)] = split_tops[k]
            out.append(LayerDef(base, "Split", [t], split_tops, None, weights, [], None, d.phase))
    return out
