"""Load ``params.yaml`` into frozen dataclasses, validated strictly.

``params.yaml`` is the single source of truth. Every section is a frozen dataclass; a key that is not a field, a
value of the wrong type or outside its declared range is a :class:`ConfigError` naming the key. Overrides use
DVC's ``-S section.key=value`` syntax and are parsed as YAML scalars/lists.

- :mod:`~r2ec.config.fields`: declaring a key (description, range) and checking it; the section base class;
- :mod:`~r2ec.config.names`: dataset and method names;
- :mod:`~r2ec.config.sections`: the shared sections (data, eval, llm, lora, report, latency);
- :mod:`~r2ec.config.methods`: one section per method (sasrec ... recpo, contrastive, readout);
- :mod:`~r2ec.config.params`: :class:`Params`, the whole file;
- :mod:`~r2ec.config.checks`: rules between sections;
- :mod:`~r2ec.config.load`: YAML -> dataclasses, overrides, layered params files;
- :mod:`~r2ec.config.deviations`: the registry of the default's CPU-scale deviations from the paper;
- :mod:`~r2ec.config.profiles`: overlays in configs/profiles/ (paper.yaml generated from the registry);
- :mod:`~r2ec.config.schema`: the JSON schema in ``workflow/schemas/params.schema.json`` (for editors and
  tools that read JSON schemas), generated from the dataclasses so the two cannot drift (a test checks the committed file).
"""

from r2ec.config.checks import check_params
from r2ec.config.fields import ConfigError, Section, param
from r2ec.config.load import apply_overrides, check_keys, from_dict, load, merge, parse_override, read_raw, to_dict
from r2ec.config.methods import (BigrecCfg, CaserCfg, ContrastiveCfg, D3Cfg, Gru4recCfg, LangptuneCfg, PopularityCfg,
                                 RandomCfg, ReadoutCfg, RecpoCfg, SasrecCfg, SeqModelCfg, TigerCfg)
from r2ec.config.names import (AMAZON_CATEGORIES, BASELINE_METHODS, CLASSIC_METHODS, CONTRASTIVE_METHOD,
                               LLM_BASELINES, METHODS, MOVIELENS, R2EC_VARIANTS, REFERENCE_METHODS, TIGER)
from r2ec.config.params import Params
from r2ec.config.schema import json_schema, write_json_schema
from r2ec.config.sections import DataCfg, EvalCfg, LatencyCfg, LaunchCfg, LlmCfg, LoraCfg, ReportCfg

__all__ = [
    "AMAZON_CATEGORIES", "BASELINE_METHODS", "CLASSIC_METHODS", "CONTRASTIVE_METHOD", "LLM_BASELINES", "METHODS",
    "MOVIELENS", "R2EC_VARIANTS", "REFERENCE_METHODS", "TIGER",
    "BigrecCfg", "CaserCfg", "ConfigError", "ContrastiveCfg", "D3Cfg", "DataCfg", "EvalCfg", "Gru4recCfg",
    "LangptuneCfg", "LatencyCfg", "LaunchCfg", "LlmCfg", "LoraCfg", "Params", "PopularityCfg", "RandomCfg", "ReadoutCfg",
    "RecpoCfg", "ReportCfg", "SasrecCfg", "Section", "SeqModelCfg", "TigerCfg",
    "apply_overrides", "check_keys", "check_params", "from_dict", "json_schema", "load", "merge", "param",
    "parse_override",
    "read_raw", "to_dict", "write_json_schema",
]
