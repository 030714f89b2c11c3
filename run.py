#!/usr/bin/env python
"""yaffe's command line from a checkout: `python run.py train solver.yaml`. The same as the installed `yaffe`
command and `python -m yaffe` (yaffe/cli.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from yaffe.cli import *  # noqa: E402,F401,F403  (tests and scripts use run.main, run.field_value, ...)
from yaffe.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
