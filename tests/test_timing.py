"""`run.py time`: per-layer forward and backward times, like `caffe time`, from a net or a solver."""
import os
import subprocess
import sys

from netspec.timing import time_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "models", "lenet_digits")


def test_time_reports_every_layer_and_follows_a_solver_to_its_net():
    lines = []
    result = time_net(os.path.join(DIGITS, "solver.yaml"), iterations=2, out=lines.append)
    assert lines[0].startswith("Timing the solver's net") and lines[0].endswith("net.yaml")
    names = [r["name"] for r in result["layers"]]
    assert "conv1" in names and "loss" in names
    conv = next(r for r in result["layers"] if r["name"] == "conv1")
    assert conv["forward_ms"] > 0 and conv["backward_ms"] > 0
    assert result["forward_backward_ms"] > 0 and result["images_per_s"] > 0
    assert any(l.startswith("Average forward-backward:") for l in lines)
    from layers import simd
    assert result["kernels"]["vector_bytes"] == simd.VECTOR_BYTES and result["kernels"]["bcast_rows"] == simd.BCAST_MR
    assert set(result["kernels"]["convolutions"]) == {"conv1", "conv2"}  # each convolution's path, said
    assert result["kernels"]["lanes_channels"] == list(simd.LANES_WIDTHS)
    # the first layer propagates no gradient: no data gradient said for it
    assert "data gradient" not in result["kernels"]["convolutions"]["conv1"]
    assert result["kernels"]["pixel_rows"] == simd.PIX_MR and result["kernels"]["cpu"]  # the CPU's model, named
    assert any(l.startswith(f"Kernels: {result['kernels']['cpu']}, {simd.VECTOR_BYTES}-byte vectors") and
               f"{simd.PIX_MR} pixels x 2 vectors" in l for l in lines)


def test_time_cli_on_a_net_file():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "time", os.path.join(DIGITS, "net.yaml"),
                        "--iterations", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "Average forward-backward:" in r.stdout and "Timing the solver" not in r.stdout
