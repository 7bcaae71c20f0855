"""Reading params: strict conversion of parsed YAML into the section dataclasses, ``-S`` overrides, params files
(several are layered, later files win key by key).

A key that is not a field, a value of the wrong type or outside its declared range is a :class:`ConfigError`
naming the key. Overrides use DVC's ``-S section.key=value`` syntax and are parsed as YAML scalars/lists (JSON
first: the Snakemake rules pass whole sections as JSON).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from r2ec import methods
from r2ec.config.checks import check_params
from r2ec.config.fields import ConfigError
from r2ec.config.params import Params

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported")  # pragma: no cover - guards the schema
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-5 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (_dt.date, _dt.datetime)):  # YAML reads an unquoted 2022-10-01 as a date
            return value.isoformat()[:10]
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, raw: dict, where: str) -> Any:
    """One section from its mapping: unknown keys and wrong types here, ranges in the section's __post_init__."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (valid keys here: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value as a YAML scalar or list) into (["a", "b"], value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: malformed key")
    if raw == "":
        return key.split("."), ""
    try:
        value = json.loads(raw)  # JSON first: the Snakemake rules pass whole sections as JSON
    except ValueError:
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError) as e:  # ValueError: a date-shaped value that is no date
            raise ConfigError(f"override {text!r}: {e}") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``raw`` with each ``a.b=value`` override set (unknown keys are caught by validation)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def from_dict(raw: dict | None, source: str = "<params>") -> Params:
    """Validate a parsed params mapping; errors are prefixed with ``source``.

    The ``plugins`` modules are imported first; the sections of the methods they register are read like the
    built-in ones and reached as ``getattr(params, name)``."""
    try:
        raw = dict(raw or {})
        plugins = raw.get("plugins") or []
        if not isinstance(plugins, list) or not all(isinstance(m, str) for m in plugins):
            raise ConfigError(f"plugins: expected a list of module names, got {plugins!r}")
        try:
            methods.load_plugins(plugins)
        except methods.MethodError as e:
            raise ConfigError(str(e)) from None
        extra = {name: _build(m.section, raw.pop(name, {}) or {}, name)
                 for name, m in methods.plugin_sections().items() if name in plugins_of(plugins)}
        p = _build(Params, raw, "")
        object.__setattr__(p, "_plugin_sections", extra)
        check_params(p)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return p


def read_raw(path: str | Path) -> dict:
    """The parsed mapping of one params file (not yet validated)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def merge(base: dict, top: dict) -> dict:
    """``base`` with ``top`` laid over it: sections merge key by key, any other value of ``top`` replaces."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def check_keys(raw: dict, cls: type = Params, where: str = "") -> None:
    """Every key of a (partial) params mapping names a field: a profile's unknown key is caught in its own file."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in raw.items():
        if k not in names:
            raise ConfigError(f"unknown key {where}{k} (valid keys here: {', '.join(sorted(names))})")
        if _is_dataclass_type(hints[k]) and isinstance(v, dict):
            check_keys(v, hints[k], f"{where}{k}.")


def load(path: str | Path | Sequence[str | Path] = "params.yaml",
         overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Load, override and validate a params file; given several files, each later one is laid over the earlier
    ones (a profile holding only the keys it changes), then the overrides. An unknown key of a layered file is an
    error naming that file."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise ConfigError("no params file given")
    raw: dict = {}
    layers = []
    for p in paths:
        layer = read_raw(p)
        if len(paths) > 1:
            try:
                check_keys(layer)
            except ConfigError as e:
                raise ConfigError(f"{p}: {e}") from None
        layers.append(layer)
        raw = merge(raw, layer)
    source = " + ".join(str(Path(p)) for p in paths)
    try:
        return from_dict(apply_overrides(raw, overrides), source)
    except ConfigError as e:
        msg = str(e)[len(source) + 2:]
        key = re.match(r"([\w.]+)", msg)
        owner = [p for p, layer in zip(paths, layers) if key and _has_key(layer, key[1].split("."))]
        if len(paths) > 1 and owner and not any(o.split("=", 1)[0] == key[1] for o in overrides):
            raise ConfigError(f"{owner[-1]}: {msg}") from None  # the file that set the bad value
        raise


def _has_key(raw: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


def plugins_of(modules: list[str]) -> set[str]:
    """Names of the registered plugin methods that the listed modules define."""
    return {name for name, m in methods.plugin_sections().items() if m.section.__module__ in modules}


def to_dict(p: Any) -> Any:
    """Plain JSON-able dict of a params object (tuples become lists; plugin sections included)."""
    if dataclasses.is_dataclass(p):
        out = {f.name: to_dict(getattr(p, f.name)) for f in dataclasses.fields(p)}
        out.update({k: to_dict(v) for k, v in p.__dict__.get("_plugin_sections", {}).items()})
        return out
    if isinstance(p, tuple):
        return [to_dict(v) for v in p]
    return p
