"""Spec loading, the generated schema, and `run.py validate`: errors with file, line and column."""
import json
import os
import subprocess
import sys

import pytest

from netspec.errors import SpecError
from netspec.loader import loads
from netspec.schema import check, net_schema, solver_schema
from netspec.spec import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def net_findings(text):
    return [str(f) for f in check(loads(text, "net.yaml"), net_schema(), "net.yaml")]


def test_misspelt_field_gets_line_column_and_suggestion():
    errs = net_findings("""layer:
  - name: conv1
    type: Convolution
    convolution_param:
      num_output: 4
      kernal_size: 3
""")
    assert len(errs) == 1
    assert errs[0].startswith("net.yaml:6:20: error: layer 'conv1' (Convolution): unknown field 'kernal_size'")
    assert "did you mean 'kernel_size'?" in errs[0]


def test_unknown_layer_type_lists_known_types():
    errs = net_findings("layer:\n  - {name: p, type: Poolng}\n")
    assert "unknown layer type 'Poolng'; did you mean 'Pooling'?" in errs[0] and "known types:" in errs[0]


def test_all_errors_are_reported_at_once_in_file_order():
    errs = net_findings("""layer:
  - {name: a, type: ReLU, relu_param: {negative_slope: -1}}
  - {name: b, type: Pooling, pooling_param: {pool: MAXX}}
  - {name: c, type: InnerProduct, inner_product_param: {}}
""")
    assert [e.split(":")[1] for e in errs] == ["2", "3", "4"]
    assert "must be >= 0; received -1" in errs[0]
    assert "must be one of MAX, AVE, STOCHASTIC; received 'MAXX'" in errs[1]
    assert "missing required field 'num_output'" in errs[2]


def test_scalar_is_accepted_for_a_repeated_field():
    assert net_findings("layer:\n  - {name: r, type: ReLU, bottom: x, top: [x]}\n") == []


def test_duplicate_key_is_an_error_not_a_silent_override():
    with pytest.raises(SpecError, match=r"net.yaml:3:3: error: duplicate key 'name'"):
        loads("layer:\n- name: a\n  name: b\n", "net.yaml")


def test_schema_forbids_unknown_fields_everywhere():
    def walk(s):
        if isinstance(s, dict):
            if s.get("type") == "object":
                assert s.get("additionalProperties") is False, s
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)
    walk(net_schema())
    walk(solver_schema())


def test_schema_carries_layer_declarations():
    layer = net_schema()["properties"]["layer"]["items"]
    conv = layer["properties"]["convolution_param"]
    assert conv["properties"]["num_output"]["minimum"] == 1
    # convolution_param is shared with Im2col, which ignores num_output: Convolution requires it by type
    by_type = {r["if"]["properties"]["type"]["const"]: r["then"] for r in layer["allOf"]}
    assert by_type["Convolution"]["properties"]["convolution_param"]["required"] == ["num_output"]
    assert "num_output" not in conv["required"] and "Im2col" not in by_type


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_validate_cli_exit_codes_and_no_traceback(tmp_path):
    bad = tmp_path / "net.yaml"
    bad.write_text("layer:\n  - {name: c, type: Convolution, convolution_param: {num_output: 2, kernal_size: 3}}\n")
    r = cli("validate", str(bad))
    assert r.returncode == 2
    assert f"{bad}:2:" in r.stdout and "Traceback" not in r.stdout + r.stderr
    r = cli("validate", str(bad), "--format", "json")
    found = json.loads(r.stdout)
    assert found[0]["line"] == 2 and found[0]["severity"] == "error"
    assert cli("validate", os.path.join(ROOT, "models/lenet_digits/solver.yaml")).returncode == 0


def test_solver_errors_name_the_missing_policy_field(tmp_path):
    (tmp_path / "net.yaml").write_text("layer: []\n")
    s = tmp_path / "solver.yaml"
    s.write_text("net: net.yaml\nbase_lr: 0.1\nlr_policy: step\nmax_iter: 10\nmomentun: 0.9\n")
    r = cli("validate", str(s))
    assert r.returncode == 2
    assert "unknown field 'momentun' in the top level; did you mean 'momentum'?" in r.stdout
    s.write_text("net: net.yaml\nbase_lr: 0.1\nlr_policy: step\nmax_iter: 10\n")
    r = cli("validate", str(s))
    assert f"{s}:3:12: error: lr_policy 'step' needs 'stepsize'" in r.stdout


def test_malformed_yaml_and_missing_file_are_one_line_errors(tmp_path):
    bad = tmp_path / "net.yaml"
    bad.write_text("layer:\n\t- {name: a}\n")
    r = cli("validate", str(bad))
    assert r.returncode == 2 and "never tabs" in r.stdout and "Traceback" not in r.stderr
    r = cli("train", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_schema_command_prints_json():
    r = cli("schema")
    assert r.returncode == 0 and json.loads(r.stdout)["title"] == "yaffe net"


def test_fixture_nets_validate_without_errors():
    found = validate([os.path.join(ROOT, "tests", "fixtures", "zoo.yaml")])
    assert not [f for f in found if f.severity == "error"], found


def test_yaml_boolean_trap_gets_a_quoting_hint():
    errs = net_findings("layer:\n  - {name: on, type: ReLU}\n")
    assert "YAML reads on/off/yes/no as true/false: quote the value" in errs[0]


def test_scientific_notation_without_a_dot_is_a_number():
    from netspec.loader import loads
    doc = loads("delta: 1e-8\nbase_lr: 5E-4\nname: 1e3x\n")
    assert doc["delta"] == 1e-8 and doc["base_lr"] == 5e-4 and doc["name"] == "1e3x"
