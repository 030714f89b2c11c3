"""The solver's fields (Caffe's SolverParameter names), declared once: the schema and the
defaults both come from here."""
from __future__ import annotations

from layers.base import Field

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "plateau", "cosine", "onecycle")

SOLVER_FIELDS = (
    Field("yaffe", "int", 1, "spec format version", minimum=1, maximum=1),
    Field("net", "str", None, "the net file (train and test phases), relative to the solver file"),
    Field("train_net", "str", None, "Caffe's: the TRAIN net file, when it differs from the TEST net's"),
    Field("test_net", "str", None, "Caffe's: TEST net files (each tested in turn, with its test_iter)",
          repeated=True),
    Field("net_param", "any", None, "Caffe's: the net given inline in the solver"),
    Field("train_net_param", "any", None, "Caffe's: the TRAIN net given inline in the solver"),
    Field("test_net_param", "any", None, "Caffe's: TEST nets given inline (after the test_net files)", repeated=True),
    Field("train_state", "net_state", None, "Caffe's NetState of the TRAIN net: {level, stage}"),
    Field("test_state", "net_state", None, "Caffe's NetState of each TEST net: {level, stage}", repeated=True),
    Field("weights", "str", None, "weights to fine-tune from (used without --weights and --snapshot)", repeated=True),
    Field("type", "enum", "SGD", "the solver", choices=SOLVER_TYPES),
    Field("base_lr", "float", None, "the learning rate before the policy's decay",
          exclusive_minimum=0, required=True),
    Field("lr_policy", "enum", "fixed", "how the learning rate decays with the iteration", choices=LR_POLICIES),
    Field("gamma", "float", None, "decay factor of step, exp, inv, multistep; sigmoid's slope (< 0 decays)"),
    Field("power", "float", None, "exponent of inv and poly"),
    Field("stepsize", "int", None, "iterations per decay step (step, sigmoid)", minimum=1),
    Field("stepvalue", "int", None, "iterations at which multistep decays", minimum=1, repeated=True),
    Field("patience", "int", 3, "plateau: tests without improvement of the test loss before the rate drops",
          minimum=1),
    Field("min_lr", "float", 0.0, "plateau: the rate never drops below this; cosine: the rate it ends at",
          minimum=0),
    Field("cosine_cycle", "int", 0, "cosine: iterations of one cosine (then it restarts at base_lr); 0: max_iter",
          minimum=0),
    Field("pct_start", "float", 0.3, "onecycle: the share of max_iter spent rising to base_lr (the peak)",
          exclusive_minimum=0, exclusive_maximum=1),
    Field("div_factor", "float", 25.0, "onecycle: it starts at base_lr / div_factor", exclusive_minimum=0),
    Field("final_div_factor", "float", 1e4, "onecycle: it ends at the start rate / final_div_factor",
          exclusive_minimum=0),
    Field("cycle_momentum", "bool", True, "onecycle: the momentum (Adam's beta1) runs from max_momentum down to "
          "base_momentum while the rate rises, and back while it falls (PyTorch's OneCycleLR); SGD, Nesterov, Adam, "
          "AdamW"),
    Field("base_momentum", "float", 0.85, "onecycle: the momentum at the rate's peak", minimum=0, exclusive_maximum=1),
    Field("max_momentum", "float", 0.95, "onecycle: the momentum at the start and the end", minimum=0,
          exclusive_maximum=1),
    Field("warmup_iter", "int", 0, "any policy: the first warmup_iter iterations scale the rate linearly from "
          "warmup_start_factor to 1", minimum=0),
    Field("warmup_start_factor", "float", 0.1, "the factor of the rate at iteration 0 of the warmup", minimum=0,
          maximum=1),
    Field("early_stop", "early_stop", None, "stop when a test output stops improving: {metric, patience, min_delta}"),
    Field("momentum", "float", 0.0, "momentum of SGD and Nesterov (0.9 is usual); AdaDelta's decay; Adam's beta1",
          minimum=0, exclusive_maximum=1),
    Field("momentum2", "float", 0.999, "Adam's beta2", minimum=0, exclusive_maximum=1),
    Field("rms_decay", "float", 0.99, "RMSProp's decay of the squared gradients", minimum=0, exclusive_maximum=1),
    Field("delta", "float", 1e-8, "AdaGrad, RMSProp, AdaDelta, Adam: added for numerical stability",
          exclusive_minimum=0),
    Field("weight_decay", "float", 0.0, "regularization strength", minimum=0),
    Field("regularization_type", "enum", "L2", "weight decay kind", choices=("L2", "L1")),
    Field("clip_gradients", "float", -1.0, "scale gradients down when their global L2 norm exceeds this "
          "(-1: off)"),
    Field("iter_size", "int", 1, "forward/backward passes whose gradients are summed per update", minimum=1),
    Field("max_iter", "int", None, "number of updates to train for", minimum=0, required=True),
    Field("display", "int", 0, "print and record the loss every this many iterations (0: never)", minimum=0),
    Field("average_loss", "int", 1, "display the mean loss of the last this many iterations", minimum=1),
    Field("ema_decay", "float", 0.0, "keep an exponential moving average of the weights (ema = d ema + (1 - d) w "
          "after each update), test with it, and write it in snapshots (<prefix>_iter_N.ema.weights.npz); 0: off",
          minimum=0, exclusive_maximum=1),
    Field("ema_bn_batches", "int", 0, "with ema_decay: before each test and EMA snapshot, BatchNorm's statistics "
          "recomputed for the averaged weights as the plain mean over this many training batches (the data's "
          "place and random streams then put back); 0: the averaged statistics", minimum=0),
    Field("test_iter", "int", None, "batches per test pass", minimum=1, repeated=True),
    Field("test_interval", "int", 0, "test every this many iterations (0: never)", minimum=0),
    Field("test_initialization", "bool", True, "also test before the first iteration"),
    Field("snapshot", "int", 0, "snapshot every this many iterations (0: only at the end)", minimum=0),
    Field("snapshot_prefix", "str", None, "path prefix of snapshots and metrics, relative to the solver file "
          "(default: the solver file's name without extension)"),
    Field("snapshot_after_train", "bool", True, "snapshot when training ends"),
    Field("random_seed", "int", -1, "seed of fillers, shuffling and dropout (-1: a random seed)"),
    Field("solver_mode", "enum", "CPU", "ignored: yaffe runs on the CPU", choices=("CPU", "GPU")),
    Field("device_id", "int", 0, "ignored: yaffe runs on the CPU", minimum=0),
    Field("test_compute_loss", "bool", False, "Caffe's flag; yaffe always reports the TEST net's loss"),
    Field("debug_info", "bool", False, "log per-layer mean |data| and |diff| at display iterations"),
    Field("monitor", "bool", False, "record dead ReLUs, saturation, gradient norms and update ratios per layer"),
    Field("tensorboard", "str", None, "also write the metrics as TensorBoard scalars into this folder (relative to "
          "the solver file; extra tensorboard)"),
    Field("divergence", "enum", "stop", "a loss pinned at a divergence value (softmax's 87.3365) for 20 iterations: "
          "stop as for NaN (exit 3, _lastgood), or only warn", choices=("stop", "warn")),
    Field("snapshot_diff", "bool", False, "Caffe's flag (diffs are not snapshotted)"),
    Field("snapshot_format", "enum", "BINARYPROTO", "Caffe's snapshot format (yaffe writes .npz)",
          choices=("BINARYPROTO", "HDF5")),
    Field("layer_wise_reduce", "bool", True, "ignored: multi-GPU only"),
)
