"""JSON Schema of nets and solvers, generated from the declarations that live with each
layer (`Layer.fields`) and with the solver (`solvers.params`), and the check that turns
jsonschema's errors into findings with line, column, layer and a fix."""
from __future__ import annotations

from functools import lru_cache

import jsonschema

import layers
from layers.base import Field
from layers.fillers import FIELDS as FILLER_FIELDS
from layers.transform import STEP_FIELDS
from solvers.params import SOLVER_FIELDS
from .errors import Finding, did_you_mean
from .loader import Node, NodeList

_KIND = {"int": {"type": "integer"}, "float": {"type": "number"}, "bool": {"type": "boolean"},
         "str": {"type": "string"}, "filler": {"$ref": "#/$defs/filler"},
         "shape": {"$ref": "#/$defs/blob_shape"}, "new_shape": {"$ref": "#/$defs/new_shape"},
         "normalize_step": {"$ref": "#/$defs/normalize_step"},
         "net_state": {"type": "object", "additionalProperties": False, "properties": {
             "phase": {"enum": ["TRAIN", "TEST"]}, "level": {"type": "integer"},
             "stage": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}},
         "early_stop": {"type": "object", "additionalProperties": False, "required": ["metric"], "properties": {
             "metric": {"type": "string", "description": "a TEST net output (or loss); losses fall, others rise"},
             "patience": {"type": "integer", "minimum": 1, "default": 3},
             "min_delta": {"type": "number", "minimum": 0, "default": 0}}},
         "any": {}}


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "object": "a mapping (field: value)", "array": "a list"}


def _strings(item):
    return {"anyOf": [item, {"type": "array", "items": item}]}


def field_schema(f: Field) -> dict:
    s = dict(_KIND.get(f.kind, {})) if f.kind != "enum" else {"enum": list(f.choices)}
    for key, name in (("minimum", "minimum"), ("maximum", "maximum"), ("exclusive_minimum", "exclusiveMinimum"),
                      ("exclusive_maximum", "exclusiveMaximum")):
        if getattr(f, key) is not None:
            s[name] = getattr(f, key)
    if f.kind not in ("filler", "shape", "new_shape", "normalize_step", "early_stop", "net_state"):
        s["description"] = f.help
        if f.default is not None:
            s["default"] = f.default
    return _strings(s) if f.repeated else s


def block_schema(fields) -> dict:
    return {"type": "object", "additionalProperties": False,
            "properties": {f.name: field_schema(f) for f in fields},
            "required": [f.name for f in fields if f.required]}


def layer_blocks() -> dict:
    """{block name: fields} over the registry (blocks shared by several layers are merged; a field is required
    there only where every layer with the block requires it: the others' requirements go by type, net_schema)."""
    import dataclasses
    blocks: dict = {}
    optional: set = set()  # (block, field) that some layer with the block does not require
    for cls in layers.REGISTRY.values():
        own = {cls.param_block: cls.fields} if cls.param_block else {}
        for name, fields in {**own, **cls.other_blocks}.items():
            merged = blocks.setdefault(name, {})
            for f in fields:
                merged.setdefault(f.name, f)
                if not f.required:
                    optional.add((name, f.name))
    return {name: tuple(dataclasses.replace(f, required=f.required and (name, f.name) not in optional)
                        for f in fields.values()) for name, fields in sorted(blocks.items())}


_RULE = {"type": "object", "additionalProperties": False, "properties": {
    "phase": {"enum": ["TRAIN", "TEST"]}, "min_level": {"type": "integer"}, "max_level": {"type": "integer"},
    "stage": _strings({"type": "string"}), "not_stage": _strings({"type": "string"})}}


@lru_cache(maxsize=None)
def net_schema() -> dict:
    blocks = layer_blocks()
    param_spec = {"type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string", "description": "share this blob with other params of the same name"},
        "lr_mult": {"type": "number", "description": "multiplies the learning rate"},
        "decay_mult": {"type": "number", "minimum": 0, "description": "multiplies weight_decay"}}}
    layer = {"type": "object", "additionalProperties": False, "required": ["name", "type"], "properties": {
        "name": {"type": "string"},
        "type": {"enum": sorted(layers.REGISTRY)},
        "bottom": _strings({"type": "string"}),
        "top": _strings({"type": "string"}),
        "phase": {"enum": ["TRAIN", "TEST"]},
        "include": _strings(_RULE), "exclude": _strings(_RULE),
        "param": _strings(param_spec),
        "loss_weight": _strings({"type": "number"}),
        "propagate_down": _strings({"type": "boolean"}),
        "blobs": {"description": "Caffe's embedded weights: accepted and ignored (use --weights)"},
        **{name: block_schema(fields) for name, fields in blocks.items()}}}
    # a type whose block has required fields needs the block itself, and those fields (a shared block marks only
    # what all its types require)
    layer["allOf"] = [{"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                       "then": {"required": [cls.param_block], "properties": {cls.param_block: {
                           "required": [f.name for f in cls.fields if f.required]}}}}
                      for name, cls in sorted(layers.REGISTRY.items())
                      if cls.param_block and any(f.required for f in cls.fields)]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "yaffe net", "type": "object", "additionalProperties": False,
        "properties": {"yaffe": {"const": 1}, "name": {"type": "string"},
                       "force_backward": {"type": "boolean"},
                       "debug_info": {"type": "boolean", "description": "Caffe's flag (see the solver's)"},
                       "state": {"type": "object", "additionalProperties": False, "properties": {
                           "phase": {"enum": ["TRAIN", "TEST"]}, "level": {"type": "integer"},
                           "stage": _strings({"type": "string"})}},
                       "input": _strings({"type": "string"}),
                       "input_dim": _strings({"type": "integer", "minimum": 0}),
                       "input_shape": _strings({"$ref": "#/$defs/blob_shape"}),
                       "layer": {"type": "array", "items": layer}},
        "$defs": {"filler": block_schema(FILLER_FIELDS), "normalize_step": block_schema(STEP_FIELDS),
                  "blob_shape": {"type": "object", "additionalProperties": False, "required": ["dim"],
                                 "properties": {"dim": _strings({"type": "integer", "minimum": 0})}},
                  "new_shape": {"type": "object", "additionalProperties": False, "required": ["dim"],
                                "description": "Reshape's dims: 0 copies the bottom's dim, -1 is inferred",
                                "properties": {"dim": _strings({"type": "integer", "minimum": -1})}}},
    }


@lru_cache(maxsize=None)
def solver_schema() -> dict:
    s = block_schema(SOLVER_FIELDS)
    s.update({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "yaffe solver"})
    return s


# ---- jsonschema errors -> findings ---------------------------------------------------------

def _node_at(doc, path):
    """The innermost Node/NodeList on `path` and the last key into it."""
    node, key = doc, None
    for step in path:
        if isinstance(node, (Node, NodeList)):
            try:
                child = node[step]
            except (KeyError, IndexError, TypeError):
                break
            if not isinstance(child, (Node, NodeList)):
                return node, step
            node, key = child, None
        else:
            break
    return node, key


def _where(doc, path, fallback):
    node, key = _node_at(doc, path)
    if isinstance(node, (Node, NodeList)):
        return node.at(key)
    return fallback


def _context(doc, path):
    """("layer 'conv1' (Convolution): ", "convolution_param.kernel_size") for an error path."""
    path = list(path)
    prefix = ""
    if len(path) >= 2 and path[0] == "layer" and isinstance(doc, dict):
        try:
            layer = doc["layer"][path[1]]
            prefix = f"layer '{layer.get('name', '?')}' ({layer.get('type', '?')}): "
        except (IndexError, KeyError, TypeError, AttributeError):
            prefix = f"layer #{path[1] + 1}: "
        path = path[2:]
    field = ".".join(str(p) for p in path if not isinstance(p, int))
    return prefix, field


def _describe(value):
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(err, doc) -> tuple[list, str]:
    """(path of the node to point at, message) for one jsonschema error."""
    path = list(err.absolute_path)
    prefix, field = _context(doc, path)
    v, value, schema = err.validator, err.instance, err.schema
    where = f"'{field}'" if field else ("the layer" if prefix else "the top level")
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        key = extra[0] if extra else "?"
        if key == "solver_type" and "type" in allowed:  # Caffe's deprecated enum (a prototxt's is read as type)
            from .prototxt import SOLVER_TYPES
            kind = SOLVER_TYPES.get(str(value.get(key, "")).upper(), "SGD")
            return path + [key], f"{prefix}solver_type is Caffe's deprecated field; write type: {kind}"
        return path + [key], (f"{prefix}unknown field '{key}' in {where}{did_you_mean(key, allowed)} "
                              f"(valid fields: {', '.join(allowed)})")
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else "?"
        return path, f"{prefix}missing required field '{missing}' in {where}; add it"
    if v == "enum":
        choices = [str(c) for c in err.validator_value]
        if field == "type" and prefix.startswith("layer"):
            return path, (f"{prefix}unknown layer type {_describe(value)}{did_you_mean(value, choices)} "
                          f"(known types: {', '.join(choices)})")
        return path, (f"{prefix}{where} must be one of {', '.join(choices)}; received {_describe(value)}"
                      f"{did_you_mean(value, choices)}")
    if v == "type":
        want = _TYPE_WORDS.get(err.validator_value, err.validator_value)
        hint = ("; YAML reads on/off/yes/no as true/false: quote the value, e.g. 'on'"
                if isinstance(value, bool) and err.validator_value == "string" else "")
        return path, f"{prefix}{where} must be {want}; received {_describe(value)}{hint}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return path, f"{prefix}{where} must be {op} {err.validator_value}; received {_describe(value)}"
    if v == "const":
        return path, f"{prefix}{where} must be {err.validator_value}; received {_describe(value)}"
    if v == "anyOf":
        # a scalar-or-list field: report the deepest sub-error if it went into the list
        deep = [e for e in (err.context or []) if len(e.absolute_path) > len(err.absolute_path)]
        if deep:
            return _message(jsonschema.exceptions.best_match(deep), doc)
        kinds = [_TYPE_WORDS.get(o.get("type"), o.get("type")) or ("one of " + ", ".join(map(str, o["enum"])) if "enum" in o else "an object")
                 for o in schema["anyOf"] if o.get("type") != "array"]
        hint = ("; YAML reads on/off/yes/no as true/false: quote the value, e.g. 'on'"
                if isinstance(value, bool) else "")
        return path, f"{prefix}{where} must be {kinds[0] if kinds else 'valid'} or a list of them; " \
                     f"received {_describe(value)}{hint}"
    return path, f"{prefix}{where}: {err.message}"


def check(doc, schema: dict, path: str) -> list[Finding]:
    """All schema findings of a loaded spec, in file order."""
    if not isinstance(doc, dict):
        got = "an empty file" if doc is None else "a list" if isinstance(doc, list) else _describe(doc)
        return [Finding(path, 1, 1, "error", f"the file must hold a mapping of fields (name: value); "
                        f"received {got}")]
    validator = jsonschema.Draft202012Validator(schema)
    findings = []
    for err in validator.iter_errors(doc):
        node_path, message = _message(err, doc)
        w = _where(doc, node_path, doc.where if isinstance(doc, Node) else (path, 1, 1))
        findings.append(Finding(w[0], w[1], w[2], "error", message))
    return sorted(set(findings), key=lambda f: (f.path, f.line, f.col, f.message))
