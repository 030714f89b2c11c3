"""Loading and checking spec files: a net or a solver, YAML, with every finding at once."""
from __future__ import annotations

import os

from layers.base import resolve
from solvers.lr_policy import missing_fields
from solvers.params import SOLVER_FIELDS
from . import schema
from .errors import Finding, SpecError, UserError
from .loader import Node, Where, load


def kind_of(doc) -> str:
    """'net' or 'solver', from the fields a spec holds."""
    if isinstance(doc, dict) and ("layer" in doc or "layers" in doc):
        return "net"
    if isinstance(doc, dict) and ("net" in doc or "train_net" in doc or "base_lr" in doc or "max_iter" in doc):
        return "solver"
    return "net"


INLINE = "#"  # "solver.prototxt#net_param": a net given inline in a solver


def caffe_relative(file: str, name: str, doc=None) -> str:
    """A path named in a spec: relative to the spec file for YAML; for a Caffe prototxt relative to the working
    directory, as Caffe reads it, or to the file where only that exists (noted in the doc's notes)."""
    from .loader import is_caffe
    beside = os.path.join(os.path.dirname(file), name)
    if os.path.isabs(name) or not is_caffe(file) or INLINE in os.path.basename(file):
        return beside
    if os.path.exists(name) or not os.path.exists(beside):
        return name
    if doc is not None and hasattr(doc, "notes"):
        doc.notes.append(Finding(file, 1, 1, "info", f"'{name}' is not in the working directory ({os.getcwd()}), "
                                 "where Caffe looks; read from beside the solver instead"))
    return beside


def load_net(path: str) -> Node:
    """A checked net spec from a file, or from a solver's inline field ("solver.prototxt#net_param")."""
    if INLINE in os.path.basename(path):
        file, field = path.rsplit(INLINE, 1)
        field, _, index = field.partition(".")  # "test_net_param.1": the second of several
        solver = load(file)
        doc = solver.get(field)
        doc = doc[int(index or 0)] if isinstance(doc, list) and len(doc) > int(index or 0) else doc
        if not isinstance(doc, dict):
            w = solver.at(field) if isinstance(solver, Node) else (file, 1, 1)
            raise SpecError([Finding(w[0], w[1], w[2], "error", f"{field} must be a net message {{ layer {{ ... }} }}")])
        doc.notes = getattr(solver, "notes", [])
        path = file
    else:
        doc = load(path)
    findings = schema.check(doc, schema.net_schema(), path)
    if findings:  # the layers the schema passed are still checked: their parameters, and the shapes of those
        raise SpecError(findings + parameter_findings(doc) + known_part_findings(doc, path))  # above known types
    return doc


def known_part_findings(doc, path) -> list[Finding]:
    """The shape checks of a net whose schema failed, on its part that can be built: every layer whose own type
    and the types of all the layers below it are known (layers of unknown type, and those that read what they
    make, left out). Only errors of layers of that part are kept."""
    import layers
    from .graph import as_list
    from .loader import Node, NodeList
    from .net import Net
    nodes = doc.get("layer") if isinstance(doc, dict) else None
    if not isinstance(nodes, list):
        return []
    lost, kept = set(), NodeList()
    kept.where, kept.item_where = getattr(nodes, "where", Where(path, 1, 1)), []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            continue
        bottoms, tops = as_list(node.get("bottom")), as_list(node.get("top"))
        known = isinstance(node.get("type"), str) and node.get("type") in layers.REGISTRY
        if not known or any(b in lost for b in bottoms if isinstance(b, str)):
            lost.update(t for t in tops if isinstance(t, str))
            continue
        if not all(isinstance(v, str) for v in bottoms + tops):
            return []  # the schema reports it; the part cannot be named
        kept.append(node)
        kept.item_where.append(nodes.at(i) if hasattr(nodes, "at") else kept.where)
    if len(kept) == len(nodes) or not kept:
        return []
    part = Node(doc)
    part.where, part.key_where, part.value_where = doc.where, doc.key_where, doc.value_where
    part["layer"] = kept
    names = {n.get("name") for n in kept if isinstance(n.get("name"), str)}
    out = []
    for phase in ("TRAIN", "TEST"):
        try:
            Net(part, phase, path, seed=0, allocate=False)
        except SpecError as e:
            out += [f for f in e.findings if f.severity == "error" and "layer '" in f.message
                    and f.message.split("layer '")[1].split("'")[0] in names]
        except Exception:  # noqa: BLE001: the part is a best effort; the schema's errors stand
            pass
    return list(dict.fromkeys(out))


def _at(doc: Node, key: str, severity: str, message: str) -> Finding:
    """A finding at a solver field (or at the solver, where the field is not written)."""
    w = doc.at(key) if key in doc else doc.where
    return Finding(w[0], w[1], w[2], severity, message)


def _schedule_findings(cfg, doc: Node) -> list[Finding]:
    """Warnings of a learning-rate schedule that does not do what its policy is for: a decay that grows the rate,
    steps the run never reaches."""
    out = []

    def warn(key, message):
        out.append(_at(doc, key, "warning", message))

    g = cfg.gamma
    if cfg.lr_policy in ("step", "multistep", "exp") and g is not None and g > 1:
        when = "every iteration" if cfg.lr_policy == "exp" else "at each step"
        usual = "0.9999 or so" if cfg.lr_policy == "exp" else "0.1"
        warn("gamma", f"gamma {g:g} > 1 with lr_policy '{cfg.lr_policy}' multiplies the rate by {g:g} {when}: it "
                      f"grows instead of decaying, and training diverges once it is too high; a decay is gamma < 1 "
                      f"(usually {usual})")
    if cfg.max_iter and cfg.lr_policy == "step" and cfg.stepsize and cfg.stepsize >= cfg.max_iter:
        warn("stepsize", f"stepsize {cfg.stepsize} >= max_iter {cfg.max_iter}: the rate never steps down in this run; "
                         f"a stepsize of about max_iter / 3 ({max(1, cfg.max_iter // 3)}) gives it two steps")
    if cfg.max_iter and cfg.lr_policy == "multistep" and cfg.stepvalue and cfg.stepvalue[-1] >= cfg.max_iter:
        late = [v for v in cfg.stepvalue if v >= cfg.max_iter]
        one = len(late) == 1
        warn("stepvalue", f"stepvalue {', '.join(map(str, late))} {'is' if one else 'are'} at or past max_iter "
                          f"{cfg.max_iter}: the run ends before {'that step' if one else 'those steps'}")
    return out


def solver_findings(doc: Node, path: str) -> list[Finding]:
    """Checks of a schema-valid solver beyond the schema."""
    cfg = resolve(SOLVER_FIELDS, doc)
    out = []

    def err(key, message):
        out.append(_at(doc, key, "error", message))

    for f in missing_fields(cfg):
        err("lr_policy", f"lr_policy '{cfg.lr_policy}' needs '{f}', which is not given; add {f}: ...")
    if cfg.lr_policy in ("step", "multistep", "exp", "inv") and cfg.gamma is not None and cfg.gamma < 0:
        err("gamma", f"gamma must be >= 0 for lr_policy '{cfg.lr_policy}'; received {cfg.gamma}")
    if cfg.lr_policy == "multistep" and any(a >= b for a, b in zip(cfg.stepvalue, cfg.stepvalue[1:])):
        err("stepvalue", f"stepvalue must be increasing; received {cfg.stepvalue}")
    if cfg.lr_policy == "poly" and not cfg.max_iter:
        err("max_iter", "lr_policy 'poly' needs max_iter > 0")
    out += _schedule_findings(cfg, doc)
    if cfg.test_interval and not cfg.test_iter:  # (Caffe then builds no test net and runs no test, silently)
        out.append(_at(doc, "test_interval", "warning", f"test_interval {cfg.test_interval} is set but test_iter "
                       "is not, so no test runs (as in Caffe, which builds no test net then); add test_iter (batches "
                       "per test pass) to test, or remove test_interval"))
    explicit = len(cfg.test_net or []) + len(cfg.test_net_param or [])
    generic = bool(cfg.net or cfg.net_param)  # Caffe instantiates the TEST phase of `net` for the rest
    if cfg.test_iter and (len(cfg.test_iter) < explicit or (not generic and len(cfg.test_iter) != explicit)):
        err("test_iter", f"{len(cfg.test_iter)} test_iter value(s) for {explicit} test net(s): give one test_iter "
                         "per test net" + ("" if generic else " (without `net`, every test net is a test_net)"))
    n_tests = len(cfg.test_iter or []) if generic else explicit
    if cfg.test_state and len(cfg.test_state) != n_tests:
        err("test_state", f"{len(cfg.test_state)} test_state(s) for {n_tests} test net(s): give none, or one per "
                          "test net")
    if cfg.type in ("AdaGrad", "RMSProp") and cfg.momentum:
        err("momentum", f"{cfg.type} does not use momentum (Caffe refuses it); received momentum {cfg.momentum}: "
                        "remove it")
    if cfg.clip_gradients == 0:
        err("clip_gradients", "clip_gradients 0 would zero every gradient; use a positive norm, or -1 for off")
    prefix = os.path.join(os.path.dirname(os.path.abspath(path)),
                          cfg.snapshot_prefix or os.path.splitext(os.path.basename(path))[0])
    folder = os.path.dirname(prefix)
    while folder and not os.path.isdir(folder):  # the nearest folder that exists will hold the new ones
        if os.path.exists(folder):
            err("snapshot_prefix", f"snapshots and metrics go to {prefix}_*, but {folder} is a file, not a "
                                   "folder; choose another snapshot_prefix")
            break
        parent = os.path.dirname(folder)
        folder = "" if parent == folder else parent
    else:
        if folder and not os.access(folder, os.W_OK | os.X_OK):
            err("snapshot_prefix", f"snapshots and metrics go to {prefix}_*, but {folder} cannot be written; "
                                   "choose a snapshot_prefix in a folder you can write")
    key = "net" if cfg.net else "train_net"
    name = cfg.net or cfg.train_net
    inline = [k for k in ("net_param", "train_net_param") if getattr(cfg, k) is not None]
    if inline and name:
        err(inline[0], f"give either {inline[0]} (inline) or {key} (a file), not both")
    if inline:
        return out
    if not name:
        err("net", "the solver names no net: add net: <file> (or Caffe's train_net)")
        return out
    if cfg.net and cfg.train_net:
        err("train_net", "give either net or train_net, not both")
    from .loader import is_caffe
    for k, value in ((key, name),) + tuple(("test_net", t) for t in cfg.test_net):
        net_path = caffe_relative(path, value)
        if not os.path.isfile(net_path):
            rule = ("relative to the working directory, as in Caffe (or to the solver file)"
                    if is_caffe(path) else "relative to the solver file")
            err(k, f"net file '{value}' not found (looked at {net_path}); the path is {rule}")
    return out


def apply_overrides(doc: Node, overrides: dict) -> list[Finding]:
    """Set `--set field=value` values on a loaded solver; findings for unknown fields or bad values."""
    import jsonschema
    out = []
    props = schema.solver_schema()["properties"]
    for key, value in overrides.items():
        where = (f"--set {key}={value}", 0, 0)
        if key == "solver_type":  # Caffe's deprecated enum (a prototxt's is read as type)
            from .prototxt import SOLVER_TYPES
            kind = SOLVER_TYPES.get(str(value).upper(), "SGD")
            out.append(Finding(*where, "error", f"solver_type is Caffe's deprecated field; use --set type={kind}"))
            continue
        if key not in props:
            from .errors import did_you_mean
            out.append(Finding(*where, "error", f"unknown solver field '{key}'{did_you_mean(key, props)} "
                               f"(valid fields: {', '.join(sorted(props))})"))
            continue
        errs = list(jsonschema.Draft202012Validator(props[key]).iter_errors(value))
        if errs:
            out.append(Finding(*where, "error", f"{errs[0].message}; give a value of the field's type, e.g. "
                               f"--set {key}={_example(props[key])}"))
            continue
        doc[key] = value
        doc.value_where[key] = doc.key_where[key] = Where("--set", 0, 0)
    return out


def _example(prop: dict) -> str:
    """A value that fits a solver field's schema, for error messages."""
    kind = prop.get("type") or next((p.get("type") for p in prop.get("anyOf", []) if "type" in p), None)
    if "enum" in prop:
        return str(prop["enum"][0])
    return {"number": "0.01", "integer": "100", "boolean": "true", "string": "text"}.get(
        kind if isinstance(kind, str) else "", "...")


def load_solver(path: str, overrides: dict | None = None):
    """(doc, resolved config, net path); raises SpecError with every finding. `overrides` are --set values."""
    doc = load(path)
    findings = schema.check(doc, schema.solver_schema(), path)
    if overrides and not findings and isinstance(doc, Node):
        findings = apply_overrides(doc, overrides)
    if not findings:
        findings = solver_findings(doc, path)
        warned = [f for f in findings if f.severity != "error"]
        if warned and len(warned) == len(findings):  # warnings alone: training prints them (the doc's notes)
            doc.notes = list(getattr(doc, "notes", [])) + warned
            findings = []
    if findings:
        raise SpecError(findings)
    cfg = resolve(SOLVER_FIELDS, doc)
    inline = next((k for k in ("net_param", "train_net_param") if getattr(cfg, k) is not None), None)
    if inline:
        return doc, cfg, f"{path}{INLINE}{inline}"
    return doc, cfg, caffe_relative(path, cfg.net or cfg.train_net, doc)


def mentions_test_phase(doc) -> bool:
    """Whether any layer's include/exclude rules name the TEST phase (a net with separate test layers)."""
    from .graph import as_list
    return any(r.get("phase") == "TEST" for layer in doc.get("layer", []) if isinstance(layer, dict)
               for r in as_list(layer.get("include")) + as_list(layer.get("exclude")) if isinstance(r, dict))


def net_findings(path: str, for_training: bool = False, test_iter: int | None = None, test_iter_where=None,
                 read_data: bool = True, max_iter: int | None = None, history_slots: int = 1,
                 states: dict | None = None) -> list[Finding]:
    """Every finding of one net file: schema, graph and shapes, structure, data.

    The TEST phase is checked when a solver tests it (test_iter) or, for a net file alone, when its
    layers name the TEST phase; otherwise it is the TRAIN net without phase-specific layers.
    """
    from .checks import (batchnorm_window_findings, data_findings, memory_findings, structure_findings,
                         transform_findings)
    from .net import Net
    doc = load_net(path)
    out: list[Finding] = list(getattr(doc, "notes", []))
    test = test_iter is not None if for_training else mentions_test_phase(doc)
    from .graph import as_list
    runs = [(phase, (states or {}).get(phase) or {}) for phase in (("TRAIN", "TEST") if test else ("TRAIN",))]
    if states is None:  # a net alone: the TEST net of each stage its layers name (as a solver's test_state would)
        named = sorted({s for layer in doc.get("layer", []) if isinstance(layer, dict)
                        for r in as_list(layer.get("include")) if isinstance(r, dict) and r.get("phase") == "TEST"
                        for s in as_list(r.get("stage")) if isinstance(s, str)})
        if named and test:
            runs = [("TRAIN", {})] + [("TEST", {"stage": [s]}) for s in named]
    built = {}
    for phase, state in runs:  # the solver's train_state / test_state: the nets training builds
        try:
            net = Net(doc, phase, path, seed=0, allocate=False, level=state.get("level", 0),
                      stages=tuple(as_list(state.get("stage"))))  # shapes only; reads no data
        except SpecError as e:
            out.extend(e.findings)
            out.extend(parameter_findings(doc))  # what needs no graph: one error must not hide the others
            continue
        out.extend(net.warnings)
        if phase == "TEST" and "TRAIN" in built:
            out.extend(transform_findings(built["TRAIN"], net))
        built.setdefault(phase, net)
        if phase == "TRAIN":
            out.extend(structure_findings(net, doc, for_training))
            out.extend(batchnorm_window_findings(net, max_iter))
            memory = memory_findings(net, training=True, history_slots=history_slots)
            out.extend(memory)
            if any(f.severity == "error" for f in memory):
                read_data = False  # a run that cannot fit: no need to read its data
        if read_data:
            out.extend(data_findings(net, test_iter if phase == "TEST" else None, test_iter_where))
    seen, unique = set(), []
    for f in out:  # a layer in both phases reports a problem once
        key = (f.path, f.line, f.col, f.severity, f.message.replace("TEST", "TRAIN"))
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def parameter_findings(doc) -> list[Finding]:
    """Each layer of a known type, whatever the others: its parameters' own checks (Layer.check), which need no
    shapes, for nets whose graph could not be built."""
    import layers
    from layers.base import resolve
    from netspec.errors import LayerError
    from .graph import LayerDef, as_list
    out = []
    nodes = doc.get("layer", []) if isinstance(doc, dict) else []
    for node in nodes if isinstance(nodes, list) else []:
        cls = layers.REGISTRY.get(node.get("type")) if isinstance(node, dict) and isinstance(node.get("type"), str) \
            else None
        if cls is None:
            continue
        d = LayerDef(str(node.get("name")), cls.type, as_list(node.get("bottom")), as_list(node.get("top")), node)
        try:
            layer = cls(d.name, resolve(cls.fields, node.get(cls.param_block)), "TRAIN", layer_spec=d.spec())
            layer.check()
        except LayerError as e:
            w = d.where(e.field)
            out.append(Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): {e}"))
        except Exception:  # noqa: BLE001: a malformed block, which the schema reports
            pass
    return out


def validate(paths, strict: bool = False, read_data: bool = True) -> list[Finding]:
    """Every finding of every file (a solver brings its net), errors and warnings, in file order."""
    findings: list[Finding] = []
    order: dict = {}
    queue = [(p, None) for p in paths]
    while queue:
        path, context = queue.pop(0)
        key = os.path.abspath(path)
        if key in order:
            continue
        order[key] = len(order)
        try:
            if INLINE in os.path.basename(path):  # a net inside a solver
                findings.extend(net_findings(path, read_data=read_data, **(context or {})))
                continue
            doc = load(path)
            if kind_of(doc) == "solver":
                doc, cfg, net_path = load_solver(path)
                findings.extend(getattr(doc, "notes", []))
                if INLINE not in os.path.basename(net_path) and kind_of(load(net_path)) == "solver":
                    w = doc.at("net") if "net" in doc else (path, 1, 1)
                    findings.append(Finding(w[0], w[1], w[2], "error", f"net: {os.path.basename(net_path)!r} is a "
                                            "solver file, not a net; name the net's file (net.yaml or .prototxt)"))
                    continue
                from solvers.rules import SOLVERS
                slots = getattr(SOLVERS.get(cfg.type), "slots", 1)
                states = {"TRAIN": cfg.train_state or {}, "TEST": (cfg.test_state or [{}])[0]}
                queue.append((net_path, {"for_training": True, "test_iter": (cfg.test_iter or [None])[0],
                                         "max_iter": cfg.max_iter, "history_slots": slots, "states": states,
                                         "test_iter_where": doc.at("test_iter") if "test_iter" in doc else None}))
                continue
            findings.extend(net_findings(path, read_data=read_data, **(context or {})))
        except SpecError as e:
            findings.extend(e.findings)
        except UserError as e:
            findings.append(Finding(path, 1, 1, "error", str(e).split(": error: ", 1)[-1]))
        except Exception as e:  # never a traceback for any input; but say it is our bug
            findings.append(Finding(path, 1, 1, "error", f"yaffe could not check this file ({type(e).__name__}: "
                                    f"{e}); this is a bug in yaffe, please report it with the file"))
    unique = list(dict.fromkeys(findings))
    unique.sort(key=lambda f: (order.get(os.path.abspath(f.path), len(order)), f.line, f.col))
    if strict:
        unique = [Finding(f.path, f.line, f.col, "error" if f.severity == "warning" else f.severity, f.message)
                  for f in unique]
    return unique


def summary(path: str, phase: str | None = None) -> dict:
    """{"layers": rows, "text": table} of a net file (or of the net a solver names); phase None: TRAIN, or TEST
    for a deploy net (no data layer, no loss)."""
    from .net import Net
    from .summary import format_summary, summarize
    doc = load(path)
    if kind_of(doc) == "solver":
        _, _, path = load_solver(path)
    doc = load_net(path)
    net = Net(doc, phase or "TRAIN", path, seed=0, allocate=False)
    if phase is None and not net.has_loss and not any(l.is_data for l in net.layers):
        phase = "TEST"
        net = Net(doc, phase, path, seed=0, allocate=False)
    phase = phase or "TRAIN"
    rows = summarize(net)
    return {"layers": rows, "text": format_summary(rows, net.name, phase)}
