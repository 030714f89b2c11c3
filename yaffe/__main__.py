"""`python -m yaffe ...`: the command line (yaffe/cli.py)."""
import sys

from yaffe.cli import main

sys.exit(main())
