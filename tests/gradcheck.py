"""The gradient checker lives in layers/gradcheck.py (run.py check-layer uses it too)."""
from layers.gradcheck import check_gradients, make_layer, run_layer  # noqa: F401
