"""params.yaml: strict validation, overrides, every key present and commented, schema in sync."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from r2ec import config as C

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_load():
    p = C.load(ROOT / "params.yaml")
    assert p.datasets == (C.MOVIELENS,)
    assert p.eval.ks == (5, 10, 20)


def _leaf_keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        t = f.type if not isinstance(f.type, str) else None
        sub = {fld.name: fld for fld in dataclasses.fields(cls)}[f.name]
        default = sub.default_factory() if sub.default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            yield from _leaf_keys(type(default), prefix + f.name + ".")
        else:
            yield prefix + f.name


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + k + ".")
        else:
            yield prefix + k


def test_every_key_present_in_params_yaml():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(_flatten(raw)) == set(_leaf_keys(C.Params))


def test_every_key_line_has_a_comment():
    for i, line in enumerate((ROOT / "params.yaml").read_text().splitlines(), 1):
        if re.match(r"^\s*[A-Za-z_][\w]*:\s*\S", line):  # a key with a value on the line
            assert "#" in line, f"params.yaml:{i}: key without a comment: {line.strip()}"


@pytest.mark.parametrize("override, message", [
    ("sasrec.lrr=0.1", "unknown key sasrec.lrr"),
    ("sasrec.lr=abc", "sasrec.lr: expected a number"),
    ("eval.ks=5", "eval.ks: expected a list"),
    ("data.require_price=1", "expected true/false"),
    ("recpo.advantage=ppo", "not one of"),
    ("datasets=[Video_Gamez]", "unknown dataset 'Video_Gamez'"),
    ("baselines=[bert4rec]", "unknown method 'bert4rec'"),
    ("data.split=[0.5,0.1,0.1]", "sum to 1"),
    ("data.window_start=2022-13-01", "data.window_start"),
    ("data.window_start=2022/10/01", "data.window_start"),
    ("nonsense=1", "unknown key nonsense"),
    ("sasrec=3", "expected a mapping"),
    ("seeds=[]", "seeds: need one or more distinct non-negative seeds"),
    ("seeds=[2025,2025]", "seeds: need one or more distinct"),
    ("seeds=[-1]", "seeds: need one or more distinct non-negative"),
    ("seeds=[1.5]", "seeds[0]: expected an integer"),
    ("seeds=7", "seeds: expected a list"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(C.ConfigError, match=re.escape(message)):
        C.load(ROOT / "params.yaml", [override])


def test_seeds_default_and_override():
    assert C.load(ROOT / "params.yaml").seeds == (2025,)
    assert C.load(ROOT / "params.yaml", ["seeds=[2025,7,13]"]).seeds == (2025, 7, 13)


def test_overrides_apply_and_json_sections():
    p = C.load(ROOT / "params.yaml", ["sasrec.lr=0.01", "eval.ks=[1,2]", "data.window_start=2021-07-01"])
    assert p.sasrec.lr == 0.01 and p.eval.ks == (1, 2) and p.data.window_start == "2021-07-01"
    section = json.dumps(C.to_dict(p.gru4rec) | {"hidden": 32})
    p = C.load(ROOT / "params.yaml", [f"gru4rec={section}"])
    assert p.gru4rec.hidden == 32
    p = C.load(ROOT / "params.yaml", ["recpo.lr=3e-07", f"recpo={json.dumps(C.to_dict(p.recpo))}"])
    assert p.recpo.lr == C.load(ROOT / "params.yaml").recpo.lr != 3e-07  # the later, whole section wins


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(C.ConfigError, match="not found"):
        C.load(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load(bad)


def test_committed_schema_is_generated_from_dataclasses():
    committed = json.loads((ROOT / "workflow/schemas/params.schema.json").read_text())
    assert committed == C.json_schema(), "run: python -m r2ec schema"


def test_schema_validates_params_yaml():
    import jsonschema
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    jsonschema.validate(raw, C.json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw | {"typo": 1}, C.json_schema())
