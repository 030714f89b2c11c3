"""`import caffe` being yaffe, for Caffe's scripts and notebooks as they are written (yaffe.install_as_caffe).

Caffe's files import more than `caffe`: `from caffe import layers as L`, `from caffe.proto import caffe_pb2`,
`import caffe.draw`, `caffe.io`. After `yaffe.install_as_caffe()` (at the top of a notebook) each of them is
yaffe's module of the same name; `python -m yaffe.as_caffe script.py ARGS` runs a script so (Caffe's
python/draw_net.py, tools/extra/summarize.py, python/classify.py, your own).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# pycaffe's modules (python/caffe/) and the yaffe module that stands for each
MODULES = {"caffe": "yaffe", "caffe.pycaffe": "yaffe.pycaffe", "caffe._caffe": "yaffe.pycaffe",
           "caffe.io": "yaffe.io", "caffe.net_spec": "yaffe.net_spec", "caffe.coord_map": "yaffe.coord_map",
           "caffe.classifier": "yaffe.classifier", "caffe.detector": "yaffe.classifier", "caffe.draw": "yaffe.draw",
           "caffe.proto": "yaffe.proto", "caffe.proto.caffe_pb2": "yaffe.proto.caffe_pb2"}


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder first on sys.meta_path: `caffe.X` is yaffe's module X, imported when first asked for (caffe.draw
    needs pydot only when a script imports it)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MODULES else None

    def create_module(self, spec):
        return importlib.import_module(MODULES[spec.name])

    def exec_module(self, module):
        pass


def install_as_caffe() -> None:
    """Make `import caffe` (and caffe.proto.caffe_pb2, caffe.io, caffe.draw, ...) import yaffe. Call it before the
    first `import caffe`; a pycaffe already imported is an error (two caffes in one process would mix)."""
    loaded = sys.modules.get("caffe")
    if loaded is not None and loaded is not sys.modules.get("yaffe"):
        where = getattr(loaded, "__file__", None) or "a module of that name"
        raise ImportError(f"install_as_caffe: 'caffe' is already imported ({where}); call yaffe.install_as_caffe() "
                          "before the first `import caffe` (restart the notebook's kernel)")
    if not any(isinstance(f, _Aliases) for f in sys.meta_path):
        sys.meta_path.insert(0, _Aliases())
    for alias, name in MODULES.items():  # modules already imported under yaffe's name: the same objects
        if name in sys.modules:
            sys.modules.setdefault(alias, sys.modules[name])
