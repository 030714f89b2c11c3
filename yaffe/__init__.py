"""yaffe: Caffe-style declarative nets on Numba. The public face of the netspec, layers and solvers packages.

    import yaffe
    net = yaffe.Net(yaffe.load("net.yaml"), "TEST", "net.yaml")
    trainer = yaffe.Trainer("solver.yaml"); trainer.train()
"""
from netspec.errors import SpecError, UserError
from netspec.loader import load
from netspec.net import Net
from netspec.spec import validate
from solvers.trainer import Trainer, test_model

__all__ = ["Net", "Trainer", "load", "validate", "test_model", "SpecError", "UserError"]
__version__ = "0.1.0"
