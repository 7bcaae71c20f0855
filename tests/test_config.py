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
    ("backbones=[tiny-random]", "backbones: ['tiny-random'] does not hold llm.backbone"),
    ("backbones=[a/tiny-random,tiny-random]", "backbones: two entries share a short name"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(C.ConfigError, match=re.escape(message)):
        C.load(ROOT / "params.yaml", [override])


def test_seeds_default_and_override():
    assert C.load(ROOT / "params.yaml").seeds == (2025,)
    assert C.load(ROOT / "params.yaml", ["seeds=[2025,7,13]"]).seeds == (2025, 7, 13)


def test_backbone_groups_and_tags():
    from r2ec.config.backbones import backbone_groups, backbone_tag
    p = C.load(ROOT / "params.yaml")
    assert [(b.tag, b.prefix) for b in backbone_groups(p)] == [("SmolLM2-135M-Instruct.Q4_1", "")]
    p = C.load(ROOT / "params.yaml", [f"backbones=[Qwen/Qwen2.5-3B-Instruct,{p.llm.backbone}]"])
    assert [(b.spec, b.prefix) for b in backbone_groups(p)] == [
        ("Qwen/Qwen2.5-3B-Instruct", "backbones/Qwen2.5-3B-Instruct/"), (p.llm.backbone, "")]
    assert backbone_tag("/data/models/my model/") == "my-model" and backbone_tag("tiny-random-gemma2") == \
        "tiny-random-gemma2"


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


# ------------------------------------------------------------------------------------------------------------
# ranges: declared on the fields, checked on load, carried into the schema

@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("data.min_items=0", "data.min_items: must be >= 1, got 0"),
    ("data.split=[1.2,-0.1,-0.1]", "data.split[0]: must lie in [0, 1], got 1.2"),
    ("data.max_bad_fraction=2", "data.max_bad_fraction: must lie in [0, 1], got 2"),
    ("eval.ks=[]", "eval.ks: need at least one value"),
    ("eval.ks=[0,10]", "eval.ks[0]: must be >= 1, got 0"),
    ("eval.batch_size=0", "eval.batch_size: must be >= 1, got 0"),
    ("sasrec.dropout=1", "sasrec.dropout: must lie in [0, 1), got 1"),
    ("sasrec.heads=3", "sasrec.heads: 3 does not divide hidden 64"),
    ("gru4rec.layers=0", "gru4rec.layers: must be >= 1, got 0"),
    ("caser.n_v=0", "caser.n_v: must be >= 1, got 0"),
    ("tiger.rqvae_lr=0", "tiger.rqvae_lr: must be > 0, got 0"),
    ("tiger.rqvae_hidden=[64,0]", "tiger.rqvae_hidden[1]: must be >= 1, got 0"),
    ("popularity.recent_days=-1", "popularity.recent_days: must be >= 0, got -1"),
    ("random.seed=-3", "random.seed: must be >= 0, got -3"),
    ("llm.max_prompt_tokens=0", "llm.max_prompt_tokens: must be >= 1, got 0"),
    ("lora.dropout=-0.1", "lora.dropout: must lie in [0, 1), got -0.1"),
    ("lora.last_layers=-1", "lora.last_layers: must be >= 0, got -1"),
    ("recpo.tau=0", "recpo.tau: must be > 0, got 0"),
    ("recpo.gen_batch_size=0", "recpo.gen_batch_size: must be >= 1, got 0"),
    ("recpo.temperature=0", "recpo.temperature: must be > 0, got 0"),
    ("recpo.beta=1.5", "recpo.beta: must lie in [0, 1], got 1.5"),
    ("recpo.clip_low=-0.2", "recpo.clip_low: must lie in [0, 1], got -0.2"),
    ("recpo.micro_batch_size=-1", "recpo.micro_batch_size: must be >= 0, got -1"),
    ("recpo.item_topk=8", "recpo.item_topk: must lie in [1, group_size], got 8"),
    ("recpo.lr=0", "recpo.lr: must be > 0, got 0"),
    ("contrastive.lr=0", "contrastive.lr: must be > 0, got 0"),
    ("contrastive.batch_size=0", "contrastive.batch_size: must be >= 1, got 0"),
    ("contrastive.steps=-1", "contrastive.steps: must be >= 0, got -1"),
    ("contrastive.warmup_steps=-5", "contrastive.warmup_steps: must be >= 0, got -5"),
    ("contrastive.eval_every=0", "contrastive.eval_every: must be >= 1, got 0"),
    ("contrastive.item_refresh_every=0", "contrastive.item_refresh_every: must be >= 1, got 0"),
    ("contrastive.uniform_negatives=-1", "contrastive.uniform_negatives: must be >= 0, got -1"),
    ("contrastive.max_minutes=-1", "contrastive.max_minutes: must be >= 0, got -1"),
    ("readout.distill_ridge=-1", "readout.distill_ridge: must be >= 0, got -1"),
    ("langptune.eta=0", "langptune.eta: must be > 0, got 0"),
    ("bigrec.popularity_gamma=[0,-1]", "bigrec.popularity_gamma[1]: must be >= 0, got -1"),
    ("d3.gamma=[1.5]", "d3.gamma[0]: must lie in [0, 1], got 1.5"),
    ("d3.assistant=bert4rec", "d3.assistant: 'bert4rec' is not one of"),
    ("report.alpha=1", "report.alpha: must lie in (0, 1), got 1"),
    ("report.sweep_group_size=[0]", "report.sweep_group_size[0]: must be >= 1, got 0"),
    ("latency.batch_sizes=[]", "latency.batch_sizes: need at least one value"),
    ("latency.warmup=-1", "latency.warmup: must be >= 0, got -1"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(C.ConfigError, match=re.escape(message)) as e:
        C.load(ROOT / "params.yaml", [override])
    assert "\n" not in str(e.value)


def _sections(cls=C.Params, seen=None):
    """Every section dataclass reachable from ``cls`` (``cls`` included)."""
    seen = [] if seen is None else seen
    seen.append(cls)
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            _sections(f.default_factory, seen)
    return seen


def _numeric(tp) -> bool:
    import typing
    if tp in (int, float):
        return True
    return typing.get_origin(tp) is tuple and all(a in (int, float, Ellipsis) for a in typing.get_args(tp))


@pytest.mark.parametrize("cls", _sections() + [C.SeqModelCfg], ids=lambda c: c.__name__)
def test_every_numeric_key_declares_a_range(cls):
    import typing
    hints = typing.get_type_hints(cls)
    missing = [f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])
               and not any(k in f.metadata for k in ("ge", "gt", "le", "lt"))]
    assert not missing, f"{cls.__name__}: declare a range (ge/gt/le/lt in _doc) for {missing}"


def test_schema_carries_the_declared_ranges():
    import jsonschema
    s = C.json_schema()["properties"]
    assert s["recpo"]["properties"]["tau"]["exclusiveMinimum"] == 0.0
    assert s["recpo"]["properties"]["gen_batch_size"]["minimum"] == 1
    assert s["report"]["properties"]["alpha"] | {"description": ""} == {
        "type": "number", "exclusiveMinimum": 0.0, "exclusiveMaximum": 1.0, "description": ""}
    assert s["eval"]["properties"]["ks"]["items"]["minimum"] == 1 and s["eval"]["properties"]["ks"]["minItems"] == 1
    assert s["d3"]["properties"]["assistant"]["enum"] == ["", *C.CLASSIC_METHODS]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, key, bad in (("recpo", "tau", 0), ("contrastive", "batch_size", 0), ("lora", "dropout", 1.0)):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(raw | {section: raw[section] | {key: bad}}, C.json_schema())


def test_direct_construction_checks_ranges_too():
    with pytest.raises(C.ConfigError, match=re.escape("recpo.tau: must be > 0, got 0")):
        C.RecpoCfg(tau=0.0)
    with pytest.raises(C.ConfigError, match=re.escape("contrastive.steps: must be >= 0, got -1")):
        C.ContrastiveCfg(steps=-1)


def test_test_and_benchmark_configs_validate():
    from recpo_fixtures import tiny_params
    from test_pipeline_smoke import _tiny_params
    C.from_dict(_tiny_params("file:///nowhere"), "tiny pipeline params")
    C.from_dict(C.to_dict(tiny_params()), "tiny RecPO params")


def test_classic_sections_hold_only_their_models_keys():
    keys = {m: {f.name for f in dataclasses.fields(type(getattr(C.Params(), m)))} for m in C.CLASSIC_METHODS}
    assert {"heads", "n_v", "n_h"}.isdisjoint(keys["gru4rec"]) and {"n_v", "n_h"}.isdisjoint(keys["sasrec"])
    assert {"layers", "heads"}.isdisjoint(keys["caser"])
    with pytest.raises(C.ConfigError, match="unknown key caser.layers"):
        C.load(ROOT / "params.yaml", ["caser.layers=2"])


def test_later_params_files_win_key_by_key(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("recpo:\n  tau: 0.1\neval:\n  ks: [1, 5]\n")
    base = C.load(ROOT / "params.yaml")
    p = C.load([ROOT / "params.yaml", profile], ["recpo.lr=3e-05"])
    assert p.recpo.tau == 0.1 and p.eval.ks == (1, 5) and p.recpo.lr == 3e-05
    assert p.recpo.batch_size == base.recpo.batch_size and p.sasrec == base.sasrec
    bad = tmp_path / "bad.yaml"
    bad.write_text("recpo:\n  tau: 0\n")
    with pytest.raises(C.ConfigError, match=re.escape(f"{bad}: recpo.tau: must be > 0, got 0")):
        C.load([ROOT / "params.yaml", bad])


@pytest.mark.parametrize("override, key", [("recpo.tau=0", "recpo.tau"),
                                           ("recpo.gen_batch_size=0", "recpo.gen_batch_size")])
def test_check_params_cli_names_the_key_in_one_line(override, key):
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "r2ec", "check-params", "-S", override], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key}: must be" in lines[0], r.stderr
