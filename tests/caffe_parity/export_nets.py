"""Write the whole nets of tests/caffe_parity/nets.py for Caffe: OUT/<name>/{net,solver}.prototxt,
inputs.npz and init.npz. Run with yaffe installed, from the repository root:

    python tests/caffe_parity/export_nets.py OUT
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.caffe_parity.nets import cases, export  # noqa: E402


def main(out):
    for name in cases():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        e = export(name)
        for key in ("net", "solver"):
            with open(os.path.join(d, f"{key}.prototxt"), "w") as f:
                f.write(e[key])
        np.savez(os.path.join(d, "inputs.npz"), **e["inputs"])
        np.savez(os.path.join(d, "init.npz"), **e["init"])
        print(f"{name}: {len(e['init'])} blobs, inputs {sorted(e['inputs'])}")


if __name__ == "__main__":
    main(sys.argv[1])
