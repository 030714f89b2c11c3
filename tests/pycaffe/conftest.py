"""pycaffe's own tests write snapshots to the working directory: run each in its own temporary one."""
import pytest


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
