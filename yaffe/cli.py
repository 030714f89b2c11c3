"""yaffe's command line: train, test, validate, schema, ... (the `yaffe` command, `python -m yaffe` and `python
run.py` in a checkout). Thin: parses arguments, calls the packages.

Usage errors and spec errors print `file:line:col: error: ...` lines and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys


def cmd_train(args):
    from solvers.launch import share_cores
    share_cores()  # under mpiexec: threads per rank = cores / ranks on the host, before NumPy loads
    from solvers.parallel import world
    comm = world()  # None unless started by mpiexec with several ranks (MPI is not even imported then)
    if comm is None:
        return _train(args, None)
    try:
        return _train(args, comm)
    except BaseException as e:  # one rank failing must end every rank, not leave them waiting
        from solvers.parallel import end_job
        return end_job(comm, e, report)


def _train(args, comm):
    from solvers.trainer import Trainer, say, say_glog
    _data_sample(args)
    trainer = Trainer(args.solver, out=say_glog if args.log_format == "glog" else say, metrics_path=args.metrics,
                      overrides=dict(args.set or []), lr_scale=args.lr_scale,
                      sigint_effect=args.sigint_effect, sighup_effect=args.sighup_effect,
                      sigterm_effect=args.sigterm_effect, monitor=args.monitor,
                      comm=comm, mpi_timeout=args.mpi_timeout, replicas=args.replicas, force=args.force,
                      tensorboard=args.tensorboard, precompile=True,
                      from_weights=bool(args.weights or args.snapshot))
    trainer.train(snapshot_path=args.snapshot, weights_path=args.weights)
    stopped = trainer.agreed_stop if comm is not None else trainer.stop_requested
    if not stopped or getattr(trainer, "early_stopped", False):
        return 0
    return 128 + int(getattr(trainer, "stop_signal", 2))  # 130 after Ctrl-C, 143 after SIGTERM (shells' convention)


def cmd_test(args):
    from solvers.trainer import test_model
    result = test_model(args.model, args.weights, args.iterations, out=(lambda *a: None) if args.json else print,
                        level=args.level, stages=_stages(args.stage))
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_predict(args):
    from solvers.predict import predict
    predict(args.model, args.weights, args.inputs, blobs=_stages(args.blobs) or None, labels=args.labels,
            top_k=args.top_k, output=args.output, scale=args.scale, mean=args.mean, batch=args.batch)
    return 0


def cmd_extract_features(args):
    """run.py extract-features W NET BLOBS DBS N DB_TYPE [CPU|GPU [ID]]: Caffe's tools/extract_features."""
    from solvers.predict import extract_features
    if args.device and args.device[0].upper() == "GPU":
        print("Note: GPU ignored: yaffe runs on the CPU", file=sys.stderr)
    extract_features(args.weights, args.model, args.blobs, args.dbs, args.batches, args.db_type)
    return 0


def cmd_export(args):
    """run.py export MODEL --weights W -o model.onnx: the TEST net as ONNX (netspec/onnx_export.py)."""
    from netspec.net import Net
    from netspec.onnx_export import export
    from netspec.spec import load_net
    from solvers.snapshot import load_weights_file
    net = Net(load_net(args.model), "TEST", args.model, seed=0, level=args.level, stages=tuple(_stages(args.stage)))
    if args.weights:
        said = net.load_weights(load_weights_file(args.weights), args.weights).warning()
        if said:
            print(f"Warning: {said}", file=sys.stderr)
    export(net, args.output, batch=args.batch)
    return 0


def cmd_import(args):
    """run.py import model.onnx -o net.yaml: the graph as a yaffe net, its weights beside it."""
    from netspec.onnx_import import write
    write(args.model, args.output, batch=args.batch)
    return 0


def cmd_check_layer(args):
    """run.py check-layer module.Class: the numerical gradient check of a Python layer (float64)."""
    import numpy as np
    from layers.gradcheck import check_gradients
    from netspec.errors import LayerError, UserError
    module, _, cls = args.layer.rpartition(".")
    if not module:
        raise UserError(f"check-layer {args.layer!r}: name the class with its module, e.g. mylayers.Cube")
    try:
        shapes = [tuple(int(d) for d in s.split(",")) for s in args.bottom]
    except ValueError:
        raise UserError(f"--bottom {' '.join(args.bottom)}: give each bottom's shape as numbers, e.g. --bottom 2,3,4") from None
    rng = np.random.default_rng(args.seed)
    bottoms = [rng.normal(size=s) for s in shapes]
    spec = {"python_param": {"module": module, "layer": cls, "param_str": args.param_str or ""},
            "top": [f"t{i}" for i in range(args.tops)], "phase": args.phase}
    try:
        worst = check_gradients("Python", spec, bottoms, eps=args.eps, rtol=args.rtol, atol=args.atol)
    except LayerError as e:
        raise UserError(f"check-layer {args.layer}: {e}") from None
    except AssertionError as e:
        print(f"FAIL {args.layer}: {e}")
        return 1
    print(f"PASS {args.layer}: bottoms {[list(s) for s in shapes]}, largest difference from central differences "
          f"{worst:.2e} (rtol {args.rtol:g}, atol {args.atol:g})")
    return 0


def _data_sample(args):
    """--data-sample N: the rows of a streamed source the data checks read (layers/data.py check_rows)."""
    if getattr(args, "data_sample", None):
        os.environ["YAFFE_DATA_SAMPLE"] = str(args.data_sample)


def cmd_validate(args):
    from netspec.spec import validate, summary
    _data_sample(args)
    findings = validate(args.files, strict=args.strict)
    report = summary(args.files[0], args.phase) if args.summary and not any(
        f.severity == "error" for f in findings) else None
    if args.format == "json":
        body = [f.as_dict() for f in findings]
        if args.summary:
            body = {"findings": body, "layers": report["layers"] if report else []}
        print(json.dumps(body, indent=1))
    else:
        for f in findings:
            print(f)
        if report:
            print(report["text"])
        errors = sum(f.severity == "error" for f in findings)
        warnings = sum(f.severity == "warning" for f in findings)
        print(f"{errors} error(s), {warnings} warning(s)" if findings else f"{', '.join(args.files)}: valid",
              file=sys.stderr)
    return 2 if any(f.severity == "error" for f in findings) else 0


def cmd_sanity(args):
    from solvers.sanity import sanity
    return 0 if sanity(args.solver) else 1


def cmd_lr_find(args):
    from solvers.sanity import lr_find
    result = lr_find(args.solver, args.start, args.end, args.iterations)
    if args.plot:
        from solvers.plots import plot_lr
        plot_lr(result, args.plot)
        print(f"Wrote {args.plot}")
    return 0


def cmd_search(args):
    if args.backend == "optuna":
        if args.mpi or args.jobs > 1:
            from netspec.errors import UserError
            raise UserError("run.py search: error: --backend optuna runs its trials one at a time in this process "
                            "(it prunes them at their tests); leave out --jobs and --mpi")
        from solvers.search import search_optuna
        search_optuna(args.solver, args.space, args.trials, args.iters, args.out, args.seed)
        return 0
    if not args.mpi:
        from solvers.search import search
        search(args.solver, args.space, args.trials, args.iters, args.jobs, args.out, args.seed)
        return 0
    from solvers.launch import share_cores
    share_cores()
    from solvers.parallel import trial_pool
    with trial_pool() as pool:  # rank 0 hands out the trials; the other ranks run them, one at a time each
        if pool is not None:
            from solvers.search import search
            search(args.solver, args.space, args.trials, args.iters, args.jobs, args.out, args.seed, pool=pool)
    return 0


def cmd_plot(args):
    from solvers.plots import plot_metrics
    plot_metrics(args.metrics, args.output)
    print(f"Wrote {args.output}")
    return 0


def cmd_time(args):
    from netspec.timing import time_net
    time_net(args.model, args.iterations, args.phase, level=args.level, stages=_stages(args.stage))
    return 0


def _stages(text):
    return [s for s in (text or "").split(",") if s]


# Caffe's command-line spellings (gflags: -flag value, --flag=value), so scripts written for `caffe` run with the
# command name changed: `train -solver S -weights W -snapshot X`, `test -model M -weights W -iterations N`, ...
CAFFE_FLAGS = {"weights": "--weights", "snapshot": "--snapshot", "iterations": "--iterations", "phase": "--phase",
               "sigint_effect": "--sigint-effect", "sighup_effect": "--sighup-effect", "stage": "--stage",
               "level": "--level"}


def _imageset_argv(argv: list) -> list:
    """`data convert` with convert_imageset's flags (create_imagenet.sh's -resize_height=256 -resize_width=256
    -shuffle, -backend, -gray, -encoded, -encode_type) turned into this command line's."""
    out, size, i = argv[:2], {}, 2
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.lstrip("-").partition("=")
        boolean = name in ("shuffle", "gray", "encoded", "check_size")
        if arg.startswith("-") and (boolean or name in ("resize_height", "resize_width", "backend", "encode_type")):
            if not eq and not boolean:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if name in ("resize_height", "resize_width"):
                size[name] = value
            elif name == "check_size":
                pass  # (images of other sizes are an error, or a note, without it)
            elif boolean:
                out += [f"--{name}"] if value.lower() not in ("false", "0") else []
            else:
                out += [f"--{name.replace('_', '-')}", value]
        else:
            out.append(arg)
        i += 1
    h, w = size.get("resize_height", "0"), size.get("resize_width", "0")
    if h not in ("", "0") and w not in ("", "0"):  # (Caffe resizes only when both are given)
        out += ["--resize", f"{h}x{w}"]
    return out


def caffe_argv(argv: list) -> list:
    """argv with Caffe's flags of train/test/time turned into this command line's: -solver/-model become the
    positional file; -gpu is dropped with a note (yaffe runs on the CPU). `data convert` takes convert_imageset's."""
    if argv[:2] == ["data", "convert"]:
        return _imageset_argv(argv)
    if argv[:2] == ["data", "mean"]:  # compute_image_mean -backend=lmdb DB [FILE]: the folder says which
        out, i = argv[:2], 2
        while i < len(argv):
            if argv[i].lstrip("-").partition("=")[0] == "backend" and argv[i].startswith("-"):
                i += 1 if "=" in argv[i] else 2
                continue
            out.append(argv[i])
            i += 1
        return out
    if not argv or argv[0] not in ("train", "test", "time"):
        return argv
    out, rest, i = [argv[0]], [], 1
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and (name in CAFFE_FLAGS or name in ("solver", "model", "gpu")):
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if name in ("solver", "model"):
                out.insert(1, value)
            elif name == "gpu":
                print(f"Note: -gpu {value} ignored: yaffe runs on the CPU", file=sys.stderr)
            elif name == "level" and argv[0] == "train":
                rest += ["--set", f"train_state={{level: {value}}}"]
            elif name == "stage" and argv[0] == "train":
                rest += ["--set", f"train_state={{stage: [{value}]}}"]
            else:
                rest += [CAFFE_FLAGS[name], value]
        else:
            rest.append(arg)
        i += 1
    return out + rest


def cmd_convert(args):
    from netspec.convert import convert
    convert(args.file, args.output)
    return 0


def cmd_data(args):
    from layers.sources import SourceError, kind_or_none, write_dataset
    from netspec.errors import UserError
    if args.action == "mean":
        return _data_mean(args)
    size = None
    if args.resize:
        try:
            size = tuple(int(v) for v in args.resize.lower().split("x"))
            assert len(size) == 2 and min(size) > 0
        except (ValueError, AssertionError):
            raise UserError(f"--resize: expected HEIGHTxWIDTH of two sizes above 0, e.g. 32x32; received "
                            f"{args.resize!r}") from None
    folder = args.source[0]
    if (len(args.source) == 2 and args.output.lower() in ("lmdb", "leveldb") and os.path.isdir(folder)
            and os.path.isfile(os.path.join(folder, "data_batch_1.bin"))):
        return _convert_cifar(folder, args.source[1], args.output.lower())
    if len(args.source) == 2 and os.path.isdir(args.source[0]) and kind_or_none(args.source[1]) is None:
        if args.root:  # convert_imageset's ROOTFOLDER LISTFILE DB_NAME
            raise UserError(f"{args.source[0]}: error: a root folder given twice (--root {args.root} too); give one")
        args.root, args.source = args.source[0], args.source[1:]
    if not args.output.endswith(".npz"):
        _new_database(args.output)
    try:
        if args.root and not os.path.isdir(args.root):
            raise UserError(f"--root {args.root}: error: no such folder (the folder the list's image paths start "
                            "at)")
        n = write_dataset(args.source, args.output, shuffle=args.shuffle, seed=args.seed, new_size=size,
                          gray=args.gray, root=args.root, backend=args.backend, pairs=args.pairs,
                          encoded=(args.encode_type or "").lower().lstrip(".") if args.encoded else None)
    except SourceError as e:  # (with several sources, the message names the one)
        raise UserError(f"{args.source[0] if len(args.source) == 1 else 'data convert'}: error: {e}") from None
    except OSError as e:  # the OS's words, without Python's "[Errno 2]" and the repeated path
        name = e.filename or args.source[0]
        raise UserError(f"{name}: error: {(e.strerror or str(e)).lower()}; check the path (SOURCE is a .csv, "
                        ".npz, IDX file, CIFAR .bin or image list; OUTPUT an .npz or an LMDB folder)") from None
    print(f"Wrote {n} {'pairs' if args.pairs else 'examples'} to {args.output}"
          + ("" if args.output.endswith(".npz") else f" ({'LevelDB' if args.backend == 'leveldb' else 'LMDB'})"))
    return 0


def _new_database(path):
    """A database is written new: one that exists is an error (Caffe's tools refuse it too)."""
    from netspec.errors import UserError
    if os.path.exists(path):
        raise UserError(f"{path}: error: exists already; remove it first (rm -r {path}, as Caffe's create_*.sh "
                        "scripts do) or give another name: records written into it would mix with its own")


def _convert_cifar(folder, out_folder, backend):
    """convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER DB_TYPE (create_cifar10.sh's line): data_batch_1..5.bin to
    OUTPUT_FOLDER/cifar10_train_DB_TYPE, test_batch.bin to cifar10_test_DB_TYPE."""
    from layers.sources import SourceError, write_dataset
    from netspec.errors import UserError
    train = [os.path.join(folder, f"data_batch_{i}.bin") for i in range(1, 6)]
    test = os.path.join(folder, "test_batch.bin")
    missing = [p for p in train + [test] if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{missing[0]}: error: no such file; convert_cifar_data's folder holds data_batch_1.bin ... "
                        "data_batch_5.bin and test_batch.bin (CIFAR-10's binary version)")
    if not os.path.isdir(out_folder):
        what = "not a folder" if os.path.exists(out_folder) else "no such folder"
        raise UserError(f"{out_folder}: error: {what} (convert_cifar_data's OUTPUT_FOLDER, where "
                        f"cifar10_train_{backend} and cifar10_test_{backend} go); make it first: mkdir -p {out_folder}")
    for sources_, part in ((train, "train"), ([test], "test")):
        out = os.path.join(out_folder, f"cifar10_{part}_{backend}")
        _new_database(out)
        try:
            n = write_dataset(sources_, out, backend=backend)
        except SourceError as e:
            raise UserError(f"{folder}: error: {e}") from None
        print(f"Wrote {n} examples to {out} ({'LevelDB' if backend == 'leveldb' else 'LMDB'})")
    return 0


def _data_mean(args):
    """run.py data mean SOURCE [OUTPUT]: Caffe's compute_image_mean (its lines, its .binaryproto)."""
    import numpy as np

    from layers.sources import SourceError, image_mean
    from netspec.errors import UserError
    from yaffe.proto import caffe_pb2
    if not os.path.exists(args.source):
        raise UserError(f"{args.source}: error: no such file or directory; check the path (SOURCE is an LMDB or "
                        "LevelDB folder, an IDX, .csv or .npz file, or an image list)")
    try:
        mean, _ = image_mean(args.source, out=print)
    except SourceError as e:
        raise UserError(f"{args.source}: error: {e}") from None
    except OSError as e:
        raise UserError(f"{e.filename or args.source}: error: {(e.strerror or str(e)).lower()}") from None
    if mean.ndim != 3:
        raise UserError(f"{args.source}: error: its examples are vectors of {mean.size} values, not images; a mean "
                        "file is for images (C, H, W)")
    if args.output:
        c, h, w = mean.shape
        blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w, data=mean.ravel().tolist())
        print(f"Write to {args.output}")
        try:
            with open(args.output, "wb") as f:
                f.write(blob.SerializeToString())
        except OSError as e:
            raise UserError(f"{args.output}: error: cannot write the mean file ({(e.strerror or str(e)).lower()}); "
                            "give a path in a folder that exists and that you may write to") from None
    print(f"Number of channels: {mean.shape[0]}")
    for c, plane in enumerate(mean.reshape(mean.shape[0], -1)):
        value = np.float32(0)
        for v in plane:  # (Caffe's float sum, in order)
            value += v
        print(f"mean_value channel [{c}]: {float(value / np.float32(plane.size)):g}")
    return 0


def cmd_schema(args):
    from netspec.schema import net_schema, solver_schema
    print(json.dumps(solver_schema() if args.kind == "solver" else net_schema(), indent=1))
    return 0


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and a hint, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}; see '{self.prog} --help'\n")
        sys.exit(2)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, received {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, received {value}")
    return value


def field_value(text):
    """`field=value` for --set; the value is read as a spec's YAML is (0.001, 1e-3, [100, 200], Adam)."""
    from netspec.errors import SpecError
    from netspec.loader import value as read_value
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected field=value, e.g. base_lr=0.001; received {text!r}")
    try:
        return key.strip(), read_value(value)
    except SpecError:
        raise argparse.ArgumentTypeError(f"cannot read the value of {text!r}") from None


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, received {value}")
    return value


def _net_state_args(p):
    """--stage and --level: the net's state for its include/exclude rules."""
    p.add_argument("--stage", metavar="S1,S2", help="the net's stages (include/exclude rules), comma-separated")
    p.add_argument("--level", type=int, default=0, help="the net's level (include/exclude rules)")


def build_parser():
    called = os.path.basename(sys.argv[0])
    prog = "yaffe" if called in ("yaffe", "__main__.py") else "run.py"
    parser = Parser(prog=prog, description="yaffe: Caffe-style declarative nets on Numba.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    p = sub.add_parser("train", help="train a net from a solver file")
    p.add_argument("solver", help="solver YAML (names the net)")
    p.add_argument("--data-sample", type=positive_int, metavar="N", help="rows of a streamed source the checks "
                   "before the first iteration read (default 100,000 labels)")
    p.add_argument("--snapshot", metavar="STATE", help="resume from a <prefix>_iter_<N>.solverstate.npz")
    p.add_argument("--weights", metavar="W", help="start from these weights (.weights.npz or .caffemodel; several "
                   "separated by commas are applied in order), i.e. fine-tune")
    p.add_argument("--set", metavar="FIELD=VALUE", type=field_value, action="append",
                   help="override a solver field, e.g. --set base_lr=0.001 (repeatable)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write the metrics as TensorBoard scalars into DIR "
                   "(pip install 'yaffe[tensorboard]'; tensorboard --logdir DIR)")
    p.add_argument("--force", action="store_true", help="start over a run already at snapshot_prefix, or resume a "
                   "snapshot into a net whose learnable layers changed")
    p.add_argument("--lr-scale", type=positive_float, metavar="X",
                   help="multiply the learning rate by X from the (resumed) iteration on, whatever the policy")
    for sig, default in (("sigint", "stop"), ("sighup", "snapshot"), ("sigterm", "stop")):
        p.add_argument(f"--{sig}-effect", choices=("snapshot", "stop", "none"), default=default,
                       help=f"on {sig.upper()}: snapshot and go on, snapshot and stop, or ignore (default {default})")
    p.add_argument("--monitor", action="store_true", help="record dead ReLUs, saturated units, gradient norms and "
                   "update ratios per layer at display iterations (the solver's monitor: true)")
    p.add_argument("--metrics", metavar="PATH", help="JSON-lines metrics file "
                   "(default <snapshot_prefix>_metrics.jsonl)")
    p.add_argument("--replicas", type=positive_int, metavar="K",
                   help="run each batch as K slices, one thread each (default: as many as the threads, for nets "
                   "with feature maps whose results do not change; 1: each layer runs the whole batch)")
    p.add_argument("--log-format", choices=("plain", "glog"), default="plain",
                   help="glog: each line of the training log prefixed as Caffe's (I1204 12:07:44.033315 PID "
                   "solver.cpp:0] ...), for Caffe's tools/extra/parse_log.py and plot_training_log.py")
    p.add_argument("--mpi-timeout", type=positive_float, default=300.0, metavar="S",
                   help="under mpiexec: stop with an error when another rank has not answered for S seconds "
                   "(default 300; raise it above the time rank 0 takes for a test)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="score a net's TEST phase with trained weights")
    p.add_argument("model", help="net YAML")
    p.add_argument("--weights", metavar="W", required=True, help="a .weights.npz snapshot or a Caffe .caffemodel")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="batches to run (default: one pass over the TEST data, else 50 as Caffe)")
    p.add_argument("--json", action="store_true", help="print the averaged outputs as one JSON object")
    _net_state_args(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="run a trained net on new inputs: top-k classes, or blobs to a file "
                       "(Caffe's classification example and extract_features)")
    p.add_argument("model", help="a deploy net (an Input layer) or a net with a TEST data layer (its transform is used)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders of images, list files (path [label]), .npz, .csv, IDX, LMDB, LevelDB")
    p.add_argument("--weights", metavar="W", required=True, help="a .weights.npz snapshot or a Caffe .caffemodel")
    p.add_argument("--blobs", metavar="B1,B2", help="blobs to report and write for every input (default: the "
                   "net's outputs, or the scores its loss reads)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (Caffe's synset_words.txt)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes printed per input (default 5)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the blobs: .npz, .csv or .jsonl (one row per input), "
                   "or an LMDB folder per blob (fc7_db,fc8_db: Caffe's extract_features databases)")
    p.add_argument("--scale", type=float, help="deploy nets: multiply the inputs by this (e.g. 0.00390625)")
    p.add_argument("--mean", help="deploy nets: subtract a mean (.npy, .binaryproto, or values per channel)")
    p.add_argument("--batch", type=positive_int, help="inputs per forward pass (default: the net's batch)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("extract-features", aliases=["extract_features"], help="Caffe's extract_features as it is "
                       "called: the TEST net's own data through it, blobs to databases")
    p.add_argument("weights", help="pretrained_net_param: a .caffemodel or .weights.npz")
    p.add_argument("model", help="feature_extraction_proto_file: a net with a TEST data layer (ImageData, Data)")
    p.add_argument("blobs", help="extract_feature_blob_name1[,name2,...]")
    p.add_argument("dbs", help="save_feature_dataset_name1[,name2,...]: a new database per blob")
    p.add_argument("batches", type=positive_int, help="num_mini_batches")
    p.add_argument("db_type", help="lmdb or leveldb")
    p.add_argument("device", nargs="*", help="CPU or GPU [DEVICE_ID]: yaffe runs on the CPU")
    p.set_defaults(func=cmd_extract_features)

    p = sub.add_parser("export", help="write a trained net's TEST phase as an ONNX model (ONNX Runtime, TensorRT, "
                       "OpenVINO; extra onnx)")
    p.add_argument("model", help="a net (a deploy net, or one with data layers: they are left out)")
    p.add_argument("--weights", metavar="W", help="a .weights.npz snapshot or a Caffe .caffemodel")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--batch", type=positive_int, help="a fixed batch size (default: symbolic, any batch)")
    _net_state_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="an ONNX model as a yaffe net (YAML) and its weights (.weights.npz), for the "
                       "graphs Caffe's layers express (extra onnx)")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="the net YAML to write (the weights go beside it)")
    p.add_argument("--batch", type=positive_int, default=1, help="the Input's batch where the model's is symbolic")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("check-layer", help="gradient-check a Python layer numerically (float64, central "
                       "differences), as every built-in layer is")
    p.add_argument("layer", help="module.Class (the module on PYTHONPATH or in the working directory)")
    p.add_argument("--bottom", action="append", required=True, metavar="N,C,...",
                   help="a bottom's shape (random normal values); once per bottom")
    p.add_argument("--param-str", help="the layer's param_str")
    p.add_argument("--tops", type=positive_int, default=1, help="number of tops (default 1)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN")
    p.add_argument("--seed", type=int, default=0, help="of the random bottoms")
    p.add_argument("--eps", type=float, default=1e-5, help="the finite-difference step")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    p.set_defaults(func=cmd_check_layer)

    p = sub.add_parser("validate", help="check net and solver files without training")
    p.add_argument("files", nargs="+", help="net or solver YAML files (a solver brings its net)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: findings for tools")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--data-sample", type=positive_int, metavar="N", help="rows of a streamed source the data "
                   "checks read (default 100,000 labels; never the whole source)")
    p.add_argument("--summary", action="store_true", help="print each layer's tops, shapes, params and memory")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default=None,
                   help="the phase to summarise (default TRAIN; TEST for a deploy net: Input layers, no loss)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("time", help="per-layer forward and backward times, like caffe time")
    p.add_argument("model", help="net YAML or prototxt (or a solver: its net)")
    p.add_argument("--iterations", type=positive_int, default=50, help="timed iterations (default 50)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN")
    _net_state_args(p)
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("sanity", help="the four checks before a long run: initial loss, regularization, "
                       "overfitting 20 examples, a numerical gradient check of the whole net")
    p.add_argument("solver")
    p.set_defaults(func=cmd_sanity)

    p = sub.add_parser("lr-find", help="raise the learning rate exponentially and suggest base_lr")
    p.add_argument("solver")
    p.add_argument("--start", type=positive_float, default=1e-7, help="first rate (default 1e-7)")
    p.add_argument("--end", type=positive_float, default=10.0, help="last rate (default 10)")
    p.add_argument("--iterations", type=positive_int, default=200, help="iterations (default 200)")
    p.add_argument("--plot", metavar="PNG", help="also draw the curve (the plots extra)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("search", help="random hyperparameter search, coarse to fine, trials in parallel")
    p.add_argument("solver")
    p.add_argument("--space", required=True, help="YAML: field: {log_uniform|uniform: [lo, hi]} or {choice: [...]}")
    p.add_argument("--trials", type=positive_int, default=12, help="trials in all (a third in the fine round)")
    p.add_argument("--iters", type=positive_int, default=200, help="iterations per trial")
    p.add_argument("--jobs", type=positive_int, default=1, help="trials run at once")
    p.add_argument("--mpi", action="store_true", help="under mpiexec -n K: K - 1 ranks run trials, one each at a "
                   "time, handed out by rank 0 (mpi4py's futures pool)")
    p.add_argument("--out", help="results folder (default: search/ beside the solver)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("random", "optuna"), default="random",
                   help="random: log-space random search, coarse then fine (built in); optuna: TPE sampling with "
                   "pruning of bad trials at their tests (pip install 'yaffe[optuna]')")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("plot", help="training and test curves from metrics files (the plots extra)")
    p.add_argument("metrics", nargs="+", help="one or more <prefix>_metrics.jsonl files, overlaid")
    p.add_argument("-o", "--output", default="curves.png", help="the image to write (default curves.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("convert", help="write a Caffe .prototxt (net or solver, V0/V1 upgraded) as yaffe YAML, or "
                       "as an upgraded .prototxt (Caffe's upgrade_net_proto_text)")
    p.add_argument("file", help="a net or solver .prototxt (a solver's net is converted too)")
    p.add_argument("-o", "--output", help="the file to write: .yaml, or .prototxt for upgraded prototxt (default: "
                   "beside the input, .yaml)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("data", help="data tools: 'data convert SOURCE OUTPUT' writes an LMDB or an .npz, 'data mean "
                       "SOURCE OUTPUT' a mean file")
    data_sub = p.add_subparsers(dest="action", required=True, parser_class=Parser, metavar="ACTION")
    q = data_sub.add_parser("convert", help="IDX, csv, npz or an image list (path label) to an LMDB of Caffe "
                            "Datum records, or to an .npz (like Caffe's convert_imageset)")
    q.add_argument("source", nargs="+", help="an IDX images file (labels beside it), a .csv, an .npz, a CIFAR "
                   "binary batch (.bin), an LMDB or LevelDB folder, or a text file of 'path label'; several data "
                   "files are written one after the other (data_batch_1.bin ... data_batch_5.bin). Caffe's tools' "
                   "lines work too: convert_imageset [-flags] ROOT/ LIST DB, convert_mnist_data IMAGES LABELS DB, "
                   "convert_cifar_data FOLDER OUT_FOLDER lmdb")
    q.add_argument("output", help="an .npz file, or the LMDB (LevelDB) folder to create")
    q.add_argument("--backend", choices=("lmdb", "leveldb"), default="lmdb", type=str.lower,
                   help="the database to write (convert_imageset's -backend; default lmdb)")
    q.add_argument("--shuffle", action="store_true", help="shuffle the examples")
    q.add_argument("--pairs", action="store_true", help="pairs of examples drawn at random, as many as examples, "
                   "stacked as 2C channels, label 1 for the same class, else 0 (examples/siamese's "
                   "convert_mnist_siamese_data)")
    q.add_argument("--seed", type=int, default=0, help="the seed of --shuffle and --pairs")
    q.add_argument("--resize", metavar="HxW", help="resize images (image lists only)")
    q.add_argument("--gray", action="store_true", help="read images as 1 channel (image lists only)")
    q.add_argument("--encoded", action="store_true", help="store each image's file as it is (JPEG, PNG), or "
                   "encoded again where resized: a database many times smaller (convert_imageset's -encoded; "
                   "image lists only)")
    q.add_argument("--encode-type", metavar="TYPE", help="with --encoded: jpg or png for every image (default: "
                   "each file's own type)")
    q.add_argument("--root", metavar="DIR", help="the folder an image list's relative paths start at "
                   "(convert_imageset's ROOTFOLDER; default: the list file's folder or the working directory, "
                   "whichever holds the first image)")
    q.set_defaults(func=cmd_data)
    q = data_sub.add_parser("mean", help="the mean image of a dataset as a .binaryproto (Caffe's "
                            "compute_image_mean), for a transform_param's mean_file")
    q.add_argument("source", help="an LMDB or LevelDB folder (streamed), or an IDX, .csv, .npz file or image list")
    q.add_argument("output", nargs="?", help="the .binaryproto to write (without: print the channels' means)")
    q.set_defaults(func=cmd_data)

    p = sub.add_parser("schema", help="print the JSON Schema of nets (or solvers)")
    p.add_argument("kind", nargs="?", choices=("net", "solver"), default="net")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(caffe_argv(list(sys.argv[1:] if argv is None else argv)))
    from netspec.errors import UserError
    try:
        return args.func(args)
    except Exception as e:
        if os.environ.get("YAFFE_DEBUG") and not isinstance(e, UserError):
            raise
        return report(e)
    except KeyboardInterrupt as e:
        return report(e)


def report(e: BaseException) -> int:
    """Print an exception for the user (never a traceback) and return the exit status."""
    from netspec.errors import UserError
    if isinstance(e, UserError):
        if not getattr(e, "printed", False):
            print(str(e), file=sys.stderr, flush=True)
        return getattr(e, "exit_code", 2)
    if isinstance(e, KeyboardInterrupt):
        print("Interrupted.", file=sys.stderr, flush=True)
        return 130
    if isinstance(e, BrokenPipeError):
        return 0
    said = _file_system_error(e)
    if said is not None:
        print(said, file=sys.stderr, flush=True)
        return 2
    # a bug in yaffe, not in the user's input
    print(f"internal error: {type(e).__name__}: {e}\nThis is a bug in yaffe; rerun with YAFFE_DEBUG=1 "
          "for a traceback and report it.", file=sys.stderr, flush=True)
    return 1


FS_FIXES = {
    errno.ENOENT: "its folder does not exist: create it (mkdir -p) or give another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give another path",
    errno.EISDIR: "it is a folder: give a file name",
    errno.EACCES: "no permission: give a path you can write to",
    errno.EPERM: "not permitted: give a path you can write to",
    errno.EROFS: "the file system is read-only: give a path on a writable one",
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere",
}


def _file_system_error(e: BaseException):
    """The one-line message for a file the command could not open or write (an output in a missing folder, a
    full disk), or None for anything else."""
    if not isinstance(e, OSError) or e.errno not in FS_FIXES:
        return None
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}error: {e.strerror or e}; {FS_FIXES[e.errno]}"
