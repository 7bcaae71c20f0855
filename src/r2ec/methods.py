"""The method registry: name -> kind, params sections, train entry, scorer loader, Table 1 label and group.

Everything that dispatches on a method reads this table: the params checks (which list may name it), the CLI's
``train`` (its entry point and the sections its run is fingerprinted on), the Snakemake rules (which rule trains
it, the sections it is handed) and through them ``dvc.yaml``, Table 1 (row label and group), Table 4 (its
scorer). Entries name their functions as ``"module:function"`` strings and are imported only when called, so
this module sits at the bottom of the layers and anything may read it.

Adding a method (``docs/extending.md``): one module with a ``train`` function (and optionally a scorer loader),
one params section, one :func:`register` call. A method outside the package is a *plugin*: a module listed in
``params.yaml``'s ``plugins`` that calls :func:`register` with its own section dataclass when imported.

Entry signatures:
- ``train(method, ds, params, run_dir, cache_dir, progress) -> metrics`` (writes the run directory through the
  shared evaluator);
- ``scorer(method, run_dir, ds, params, cache_dir) -> Scorer`` (a trained run's batch scorer, for Table 4).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from r2ec.errors import UserError

# kind -> the params list that may name the method (and so the Snakemake rule that trains it)
KIND_LIST = {"reference": "baselines", "classic": "baselines", "generative": "baselines",
             "llm": "llm_baselines", "r2ec": "r2ec_variants"}
# kind -> the params sections its run reads besides its own
KIND_SECTIONS = {"reference": ("seed", "eval"), "classic": ("seed", "eval"), "generative": ("seed", "eval"),
                 "llm": ("seed", "eval", "llm", "lora"),
                 "r2ec": ("seed", "eval", "llm", "lora", "recpo", "contrastive", "readout")}
GROUPS = ("Reference", "Traditional", "LLM-based")  # Table 1's row groups, in the paper's order


class MethodError(UserError):
    """An unknown method, a bad registry entry or a plugin that cannot be imported."""


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # a key of KIND_LIST
    train: str  # "module:function", see the module docstring
    label: str  # Table 1's row label (LaTeX)
    group: str  # one of GROUPS
    scorer: str = ""  # "module:function" for Table 4; '' = not timed
    section: type | None = None  # a plugin's own params section (a dataclass); built-ins are fields of Params
    own_section: bool = True  # whether params.yaml has a section named after the method

    @property
    def sections(self) -> tuple[str, ...]:
        """The params sections a run of this method reads: its fingerprint and what its rule is handed."""
        base = KIND_SECTIONS[self.kind]
        return base + ((self.name,) if self.own_section else ())


_REGISTRY: dict[str, Method] = {}


def register(m: Method) -> Method:
    """Add ``m`` (a method of the same name is replaced only by an identical entry: re-importing a plugin)."""
    if m.kind not in KIND_LIST:
        raise MethodError(f"method {m.name!r}: kind {m.kind!r} is not one of {list(KIND_LIST)}")
    if m.group not in GROUPS:
        raise MethodError(f"method {m.name!r}: group {m.group!r} is not one of {list(GROUPS)}")
    for entry in (m.train, m.scorer):
        if entry and ":" not in entry:
            raise MethodError(f"method {m.name!r}: {entry!r} is not a 'module:function' entry")
    old = _REGISTRY.get(m.name)
    if old is not None and old != m:
        raise MethodError(f"method {m.name!r} is registered twice with different entries")
    _REGISTRY[m.name] = m
    return m


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}") from None


def names(*kinds: str) -> tuple[str, ...]:
    """Registered method names of the given kinds (all kinds if none), in registration order."""
    return tuple(n for n, m in _REGISTRY.items() if not kinds or m.kind in kinds)


def plugin_sections() -> dict[str, Method]:
    """Plugin methods with a params section of their own, by section name."""
    return {m.name: m for m in _REGISTRY.values() if m.section is not None}


def load_plugins(modules: Iterable[str]) -> None:
    """Import each plugin module (it registers its methods when imported)."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise MethodError(f"plugins: cannot import {mod!r} ({e}); is it on PYTHONPATH?") from e


def resolve(entry: str) -> Callable:
    """The function an entry names."""
    mod, _, fn = entry.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise MethodError(f"method entry {entry!r} cannot be loaded: {e}") from e


def _builtin(name: str, kind: str, module: str, label: str, group: str, *, scorer: str | None = None,
             train: str = "train_method") -> None:
    register(Method(name, kind, f"{module}:{train}", label, group,
                    scorer=f"{module}:run_scorer" if scorer is None else scorer,
                    own_section=kind != "r2ec"))


# the built-in methods, in Table 1's order (a method of report.table1_methods joins its group in this order)
_builtin("popularity", "reference", "r2ec.baselines.reference", "Popularity", "Reference", scorer="")
_builtin("random", "reference", "r2ec.baselines.reference", "Random", "Reference", scorer="")
for _name, _label in (("gru4rec", "GRU4Rec"), ("caser", "Caser"), ("sasrec", "SASRec")):
    _builtin(_name, "classic", "r2ec.baselines.seqtrain", _label, "Traditional")
_builtin("tiger", "generative", "r2ec.baselines.tiger", "TIGER", "LLM-based")
_builtin("bigrec", "llm", "r2ec.baselines.bigrec", "BigRec", "LLM-based")
_builtin("d3", "llm", "r2ec.baselines.d3", "D$^3$", "LLM-based")
_builtin("langptune", "llm", "r2ec.baselines.langptune", "LangPTune", "LLM-based")
for _name, _label in (("r2ec_zeroshot", r"R$^2$ec (zero-shot)"), ("r2ec_no_reasoning", r"R$^2$ec w/o reasoning"),
                      ("r2ec", r"R$^2$ec"), ("r2ec_no_rd", r"R$^2$ec w/o $R_d$"), ("r2ec_no_rc", r"R$^2$ec w/o $R_c$"),
                      ("r2ec_cls_head", r"R$^2$ec cls.\ head")):
    _builtin(_name, "r2ec", "r2ec.recpo.trainer", _label, "LLM-based", train="train_r2ec")
