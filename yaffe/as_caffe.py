"""python -m yaffe.as_caffe SCRIPT [ARGS...]: run a Caffe Python script as written, `import caffe` being yaffe
(Caffe's python/draw_net.py, python/classify.py, tools/extra/summarize.py, your own; yaffe/_aliases.py)."""
from __future__ import annotations

import os
import runpy
import sys

from yaffe._aliases import install_as_caffe


def main(argv=None) -> int:
    """python -m yaffe.as_caffe SCRIPT [ARGS...]: run SCRIPT as __main__ with `import caffe` being yaffe."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m yaffe.as_caffe SCRIPT [ARGS...]\n\nRuns a Caffe Python script (python/draw_net.py, "
              "tools/extra/summarize.py, python/classify.py, ...) with `import caffe` being yaffe.",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    from netspec.errors import UserError
    script = argv[0]
    if not os.path.isfile(script):
        print(f"{script}: error: no such script; give the path of a Python file "
              "(python -m yaffe.as_caffe SCRIPT [ARGS...])", file=sys.stderr)
        return 2
    install_as_caffe()
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` puts the script's folder first
    try:
        runpy.run_path(script, run_name="__main__")
    except UserError as e:  # yaffe's own errors (a spec, a file, a missing tool): its message, not a traceback
        from yaffe.cli import report
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
