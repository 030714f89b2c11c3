"""The benchmark runs Caffe on the same nets as yaffe: its prototxt, read back by yaffe's prototxt reader, is the
YAML net layer for layer (only the labels' filler differs: Caffe's DummyData redraws them every iteration)."""
import json

import pytest

from benchmarks.train_throughput import NETS, caffe_net
from netspec.loader import loads
from netspec.prototxt import loads as prototxt_loads


def _lists(x):
    """Repeated fields with one value read from prototxt as a scalar (`dim: 64`): as a list, like the YAML's."""
    if isinstance(x, dict):
        return {k: ([v] if k == "dim" and not isinstance(v, list) else _lists(v)) for k, v in x.items()}
    return [_lists(v) for v in x] if isinstance(x, list) else x


@pytest.mark.parametrize("name", list(NETS))
def test_caffe_prototxt_is_the_yaml_net(name):
    text, batch = NETS[name]
    caffe, notes = prototxt_loads(caffe_net(text))
    caffe, ours = _lists(json.loads(json.dumps(caffe))), json.loads(json.dumps(loads(text)))
    assert not notes and len(caffe["layer"]) == len(ours["layer"]) > 3
    fillers = caffe["layer"][0]["dummy_data_param"].pop("data_filler")
    assert fillers[1] == {"type": "uniform", "min": 0.0, "max": 9.99} and fillers[0] == {"type": "uniform"}
    ours["layer"][0]["dummy_data_param"].pop("data_filler")
    assert caffe == ours
    data, label = (shape["dim"] for shape in ours["layer"][0]["dummy_data_param"]["shape"][:2])
    assert label == [batch] and data[1 if name.startswith("LSTM") else 0] == batch  # the LSTM's: (T, N, inputs)
