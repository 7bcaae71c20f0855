"""Backbone groups: the LLM methods run once per backbone of ``backbones`` (the paper's Table 1 has a Gemma-2 and a
Qwen2.5 group). ``llm.backbone``'s runs are the tree ``results/runs``; every other backbone has its own tree
``results/backbones/<tag>/`` (runs, seeds and cache), trained with ``-S llm.backbone=<spec>``. Methods that read no
backbone (the classic baselines, TIGER, the reference rows) run once and belong to every group."""

from __future__ import annotations

from dataclasses import dataclass

from r2ec import methods


@dataclass(frozen=True)
class Backbone:
    tag: str  # path- and table-friendly name
    spec: str  # the llm.backbone value
    prefix: str  # '' for llm.backbone's tree (results/runs), else 'backbones/<tag>/'


def backbone_tag(spec: str) -> str:
    """A backbone's short name: the last path component of its spec without ``.gguf`` (``google/gemma-2-2b-it`` ->
    ``gemma-2-2b-it``), characters outside ``[A-Za-z0-9._-]`` as ``-``."""
    last = spec.rstrip("/").rsplit("/", 1)[-1].removeprefix("gguf:")
    last = last[:-5] if last.lower().endswith(".gguf") else last
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in last) or "backbone"


def backbone_groups(p) -> list[Backbone]:
    """The backbones of ``p`` in ``backbones`` order (``llm.backbone`` alone when the list is empty)."""
    specs = list(p.backbones) or [p.llm.backbone]
    return [Backbone(backbone_tag(s), s, "" if s == p.llm.backbone else f"backbones/{backbone_tag(s)}/")
            for s in specs]


def uses_backbone(method: str) -> bool:
    """Whether a method's runs read the LLM backbone (and so run once per backbone group)."""
    return "llm" in methods.get(method).sections


def backbone_free_run(run_dir, method: str):
    """The run directory of ``method`` (one that reads no backbone, e.g. D3's assistant SASRec) beside a run of a
    backbone method at ``run_dir``: the sibling, outside a backbone's tree (``results/backbones/<tag>/[seeds/<s>/]runs
    /<dataset>/<m>`` -> ``results/[seeds/<s>/]runs/<dataset>/<method>``)."""
    from pathlib import Path
    parts = Path(run_dir).parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == "backbones" and parts[i + 2] in ("runs", "seeds"):
            return Path(*parts[:i], *parts[i + 2:]).parent / method
    return Path(run_dir).parent / method


def check_backbones(p) -> None:
    """``backbones``: distinct, with distinct tags, and holding ``llm.backbone`` (whose runs are results/runs)."""
    from r2ec.config.fields import ConfigError
    if not p.backbones:
        return
    tags = [backbone_tag(s) for s in p.backbones]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"backbones: two entries share a short name ({tags}); each group needs its own "
                          f"results/backbones/<name>/ tree")
    if p.llm.backbone not in p.backbones:
        raise ConfigError(f"backbones: {list(p.backbones)} does not hold llm.backbone {p.llm.backbone!r}; its runs "
                          f"are results/runs, the others' results/backbones/<name>/runs")
