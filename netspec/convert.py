"""`run.py convert`: a Caffe .prototxt (net or solver) to readable YAML with a `yaffe: 1` key.

A solver's net is converted too, written beside the solver's YAML, and the solver names it."""
from __future__ import annotations

import os

import yaml

from .errors import UserError
from .loader import load, to_plain
from .spec import kind_of


class _Dumper(yaml.SafeDumper):
    pass


def _represent_dict(dumper, data):
    # small leaf mappings ({lr_mult: 1}, {phase: TRAIN}) on one line, the rest as blocks
    flow = len(data) <= 4 and all(not isinstance(v, (dict, list)) or (isinstance(v, list) and len(v) <= 4
                                  and all(not isinstance(x, (dict, list)) for x in v)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_list(dumper, data):
    flow = all(not isinstance(x, (dict, list)) for x in data) or all(
        isinstance(x, dict) and len(x) <= 2 and all(not isinstance(v, (dict, list)) for v in x.values()) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def to_yaml(doc: dict, source: str) -> str:
    body = {"yaffe": 1, **{k: v for k, v in to_plain(doc).items() if k != "yaffe"}}
    text = yaml.dump(body, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
    return f"# converted from {os.path.basename(source)} by run.py convert\n" + text


def convert(path: str, output: str | None = None, out=print) -> list[str]:
    """Write the YAML of `path` (and of the net a solver names), or, for an output named .prototxt, the upgraded
    prototxt (Caffe's upgrade_net_proto_text); returns the files written."""
    if not path.endswith((".prototxt", ".pt", ".pbtxt")):
        raise UserError(f"{path}: error: convert reads Caffe .prototxt files; this file is already YAML")
    doc = load(path)
    for note in getattr(doc, "notes", []):
        out(str(note))
    output = output or os.path.splitext(path)[0] + ".yaml"
    written = []
    if kind_of(doc) == "solver" and isinstance(doc.get("net"), str) and doc["net"].endswith((".prototxt", ".pt")):
        net_src = os.path.join(os.path.dirname(path), doc["net"])
        ext = ".prototxt" if output.endswith((".prototxt", ".pt", ".pbtxt")) else ".yaml"
        net_out = os.path.join(os.path.dirname(output) or ".", os.path.splitext(os.path.basename(net_src))[0] + ext)
        written += convert(net_src, net_out, out)
        doc["net"] = os.path.relpath(net_out, os.path.dirname(output) or ".")
    with open(output, "w", encoding="utf-8") as f:
        if output.endswith((".prototxt", ".pt", ".pbtxt")):  # Caffe's upgrade_net_proto_text: upgraded prototxt
            from .prototxt import dumps
            f.write(f"# upgraded from {os.path.basename(path)} by run.py convert\n" + dumps(to_plain(doc)))
        else:
            f.write(to_yaml(doc, path))
    out(f"Wrote {output}")
    return written + [output]
