"""Validate every net and solver of a BVLC/caffe checkout, from its root as Caffe's docs run them.

    python benchmarks/caffe_tree.py /path/to/caffe

Prints one line per file: OK, DATA (only data that is not in the repository is missing: LMDBs, image lists,
mean files, generated nets; or a Python layer's module, which Caffe also needs on PYTHONPATH) or FAIL with the
first other error; exits 1 when any file FAILs.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ABSENT = ("no such file", "does not exist", "not found (looked at", "is not beside",
          "cannot import module")  # a Python layer's module: run with PYTHONPATH=examples/pycaffe/layers, as Caffe


def main(caffe: str) -> int:
    from netspec.spec import validate
    os.chdir(caffe)
    files = sorted(os.path.join(d, f) for top in ("examples", "models") for d, _, fs in os.walk(top)
                   for f in fs if f.endswith(".prototxt"))
    failed = 0
    for path in files:
        errors = [f for f in validate([path]) if f.severity == "error"]
        other = [f for f in errors if not any(a in f.message for a in ABSENT)]
        status = "FAIL" if other else "DATA" if errors else "OK"
        failed += bool(other)
        print(f"{status:4}  {path}" + (f"  {other[0]}" if other else ""))
    print(f"{len(files)} files: {len(files) - failed} without errors other than absent data, {failed} failing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
