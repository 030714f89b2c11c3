"""YAML loading that keeps the line and column of every node.

Mappings load as `Node` (a dict) and sequences as `NodeList` (a list); both remember
where they and each of their values stand in the file, so any later check can point
at the exact node. Duplicate keys are an error (YAML would silently keep the last one).
"""
from __future__ import annotations

import os
import re

import yaml

from .errors import Finding, SpecError, UserError


class Where(tuple):
    """(path, line, col), 1-based."""

    __slots__ = ()

    def __new__(cls, path, line, col):
        return super().__new__(cls, (path, line, col))

    def __getnewargs__(self):  # copy and pickle
        return tuple(self)

    path = property(lambda s: s[0])
    line = property(lambda s: s[1])
    col = property(lambda s: s[2])


class Node(dict):
    """A mapping that knows where it and each of its keys and values stand. `notes`: what loading it
    upgraded or ignored (Caffe prototxt files)."""

    notes: list = []

    where: Where
    key_where: dict
    value_where: dict

    def at(self, key=None) -> Where:
        """Position of the value of `key` (or of the key itself when the value has none), else of the map."""
        if key is None:
            return self.where
        return self.value_where.get(key) or self.key_where.get(key) or self.where


class NodeList(list):
    where: Where
    item_where: list

    def at(self, index=None) -> Where:
        if index is None or not (0 <= index < len(self.item_where)):
            return self.where
        return self.item_where[index]


def _mark(path, mark) -> Where:
    return Where(path, mark.line + 1, mark.column + 1)


class _Loader(yaml.SafeLoader):
    path = "<string>"


def _construct_mapping(loader: _Loader, node):
    loader.flatten_mapping(node)
    out = Node()
    out.where, out.key_where, out.value_where = _mark(loader.path, node.start_mark), {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise SpecError([Finding(loader.path, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                     "error", "a mapping key must be a plain value; use a name such as 'layer'")])
        if key in out:
            first = out.key_where[key]
            raise SpecError([Finding(loader.path, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                     "error", f"duplicate key '{key}' (first given at line {first.line}); "
                                     f"YAML would silently keep only the last one: remove one of them")])
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_where[key] = _mark(loader.path, key_node.start_mark)
        out.value_where[key] = _mark(loader.path, value_node.start_mark)
    return out


def _construct_sequence(loader: _Loader, node):
    out = NodeList(loader.construct_object(child, deep=True) for child in node.value)
    out.where = _mark(loader.path, node.start_mark)
    out.item_where = [_mark(loader.path, child.start_mark) for child in node.value]
    return out


# YAML 1.1 (PyYAML) reads 1e-8 as a string because it has no dot; Caffe users write it all the time.
# Every exponent form Python's float() reads: 1e9, 1.0e9, 1E-3, .5e3, +2.e-4.
FLOAT_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_EXPONENT, list("-+.0123456789"))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


MAX_VALUES = 1_000_000  # values a spec may expand to through its aliases


def _expanded_size(node, memo=None) -> int:
    """How many values the composed YAML node becomes once every alias is copied out (memoized per node, so a
    chain of aliases is measured in time linear in the text)."""
    memo = {} if memo is None else memo
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a cycle counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_VALUES + 1)
    return memo[key]


def value(text: str):
    """One value as a spec reads it (a command line's --set base_lr=1e-3): plain Python, numbers as numbers."""
    return to_plain(loads(text, "<command line>"))


def loads(text: str, path: str = "<string>"):
    """Parse YAML text into `Node`/`NodeList`/scalars; malformed YAML raises SpecError with its position."""
    loader = None
    try:
        loader = _Loader(text)  # its reader refuses control characters (a NUL) at once
        loader.path = path
        node = loader.get_single_node()  # aliases are still references here: cheap
        if node is None:
            return None
        if _expanded_size(node) > MAX_VALUES:
            raise SpecError([Finding(path, 1, 1, "error", f"the YAML's aliases (*name) expand to more than "
                                     f"{MAX_VALUES:,} values (an alias bomb); a spec is a few thousand")])
        return loader.construct_document(node)
    except RecursionError:
        raise SpecError([Finding(path, 1, 1, "error", "malformed YAML: nested too deeply (thousands of levels of "
                                 "[ or {); a spec is a few levels deep")]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = e.problem or e.context or "malformed YAML"
        hint = ("YAML indents with spaces, never tabs" if "'\\t'" in str(problem)
                else "check the indentation and the ':' after each key")
        raise SpecError([Finding(path, line, col, "error", f"malformed YAML: {problem}; {hint}")]) from None
    except yaml.YAMLError as e:
        raise SpecError([Finding(path, 1, 1, "error", f"malformed YAML: {e}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


PROTOTXT_SUFFIXES = (".prototxt", ".pt", ".pbtxt")


def load(path: str):
    """Load a YAML file, or a Caffe .prototxt (its upgrade notes go to the result's `notes`); a missing or
    unreadable file raises UserError naming it."""
    if path.endswith(PROTOTXT_SUFFIXES):
        from .prototxt import load as load_prototxt
        doc, notes = load_prototxt(path)
        doc.notes = notes
        return doc
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such file; check the path "
                        f"(relative paths are taken from {os.getcwd()})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: error: cannot read the file ({e})") from None
    if path.endswith((".yaml", ".yml", ".json")):
        return loads(text, path)
    # Any other name may be Caffe's text format, which Caffe reads whatever the name (pycaffe's temp files)
    from .prototxt import loads as loads_prototxt
    if _PROTOTXT_LOOK.search(text):
        doc, notes = loads_prototxt(text, path)
    else:
        try:
            doc = loads(text, path)
            if isinstance(doc, dict):
                return doc
        except SpecError as yaml_error:
            try:
                doc, notes = loads_prototxt(text, path)
            except SpecError:
                raise yaml_error from None
        else:
            doc, notes = loads_prototxt(text, path)
    doc.notes = notes
    _SNIFFED.add(os.path.abspath(path))
    return doc


_SNIFFED: set = set()  # files of other names read as prototxt: Caffe's path and snapshot rules apply to them


def is_caffe(path: str) -> bool:
    """Whether a spec file is Caffe's text format (by its suffix, or as load found it), so Caffe's rules apply."""
    path = path.partition("#")[0]  # "solver.prototxt#net_param": a net inline in a Caffe solver is Caffe's too
    return path.endswith(PROTOTXT_SUFFIXES) or os.path.abspath(path) in _SNIFFED


_PROTOTXT_LOOK = re.compile(r"^\s*[A-Za-z_]\w*\s*\{", re.M)  # `layer {`: a message, never YAML


def from_plain(data, path: str = "<python>"):
    """Plain dicts and lists (a net built in Python) as Node/NodeList without positions (line 0), so that every
    check can name the place it has: the file, or <python>."""
    if isinstance(data, Node) or isinstance(data, NodeList):
        return data
    where = Where(path, 0, 0)
    if isinstance(data, dict):
        out = Node((k, from_plain(v, path)) for k, v in data.items())
        out.where, out.key_where, out.value_where = where, {}, {}
        return out
    if isinstance(data, list):
        out = NodeList(from_plain(v, path) for v in data)
        out.where, out.item_where = where, [where] * len(data)
        return out
    return data


def to_plain(node):
    """Node/NodeList trees as plain dicts and lists (for YAML dumping and copying)."""
    if isinstance(node, dict):
        return {k: to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    return node
