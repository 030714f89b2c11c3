import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# run.py train's compile helper (netspec/warmup.py) is for a user's cold start; the tests that run training in
# subprocesses would each start one. tests/test_warmup.py runs it on purpose.
os.environ.setdefault("YAFFE_PRECOMPILE", "0")
