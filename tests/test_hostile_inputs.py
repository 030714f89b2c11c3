"""Broken and hostile inputs, in every format yaffe reads, through the command a user would run: each ends with
exit 2 and an error that names the file, never an internal error or a traceback, in bounded time.

The corpus is generated here (about 250 inputs): specs (YAML and prototxt), solver files, weights (.npz,
.caffemodel), solver states, every data source (csv, IDX, npz, HDF5, LMDB, image lists) and command-line values.
"""
import gzip
import io
import json
import os
import struct
import time

import numpy as np
import pytest

import run
from netspec.caffemodel import blob_bytes, caffemodel_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "models", "lenet_digits")

GOOD_NET = """layer:
  - {name: d, type: Data, top: [data, label], data_param: {source: SOURCE, batch_size: 4BACKEND}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 3, weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def net_for(source, backend=""):
    return GOOD_NET.replace("SOURCE", json.dumps(source)).replace("BACKEND", backend)


# ---- the corpus: (name, files {relative path: bytes}, command line with {dir}) ---------------------------------

def yaml_specs():
    bad = {
        "empty": b"", "garbage": bytes(range(256)) * 4, "nul": b"layer:\n  - {name: a\x00b, type: ReLU}\n",
        "not_utf8": b"layer:\n  - {name: \xff\xfe, type: ReLU}\n", "tab": b"layer:\n\t- {name: a}\n",
        "deep": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "deep_map": b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000,
        "bomb": b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e]\n",
        "bomb9": b"a: &a [x,x,x,x,x,x,x,x,x]\n" + b"".join(b"%c: &%c [%s]\n" % (98 + i, 98 + i, b",".join(
            [b"*%c" % (97 + i)] * 9)) for i in range(9)),
        "python_tag": b"layer: !!python/object/apply:os.system ['echo pwned']\n",
        "list_top": b"- 1\n- 2\n", "scalar": b"42\n", "layer_scalar": b"layer: 5\n", "layer_str_items": b"layer: [a, b]\n",
        "huge_int": b"layer:\n  - {name: ip, type: InnerProduct, inner_product_param: {num_output: 1180591620717411303424}}\n",
        "neg_output": b"layer:\n  - {name: ip, type: InnerProduct, inner_product_param: {num_output: -3}}\n",
        "float_output": b"layer:\n  - {name: ip, type: InnerProduct, inner_product_param: {num_output: 2.5}}\n",
        "nan_lr": b"layer:\n  - {name: ip, type: InnerProduct, param: [{lr_mult: .nan}]}\n",
        "inf_scale": b"layer:\n  - {name: d, type: Input, top: x, input_param: {shape: {dim: [1e400]}}}\n",
        "dup_key": b"layer:\n  - {name: a, name: b, type: ReLU}\n", "unknown_field": b"layre: []\n",
        "bad_type": b"layer:\n  - {name: a, type: 7}\n", "no_name": b"layer:\n  - {type: ReLU}\n",
        "huge_dim": b"layer:\n  - {name: d, type: Input, top: x, input_param: {shape: {dim: [99999999999, 99999999]}}}\n",
        "neg_dim": b"layer:\n  - {name: d, type: Input, top: x, input_param: {shape: {dim: [-1, 3]}}}\n",
        "zero_dim": b"layer:\n  - {name: d, type: Input, top: x, input_param: {shape: {dim: [0, 3]}}}\n"
                    b"  - {name: r, type: ReLU, bottom: x, top: y}\n",
        "self_loop": b"layer:\n  - {name: a, type: ReLU, bottom: x, top: x}\n",
        "huge_pad": b"layer:\n  - {name: d, type: Input, top: x, input_param: {shape: {dim: [1, 1, 4, 4]}}}\n"
                    b"  - {name: c, type: Convolution, bottom: x, top: y, convolution_param: {num_output: 1, "
                    b"kernel_size: 3, pad: 100000000}}\n",
        "string_number": b"layer:\n  - {name: ip, type: InnerProduct, inner_product_param: {num_output: ten}}\n",
        "list_for_dict": b"layer:\n  - [name, ip]\n", "version": b"yaffe: 99\nlayer: []\n",
        "long_name": b"layer:\n  - {name: " + b"a" * 100000 + b", type: ReLU}\n",
        "huge_kernel": b"layer:\n  - {name: d, type: Input, top: x, input_param: {shape: {dim: [1, 1, 4, 4]}}}\n"
                       b"  - {name: c, type: Convolution, bottom: x, top: y, convolution_param: {num_output: 1, "
                       b"kernel_size: 1180591620717411303424}}\n",
        "dummy_35pib": b"layer:\n  - {name: d, type: DummyData, top: x, dummy_data_param: {shape: {dim: [100000, 100000, "
                       b"100000, 1000]}}}\n  - {name: s, type: Silence, bottom: x}\n",
        "bool_output": b"layer:\n  - {name: ip, type: InnerProduct, inner_product_param: {num_output: true}}\n",
        "null_layer": b"layer:\n  - null\n",
        "py_missing": b"layer:\n  - {name: p, type: Python, python_param: {module: no_such_module_x, layer: L}}\n",
        "py_not_class": b"layer:\n  - {name: d, type: Input, top: x, input_param: {shape: {dim: [2]}}}\n"
                        b"  - {name: p, type: Python, bottom: x, top: y, python_param: {module: os, layer: getcwd}}\n", "unicode_name": "layer:\n  - {name: \u00e9\u4e2d, type: ReLU}\n".encode(),
    }
    for name, data in bad.items():
        yield f"yaml_{name}", {"net.yaml": data}, ["validate", "{dir}/net.yaml"]


def prototxt_specs():
    bad = {
        "bad_escape": b'name: "a\\xZZ"\n', "unterminated": b'name: "abc\n', "open_brace": b"layer {\n name: 'a'\n",
        "close_brace": b"}\n", "garbage": bytes(range(256)), "nul": b'name: "a\x00"\n', "not_utf8": b'name: "\xff"\n',
        "deep": b"layer " + b"{ a " * 3000 + b"}" * 3000, "huge_int": b"layer { name: 'a' type: 'Convolution' "
        b"convolution_param { num_output: 99999999999999999999999999 } }\n", "colon_only": b"name:\n",
        "bad_enum": b"layer { name: 'p' type: 'Pooling' pooling_param { pool: MEDIAN } }\n",
        "octal": b"layer { name: 'a' type: 'ReLU' bottom: \"\\777\" }\n", "bad_float": b"base_lr: 1e999999\n",
        "v1_unknown": b"layers { type: FOO name: 'a' }\n", "empty": b"", "only_comment": b"# nothing\n",
        "neg_dim": b"input: 'data'\ninput_dim: -1\ninput_dim: 3\n", "unicode_escape": b'name: "\\u12"\n',
        "bad_bool": b"force_backward: maybe\n", "repeated_msg_scalar": b"layer: 5\n",
    }
    for name, data in bad.items():
        yield f"prototxt_{name}", {"net.prototxt": data}, ["validate", "{dir}/net.prototxt"]


def solvers():
    base = b"net: net.yaml\nmax_iter: 2\n"
    bad = {
        "no_net": b"base_lr: 0.1\nmax_iter: 1\n", "missing_net": b"net: nope.yaml\nbase_lr: 0.1\nmax_iter: 1\n",
        "self_net": b"net: solver.yaml\nbase_lr: 0.1\nmax_iter: 1\n", "neg_lr": base + b"base_lr: -1\n",
        "nan_lr": base + b"base_lr: .nan\n", "bad_policy": base + b"base_lr: 0.1\nlr_policy: sometimes\n",
        "step_no_size": base + b"base_lr: 0.1\nlr_policy: step\n", "huge_iter": b"net: net.yaml\nbase_lr: 0.1\n"
        b"max_iter: 1180591620717411303424\n", "bad_type": base + b"base_lr: 0.1\ntype: Magic\n",
        "momentum_2": base + b"base_lr: 0.1\nmomentum: 2\n", "garbage": bytes(range(256)),
        "net_dir": b"net: .\nbase_lr: 0.1\nmax_iter: 1\n", "test_iter_str": base + b"base_lr: 0.1\ntest_iter: many\n",
        "prefix_file": base + b"base_lr: 0.1\nsnapshot_prefix: net.yaml/x\n",
    }
    net = net_for(os.path.join(DIGITS, "digits_test.csv.gz")).encode()
    for name, data in bad.items():
        yield f"solver_{name}", {"solver.yaml": data, "net.yaml": net}, ["validate", "{dir}/solver.yaml"]


def data_sources():
    csv_rows = b"".join(b"1,2,3,4,%d\n" % (i % 3) for i in range(8))
    idx_head = bytes([0, 0, 8, 3]) + struct.pack(">III", 8, 2, 2)
    sources = {
        "header_only.csv": b"a,b,c,label\n", "binary.csv": bytes(range(256)) * 8, "empty.csv": b"",
        "ragged.csv": b"1,2,3,0\n1,2,0\n", "text.csv": b"a,b,c,d\ne,f,g,h\n", "nan.csv": b"nan,1,2,3,0\n" * 4,
        "neg_label.csv": b"1,2,3,4,-1\n" * 4, "frac_label.csv": b"1,2,3,4,0.5\n" * 4,
        "huge_label.csv": b"1,2,3,4,1e30\n" * 4, "notgz.csv.gz": csv_rows, "badgz.csv.gz": b"\x1f\x8b" + b"\x00" * 50,
        "truncgz.csv.gz": gzip.compress(csv_rows * 50)[:60], "utf16.csv": csv_rows.decode().encode("utf-16"),
        "one_col.csv": b"1\n2\n3\n", "inf.csv": b"inf,1,2,3,0\n" * 4, "nul.csv": b"1,2,\x003,4,0\n" * 4,
        "huge_field.csv": b"1" * 2_000_000 + b",0\n",
        "x-idx3-ubyte": idx_head + b"\x00" * 10, "bad-magic-idx3-ubyte": b"\x01\x02\x03\x04" + b"\x00" * 40,
        "huge-idx3-ubyte": bytes([0, 0, 8, 3]) + struct.pack(">III", 65535, 65535, 65535) + b"\x00" * 64,
        "dims255-idx3-ubyte": bytes([0, 0, 8, 255]) + b"\x00" * 64, "short-idx3-ubyte": bytes([0, 0, 8]),
        "zero-idx3-ubyte": bytes([0, 0, 8, 0]), "type-idx3-ubyte": bytes([0, 0, 0x42, 3]) + b"\x00" * 64,
        "gz-idx3-ubyte.gz": b"not gzip at all", "nolabels-idx3-ubyte": idx_head + b"\x00" * 32,
        "garbage.npz": bytes(range(256)) * 4, "empty.npz": b"", "zip_not_npy.npz": _zip({"data.npy": b"hello"}),
        "wrong_names.npz": _npz(x=np.zeros((4, 3)), y=np.zeros(4)), "pickled.npz": _npz_pickle(),
        "mismatch.npz": _npz(data=np.zeros((4, 3)), label=np.zeros(5)), "scalar.npz": _npz(data=np.float32(1), label=np.zeros(1)),
        "strings.npz": _npz(data=np.array(["a", "b"]), label=np.zeros(2)), "complex.npz": _npz(data=np.zeros((4, 2), complex), label=np.zeros(4)),
        "no_ext": csv_rows, "list.txt": b"\xff\xfe not utf8 \x00\n",
    }
    for name, data in sources.items():
        files = {name: data, "net.yaml": net_for(name).encode()}
        if name.startswith("x-idx3") or name.startswith("nolabels") is False and "idx3" in name:
            files[name.replace("idx3", "idx1").replace("x-", "x-")] = bytes([0, 0, 8, 1]) + struct.pack(">I", 8) + b"\x00" * 8
        yield f"data_{name}", files, ["validate", "{dir}/net.yaml"]
        if name.endswith((".csv", ".gz", "-ubyte", ".npz")):
            yield f"convert_{name}", files, ["data", "convert", "{dir}/" + name, "{dir}/out.npz"]


def hdf5_and_lists():
    files = {"list_garbage.txt": bytes(range(256)), "list_missing.txt": b"nope.h5\n", "list_empty.txt": b"",
             "list_dir.txt": b".\n", "bad.h5": b"not hdf5" * 100, "list_bad.txt": b"bad.h5\n"}
    for name in ("list_garbage.txt", "list_missing.txt", "list_empty.txt", "list_dir.txt", "list_bad.txt"):
        net = GOOD_NET.replace("type: Data", "type: HDF5Data").replace("data_param", "hdf5_data_param").replace(
            "SOURCE", name).replace("BACKEND", "")
        yield f"hdf5_{name}", dict(files, **{"net.yaml": net.encode()}), ["validate", "{dir}/net.yaml"]
    images = {"imgs.txt": b"missing.png 0\nbroken.png 1\n", "broken.png": b"\x89PNG\r\n\x1a\nbroken",
              "noutf.txt": b"\xff\xfe\xfd 0\n", "nolabel.txt": b"broken.png\n", "badlabel.txt": b"broken.png x\n",
              "bomb.txt": b"bomb.png 0\n", "bomb.png": _png_bomb()}
    for name in ("imgs.txt", "noutf.txt", "nolabel.txt", "badlabel.txt", "bomb.txt"):
        net = GOOD_NET.replace("type: Data", "type: ImageData").replace("data_param: {source: SOURCE, batch_size: 4BACKEND}",
                                                                         f"image_data_param: {{source: {name}, batch_size: 1}}")
        yield f"images_{name}", dict(images, **{"net.yaml": net.encode()}), ["validate", "{dir}/net.yaml"]
        yield f"convert_images_{name}", images, ["data", "convert", "{dir}/" + name, "{dir}/out.npz"]


def lmdbs():
    import lmdb
    from layers.sources import datum_bytes
    cases = {
        "garbage": [b"\xff" * 40, b"\x00" * 3], "lying_shape": [_datum(c=3, h=100, w=100, data=b"\x00" * 10)],
        "wire": [b"\x0a\x05hello"], "broken_png": [_datum(encoded=True, data=b"\x89PNG broken")],
        "empty": [], "mixed": [datum_bytes(np.zeros((1, 2, 2), np.uint8), 0), datum_bytes(np.zeros((1, 3, 3), np.uint8), 1)],
        "huge_label": [_datum(c=1, h=1, w=1, data=b"\x00", label=1 << 40)],
    }
    for name, records in cases.items():
        def make(folder, records=records):
            env = lmdb.open(os.path.join(folder, "db"), map_size=1 << 22)
            with env.begin(write=True) as txn:
                for i, r in enumerate(records):
                    txn.put(f"{i:08d}".encode(), r)
            env.close()
        net = net_for("db", ", backend: LMDB")
        yield f"lmdb_{name}", {"net.yaml": net.encode(), "__make__": make}, ["validate", "{dir}/net.yaml"]


def weights_and_states():
    net = open(os.path.join(DIGITS, "net.yaml")).read().replace("digits_", os.path.join(DIGITS, "digits_"))
    solver = b"net: net.yaml\nbase_lr: 0.01\nmax_iter: 4\ntest_interval: 0\nsnapshot_prefix: snap/run\n"
    model = caffemodel_bytes("n", [("conv1", "Convolution", [np.zeros((2, 2), np.float32)])])
    weights = {
        "garbage.npz": bytes(range(256)), "nan.weights.npz": _npz(**{"conv1/0": np.full((20, 1, 3, 3), np.nan, np.float32)}),
        "shape.weights.npz": _npz(**{"conv1/0": np.zeros((3, 3), np.float32)}), "none.weights.npz": _npz(other=np.zeros(3)),
        "state.weights.npz": _npz(meta=np.array("{}")), "ff.caffemodel": b"\xff" * 100000,
        "trunc.caffemodel": model[:len(model) // 2], "wrongshape.caffemodel": model,
        "deep.caffemodel": b"\xa2\x06\x80\x01" * 1000, "lying_len.caffemodel": b"\xa2\x06\xff\xff\xff\xff\x0f",
        "text.caffemodel": b"layer { name: 'a' }", "empty.caffemodel": b"", "npz_as_cm.caffemodel": _npz(a=np.zeros(2)),
        "blob_nan.caffemodel": caffemodel_bytes("n", [("conv1", "Convolution", [np.full((20, 1, 3, 3), np.inf, np.float32)])]),
    }
    for name, data in weights.items():
        yield f"weights_{name}", {"net.yaml": net.encode(), name: data}, ["test", "{dir}/net.yaml", "--weights",
                                                                          "{dir}/" + name, "--iterations", "1"]
    states = {
        "garbage.solverstate.npz": bytes(range(256)), "nometa.solverstate.npz": _npz(iter=np.array(3)),
        "badmeta.solverstate.npz": _npz(meta=np.array("{not json")), "listmeta.solverstate.npz": _npz(meta=np.array("[1, 2]")),
        "strmeta.solverstate.npz": _npz(meta=np.array('"x"')), "noiter.solverstate.npz": _npz(meta=np.array('{"type": "SGD"}')),
        "negiter.solverstate.npz": _npz(meta=np.array('{"type": "SGD", "iter": -5, "weights": "w.npz"}')),
        "noweights.solverstate.npz": _npz(meta=np.array('{"type": "SGD", "iter": 2, "weights": "missing.npz"}')),
        "dirweights.solverstate.npz": _npz(meta=np.array('{"type": "SGD", "iter": 2, "weights": "."}')),
        "strings.solverstate.npz": _npz(meta=np.array('{"type": "SGD", "iter": "two", "weights": "w.npz"}')),
        "ff.solverstate": b"\xff" * 50000, "text.solverstate": b"iter: 5", "empty.solverstate": b"",
        "nomodel.solverstate": _state_bytes(),
    }
    for name, data in states.items():
        files = {"net.yaml": net.encode(), "solver.yaml": solver, name: data,
                 "w.npz": _npz(**{"conv1/0": np.zeros((20, 1, 3, 3), np.float32)})}
        yield f"state_{name}", files, ["train", "{dir}/solver.yaml", "--snapshot", "{dir}/" + name]
    yield "metrics_not_object", {"net.yaml": net.encode(), "solver.yaml": solver}, "RESUME_WITH_BAD_METRICS"


def command_lines():
    solver = os.path.join(DIGITS, "solver.yaml")
    bad = [["train", solver, "--set", "base_lr"], ["train", solver, "--set", "=1"], ["train", solver, "--set", "base_lr=[1"],
           ["train", solver, "--set", "base_lr=abc"], ["train", solver, "--set", "max_iter=1e400"],
           ["train", solver, "--lr-scale", "-1"], ["train", solver, "--lr-scale", "nan"], ["test", solver, "--weights", "x",
           "--iterations", "0"], ["train", "{dir}/nope.yaml"], ["validate", "{dir}"], ["test", "{dir}", "--weights", "x"],
           ["data", "convert", "{dir}/nope.csv", "{dir}/o.npz"], ["lr-find", "{dir}/nope.yaml"],
           ["train", solver, "--replicas", "0"], ["time", "{dir}/nope.yaml"], ["plot", "{dir}/nope.jsonl"],
           ["export", os.path.join(DIGITS, "deploy.yaml"), "-o", "{dir}/no/such/lenet.onnx"],  # (internal errors)
           ["import", os.path.join(ROOT, "tests", "fixtures", "onnx", "small_resnet.onnx"), "-o", "{dir}/no/x.yaml"]]
    for i, args in enumerate(bad):
        yield f"cli_{i}", {}, args


def _zip(entries):
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in entries.items():
            z.writestr(k, v)
    return buf.getvalue()


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_pickle():
    buf = io.BytesIO()
    np.savez(buf, data=np.array([{"a": 1}], dtype=object), label=np.zeros(1))
    return buf.getvalue()


def _png_bomb():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG")
    return buf.getvalue()


def _datum(c=1, h=1, w=1, data=b"", label=0, encoded=False):
    from netspec.caffemodel import _field, _int_field
    return (_int_field(1, c) + _int_field(2, h) + _int_field(3, w) + _field(4, data) + _int_field(5, label)
            + (_int_field(7, 1) if encoded else b""))


def _state_bytes():
    from netspec.caffemodel import solverstate_bytes
    return solverstate_bytes(2, "missing.caffemodel", [np.zeros(3, np.float32)], 0)


# Inputs that are odd but valid: an empty or comment-only prototxt (a net of no layers, warned), a NUL or a \u
# inside a prototxt string (Caffe's text format takes both).
VALID = {"prototxt_empty", "prototxt_only_comment", "prototxt_nul", "prototxt_unicode_escape"}

CORPUS = [c for gen in (yaml_specs, prototxt_specs, solvers, data_sources, hdf5_and_lists, lmdbs, weights_and_states,
                        command_lines) for c in gen()]


def test_the_corpus_is_large():
    assert len(CORPUS) >= 200, len(CORPUS)


@pytest.mark.parametrize("name,files,args", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_input_ends_in_a_clear_error(name, files, args, tmp_path, capsys):
    for rel, data in files.items():
        if rel == "__make__":
            data(str(tmp_path))
            continue
        (tmp_path / rel).write_bytes(data)
    expect = 2
    if args == "RESUME_WITH_BAD_METRICS":
        assert run.main(["train", str(tmp_path / "solver.yaml")]) == 0
        (tmp_path / "snap" / "run_metrics.jsonl").write_text('[1, 2]\n"text"\n{"iter": "x"}\n')
        args = ["train", "{dir}/solver.yaml", "--snapshot", "{dir}/snap/run_iter_4.solverstate.npz", "--set", "max_iter=5"]
        capsys.readouterr()
        expect = 0
    argv = [a.replace("{dir}", str(tmp_path)) for a in args]
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the process's high-water mark so far
    t = time.perf_counter()
    try:
        code = run.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    took = time.perf_counter() - t
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    out = capsys.readouterr()
    text = out.out + out.err
    assert "bug in yaffe" not in text and "internal error" not in text and "Traceback" not in text, text[-2000:]
    if name in VALID or name.startswith("convert_") and code == 0:
        expect = 0  # odd but well-formed: converted as it is, or a net with nothing to train (a warning)
    assert code == expect, (code, text[-2000:])
    assert took < 10, f"{name} took {took:.1f} s"
    assert grew < 500, f"{name} raised the peak memory by {grew:.0f} MiB"
    if expect == 2:
        errors = [l for l in text.splitlines() if "error" in l]
        assert errors, text[-2000:]
        named = [os.path.basename(a) for a in argv[1:] if os.sep in a] + [os.path.basename(f) for f in files]
        if not name.startswith("cli_"):  # a bad flag value is named by its flag
            assert any(n and n in l for l in errors for n in named), f"no error names the file: {errors[:3]}"
