"""Resumable RecPO checkpoints (``run_dir/last/``) and the kept best adapter (``run_dir/best/``).

``last/state.pt`` holds everything a resumed run needs to continue bit-identically: the trainable tensors
(LoRA A/B and, for ``r2ec_cls_head``, the head), the optimizer and scheduler state, the next step, the
Python / NumPy / torch (CPU and CUDA) RNG states, the best valid score so far with its step and metrics, the
patience counter, and the cached item table with the step it was encoded at. The directory is written to a
temporary sibling and renamed into place (:func:`r2ec.io.atomic_dir`), so a kill never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from r2ec.io import atomic_dir

STATE = "state.pt"


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """``{"<module>/<param name>": tensor}`` of every trainable parameter (cloned to CPU)."""
    return {f"{k}/{n}": p.detach().cpu().clone() for k, m in modules.items() if m is not None
            for n, p in m.named_parameters() if p.requires_grad}


def load_trainable_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Copy tensors saved by :func:`trainable_state` back (every trainable parameter must be present)."""
    for k, m in modules.items():
        if m is None:
            continue
        for n, p in m.named_parameters():
            if p.requires_grad:
                key = f"{k}/{n}"
                if key not in state:
                    raise KeyError(f"checkpoint lacks parameter {key}")
                with torch.no_grad():
                    p.copy_(state[key].to(p.device, p.dtype))


def rng_state() -> dict[str, Any]:
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see module docstring) to ``path/state.pt`` atomically, plus a small ``meta.json``."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        torch.save(state, tmp / STATE)
        meta = {k: state[k] for k in ("step", "best_score", "best_step", "bad_evals", "item_table_step")
                if k in state}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when ``path`` holds no checkpoint."""
    f = Path(path) / STATE
    if not f.exists():
        return None
    return torch.load(f, map_location="cpu", weights_only=False)
