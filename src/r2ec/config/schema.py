"""JSON schema of params.yaml (for Snakemake's ``validate`` and editors), generated from the section dataclasses:
types, descriptions and the ranges declared on the fields (:func:`r2ec.config.fields._doc`), so that the
committed ``workflow/schemas/params.schema.json`` cannot drift from the code (a test compares them)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Literal

from r2ec.config.params import Params

_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _bounds(meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    out = {name: meta[k] for k, name in _BOUNDS.items() if k in meta}
    if "choices" in meta:
        out["enum"] = list(meta["choices"])
    return out


def _schema_of(tp: Any, doc: str = "", meta: typing.Mapping[str, Any] | None = None) -> dict:
    """Schema of one type; ``meta``: the field's declared range (applied to each value of a list)."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    out: dict[str, Any]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        out = {"type": "object", "additionalProperties": False,
               "properties": {f.name: _schema_of(hints[f.name], f.metadata.get("doc", ""), f.metadata)
                              for f in dataclasses.fields(tp)}}
    elif origin is Literal:
        out = {"enum": list(typing.get_args(tp))}
    elif origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            out = {"type": "array", "items": _schema_of(args[0], "", meta)}
            if meta.get("nonempty"):
                out["minItems"] = 1
        else:
            out = {"type": "array", "prefixItems": [_schema_of(a, "", meta) for a in args],
                   "minItems": len(args), "maxItems": len(args)}
    else:
        out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp], **_bounds(meta)}
    if doc:
        out["description"] = doc
    return out


def json_schema() -> dict:
    """JSON schema of params.yaml generated from the dataclasses."""
    s = _schema_of(Params)
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["title"] = "r2ec params.yaml"
    return s


def write_json_schema(path: str | Path) -> None:
    Path(path).write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
