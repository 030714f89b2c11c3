"""yaffe: Caffe-style declarative nets on Numba. The public face of the netspec, layers and solvers packages.

pycaffe's interface, so that Caffe's scripts run with `import yaffe as caffe`:

    import yaffe as caffe
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    probs = net.forward(data=batch)["prob"]
    solver = caffe.get_solver("solver.prototxt"); solver.step(100)

Caffe's files as they are written (`import caffe`, `from caffe.proto import caffe_pb2`, `import caffe.draw`):
`yaffe.install_as_caffe()` first, or `python -m yaffe.as_caffe script.py ARGS`. And yaffe's own classes (the
Trainer behind `run.py train`, a spec's Net, validate):

    trainer = yaffe.Trainer("solver.yaml"); trainer.train()
"""
from layers.python import PythonLayerBase as Layer  # what a Python layer's class derives from (caffe.Layer)
from netspec.errors import SpecError, UserError
from netspec.loader import load
from netspec.spec import validate
from solvers.trainer import Trainer, test_model

from . import io, proto
from ._aliases import install_as_caffe
from .classifier import Classifier, Detector
from .net_spec import NetSpec, layers, params, to_proto
from .pycaffe import (NCCL, TEST, TRAIN, AdaDeltaSolver, AdaGradSolver, AdamSolver, Blob, Net, NesterovSolver,
                      RMSPropSolver, SGDSolver, Solver, Timer, get_solver, has_nccl, init_log, layer_type_list, log,
                      set_device, set_mode_cpu, set_mode_gpu, set_multiprocess, set_random_seed, set_solver_count,
                      set_solver_rank, solver_count, solver_rank)

__all__ = ["Net", "Blob", "Layer", "Classifier", "Detector", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver", "NetSpec", "layers", "params",
           "to_proto", "io", "proto", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "layer_type_list", "Timer", "has_nccl", "init_log", "log", "set_multiprocess",
           "NCCL", "solver_count", "set_solver_count", "solver_rank", "set_solver_rank", "Trainer", "load", "validate",
           "test_model", "SpecError", "UserError", "install_as_caffe"]
__version__ = "0.1.0"
