"""Declaring a params key: its one-line description and its allowed range, checked when a section is built.

Every section is a frozen dataclass deriving from :class:`Section`; each field is declared with :func:`_doc`, which
keeps the description and the range (``ge``, ``gt``, ``le``, ``lt``, ``choices``, ``nonempty``) in the field's
metadata. :meth:`Section.__post_init__` checks those ranges (a one-line :class:`ConfigError` naming the key, e.g.
``recpo.tau: must be > 0, got 0``) and then the section's own rules between its keys (:meth:`Section.check`);
:mod:`r2ec.config.schema` turns the same declarations into the JSON schema's bounds.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field
from typing import Any, ClassVar, Literal

from r2ec.errors import UserError


class ConfigError(UserError):
    """A params file or override is invalid; the message names the file and the key."""


RANGE_KEYS = ("ge", "gt", "le", "lt")


def _doc(text: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, choices: tuple[str, ...] | None = None, nonempty: bool = False,
         **kw: Any) -> Any:
    """A dataclass field with its one-line description and allowed range in its metadata.

    ``ge``/``gt``/``le``/``lt``: bounds of a number, or of every value of a list of numbers; ``choices``: the
    allowed values of a string (or of every string of a list); ``nonempty``: a list needs at least one value.
    """
    meta: dict[str, Any] = {"doc": text}
    for name, bound in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if bound is not None:
            meta[name] = bound
    if choices is not None:
        meta["choices"] = tuple(choices)
    if nonempty:
        meta["nonempty"] = True
    return field(metadata=meta, **kw)


param = _doc  # the public name, for a plugin's own section (docs/extending.md)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def range_text(meta: typing.Mapping[str, Any]) -> str:
    """``must be > 0`` / ``must lie in [0, 1)``: the declared bounds of a field, in words ('' when none)."""
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"must lie in {lo[0]}{_fmt(lo[1])}, {_fmt(hi[1])}{hi[0]}"
    if lo:
        return f"must be {'>=' if lo[0] == '[' else '>'} {_fmt(lo[1])}"
    if hi:
        return f"must be {'<=' if hi[0] == ']' else '<'} {_fmt(hi[1])}"
    return ""


def in_range(v: Any, meta: typing.Mapping[str, Any]) -> bool:
    return not (("ge" in meta and v < meta["ge"]) or ("gt" in meta and v <= meta["gt"])
                or ("le" in meta and v > meta["le"]) or ("lt" in meta and v >= meta["lt"]))


def has_range(f: dataclasses.Field) -> bool:
    """Whether a field declares bounds or choices."""
    return any(k in f.metadata for k in RANGE_KEYS + ("choices",))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(key: str, v: Any, meta: typing.Mapping[str, Any], tp: Any) -> None:
    if typing.get_origin(tp) is Literal and v not in typing.get_args(tp):
        raise ConfigError(f"{key}: {v!r} is not one of {list(typing.get_args(tp))}")
    if "choices" in meta and v not in meta["choices"]:
        raise ConfigError(f"{key}: {v!r} is not one of {list(meta['choices'])}")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not in_range(v, meta):
        raise ConfigError(f"{key}: {range_text(meta)}, got {_fmt(v)}")


def check_fields(obj: Any, section: str) -> None:
    """Check every field of a section dataclass against its declared range (lists: every value)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{section}.{f.name}" if section else f.name
        v, tp = getattr(obj, f.name), hints[f.name]
        if isinstance(v, tuple):
            if f.metadata.get("nonempty") and not v:
                raise ConfigError(f"{key}: need at least one value, got []")
            args = typing.get_args(tp)
            for i, x in enumerate(v):
                el = args[0] if len(args) == 2 and args[1] is Ellipsis else args[i] if i < len(args) else Any
                _check_value(f"{key}[{i}]", x, f.metadata, el)
        elif not dataclasses.is_dataclass(v):
            _check_value(key, v, f.metadata, tp)


class Section:
    """Base of every params section (a frozen dataclass): on construction, each field's declared range, then
    :meth:`check`, the rules between the section's own keys. ``SECTION`` is the section's name in params.yaml
    ('' for the top level), used to name keys in errors."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        self.check()

    def check(self) -> None:
        """Rules between this section's own keys (ranges of single keys are declared on the fields)."""

    def key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name


def check_names(key: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    """A list of method names: each one known, none twice."""
    for m in values:
        if m not in allowed:
            raise ConfigError(f"{key}: unknown method {m!r}; known: {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}: duplicate entries in {list(values)}")
