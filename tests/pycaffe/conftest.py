"""pycaffe's own tests write snapshots to the working directory: run each in its own temporary one.

They also draw their data from numpy's global generator and their weights from unseeded fillers, as in Caffe: each
test runs seeded here, so that a float32 sum that lands near zero (test_forward_start_end compares one with numpy's
at an absolute 1e-5) cannot fail one run in a hundred.
"""
import numpy as np
import pytest

import yaffe as caffe
from yaffe import pycaffe


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _seeded(monkeypatch):
    monkeypatch.setattr(pycaffe, "_seed", None)
    np.random.seed(1701)
    caffe.set_random_seed(1701)
