"""Snapshots: `<prefix>_iter_<N>.weights.npz` and `<prefix>_iter_<N>.solverstate.npz`.

Each file is written atomically (temp file, fsync, rename, fsync of the folder), so a
crash or kill during a snapshot leaves the previous files intact, never a torn one.
The state names its weights file relative to itself, so the pair can be moved together.
"""
from __future__ import annotations

import errno
import glob
import io
import json
import os
import shutil
import zipfile

import numpy as np

from netspec.errors import UserError

STATE_FORMAT = 1


class DiskFull(UserError):
    """A write failed for lack of space (or quota): the previous files are intact, the partial one removed."""


def atomic_write(path: str, payload: bytes):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(folder).free
            raise DiskFull(f"{path}: error: the disk is full ({os.strerror(e.errno)}): {len(payload):,} bytes "
                           f"needed, {free:,} free in {folder}; the previous snapshot is intact. Free some space "
                           "(or set snapshot_prefix on another disk) and resume from the last snapshot") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a folder; the rename is still atomic
        pass


def save_npz(path: str, arrays: dict):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_npz(path: str, what: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such {what} file; check the path") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: error: not a readable {what} (.npz) file ({e}); pass a file written by "
                        "yaffe's snapshot") from None


def _kind(path: str) -> str:
    """'caffemodel', 'hdf5' or 'npz': by the suffix, else by the file's first bytes (pycaffe saves to any name)."""
    if path.endswith(".caffemodel"):
        return "caffemodel"
    if path.endswith((".h5", ".hdf5")):
        return "hdf5"
    if path.endswith(".npz"):
        return "npz"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "npz"  # load_npz names the problem
    return "npz" if head.startswith(b"PK") else "hdf5" if head.startswith(b"\x89HDF") else "caffemodel"


def read_hdf5_weights(path: str) -> dict:
    """{"layer/i": array} of Caffe's HDF5 weights (data/<layer>/<i>: .caffemodel.h5, pycaffe's save_hdf5)."""
    from layers.sources import SourceError, h5py_module, reading
    try:
        h5py = h5py_module()
        with reading(), h5py.File(path, "r") as f:
            if "data" not in f:
                raise SourceError("has no 'data' group; Caffe's HDF5 weights hold data/<layer>/<i>")
            return {f"{layer}/{i}": np.asarray(f["data"][layer][i], np.float32)
                    for layer in f["data"] for i in f["data"][layer]}
    except SourceError as e:
        raise UserError(f"{path}: error: {e}") from None


def write_hdf5_weights(path: str, net):
    """Caffe's HDF5 weights: data/<layer>/<i> per learnable blob."""
    from layers.sources import SourceError, h5py_module
    try:
        h5py = h5py_module()
    except SourceError as e:
        raise UserError(str(e)) from None
    with h5py.File(path, "w") as f:
        for key, layer in zip(net.keys, net.layers):
            for i, b in enumerate(layer.blobs):
                f[f"data/{key}/{i}"] = b.data


def load_weights_file(path: str) -> dict:
    """{"layer/i": array} from a yaffe .weights.npz, a Caffe .caffemodel or Caffe's HDF5 weights (by the suffix,
    else by the file's first bytes)."""
    kind = _kind(path)
    if kind == "caffemodel":
        from netspec.caffemodel import read_caffemodel
        return read_caffemodel(path)
    if kind == "hdf5":
        return read_hdf5_weights(path)
    arrays = load_npz(path, "weights")
    if "meta" in arrays:
        raise UserError(f"{path}: error: this is a solver state, not weights; resume from it with --snapshot "
                        f"{path}, or pass its .weights.npz to --weights")
    return arrays


def paths(prefix: str, it: int, tag: str = "") -> tuple[str, str]:
    return f"{prefix}_iter_{it}{tag}.weights.npz", f"{prefix}_iter_{it}{tag}.solverstate.npz"


def write(prefix: str, it: int, weights: dict, history: dict, meta: dict, extra: dict, tag: str = "") -> tuple[str, str]:
    """Write the weights, then the state that names them; returns both paths. tag: e.g. "_lastgood"."""
    wpath, spath = paths(prefix, it, tag)
    save_npz(wpath, weights)
    meta = dict(meta, format=STATE_FORMAT, iter=it, weights=os.path.basename(wpath))
    arrays = {"meta": np.array(json.dumps(meta))}
    arrays.update({f"history/{k}": v for k, v in history.items()})
    arrays.update({f"extra/{k}": v for k, v in extra.items()})
    save_npz(spath, arrays)
    return wpath, spath


def read(state_path: str) -> tuple[dict, dict, dict, dict]:
    """(meta, weights, history, extra) of a solver state; clear errors for the wrong kind of file."""
    arrays = load_npz(state_path, "solver state")
    if "meta" not in arrays:
        hint = (" (this looks like a weights file: use --weights to start from it)"
                if any("/" in k for k in arrays) else "")
        raise UserError(f"{state_path}: error: not a yaffe solver state{hint}; pass the "
                        "<prefix>_iter_<N>.solverstate.npz file")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as e:
        meta = e
    if not isinstance(meta, dict) or not isinstance(meta.get("weights"), str) or \
            not isinstance(meta.get("iter"), int) or isinstance(meta.get("iter"), bool) or meta["iter"] < 0:
        raise UserError(f"{state_path}: error: its meta record is damaged or not yaffe's (it needs the iteration and "
                        "the weights file's name); resume from another snapshot, or start from the weights with "
                        "--weights")
    wpath = os.path.join(os.path.dirname(state_path), meta["weights"])
    if not os.path.isfile(wpath):
        raise UserError(f"{state_path}: error: it names the weights {meta['weights']!r}, which are not beside it "
                        f"({wpath}); put the .weights.npz next to the .solverstate.npz")
    weights = load_npz(wpath, "weights")
    history = {k[len("history/"):]: v for k, v in arrays.items() if k.startswith("history/")}
    extra = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    return meta, weights, history, extra


def read_hdf5_state(path: str) -> dict:
    """{"iter", "learned_net", "current_step", "history": [arrays]} of Caffe's HDF5 solver state
    (snapshot_format: HDF5: datasets iter, learned_net, current_step, history/0, history/1, ...)."""
    from layers.sources import SourceError, h5py_module
    try:
        h5py = h5py_module()
    except SourceError as e:
        raise UserError(f"{path}: error: {e}") from None
    try:
        with h5py.File(path, "r") as f:
            learned = f["learned_net"][()]
            hist = f.get("history", {})
            def number(key):  # (a (1,) array in Caffe's files, a scalar in yaffe's)
                return int(np.asarray(f[key][()]).reshape(-1)[0]) if key in f else 0
            return {"iter": number("iter"), "current_step": number("current_step"),
                    "learned_net": learned.decode() if isinstance(learned, bytes) else str(learned),
                    "history": [np.asarray(hist[k], np.float32) for k in sorted(hist, key=int)]}
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such file") from None
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: error: not a Caffe HDF5 solver state ({e})") from None


def write_hdf5(model_path: str, state_path: str, it: int, net, history, current_step: int):
    """Caffe's HDF5 snapshot: the model's data/<layer>/<i> datasets, the state's iter, learned_net,
    current_step and history/<i>; each written to a temp file and renamed into place."""
    from layers.sources import SourceError, h5py_module
    try:
        h5py = h5py_module()
    except SourceError as e:
        raise UserError(f"snapshot_format: HDF5: {e}") from None
    for path, fill in ((model_path, "model"), (state_path, "state")):
        tmp = f"{path}.tmp{os.getpid()}"
        with h5py.File(tmp, "w") as f:
            if fill == "model":
                for layer in net.layers:
                    for i, b in enumerate(layer.blobs):
                        f[f"data/{layer.name}/{i}"] = b.data
            else:
                f["iter"], f["current_step"] = it, current_step
                f["learned_net"] = model_path  # (as Caffe: the path it was written to)
                for i, h in enumerate(history):
                    f[f"history/{i}"] = h
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def remove_stale_temporaries(prefix: str) -> list[str]:
    """Remove `<prefix>_*.tmp<PID>` files left by runs that were killed while writing (their PID is gone)."""
    removed = []
    for path in glob.glob(glob.escape(prefix) + "_*.tmp*"):
        pid = path.rsplit(".tmp", 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed
