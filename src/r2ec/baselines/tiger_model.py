"""TIGER's model side (:mod:`r2ec.baselines.tiger`): the semantic-ID vocabulary and trie, the T5, the exact
trie-constrained beam search and the scorer built on it."""

from __future__ import annotations

import contextlib
import zlib

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from r2ec.config import TigerCfg
from r2ec.eval import Scorer
from r2ec.io import pad_histories

PAD, EOS = 0, 1  # token 0 pads the encoder input and starts the decoder; 1 is reserved (T5 wants an EOS id)
FIRST_CODE_TOKEN = 2


# ----------------------------------------------------------------------------------------------------------
# vocabulary and trie

class Vocab:
    """Token layout: 0 pad/start, 1 reserved, then one block of ids per code level, then user buckets."""

    def __init__(self, codes: np.ndarray | torch.Tensor, level_sizes: tuple[int, ...] | list[int],
                 user_buckets: int = 0):
        self.codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)  # [N, L]; row i = item i + 1
        self.sizes = tuple(int(s) for s in level_sizes)
        if self.codes.dim() != 2 or self.codes.shape[1] != len(self.sizes):
            raise ValueError(f"codes of shape {tuple(self.codes.shape)} for {len(self.sizes)} levels")
        if self.codes.numel() and (int(self.codes.min()) < 0 or
                                   any(int(self.codes[:, t].max()) >= s for t, s in enumerate(self.sizes))):
            raise ValueError("a code lies outside its level's vocabulary")
        self.offsets = tuple(FIRST_CODE_TOKEN + sum(self.sizes[:t]) for t in range(len(self.sizes)))
        self.user_offset = FIRST_CODE_TOKEN + sum(self.sizes)
        self.user_buckets = int(user_buckets)
        self.size = self.user_offset + self.user_buckets
        offs = torch.tensor(self.offsets, dtype=torch.long)
        # [N + 1, L] token ids per item; row 0 (no item) is all pad
        self.item_tokens = torch.cat([torch.zeros(1, len(self.sizes), dtype=torch.long), self.codes + offs])

    @property
    def levels(self) -> int:
        return len(self.sizes)

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    def user_token(self, user_id: str) -> int:
        """Hashed user token (a stable hash: crc32, not Python's salted ``hash``)."""
        return self.user_offset + zlib.crc32(str(user_id).encode("utf-8")) % self.user_buckets


class Trie:
    """The valid code sequences as dense per-level tables.

    ``prefix[t]`` [N]: id of each item's length-t prefix (0 for the empty prefix); ``count[t]``
    [n_prefixes_t, V_t]: items under (prefix, next code); ``child[t]``: the id of the extended prefix, and at
    the last level the item id (1-based); -1 where no item continues.
    """

    def __init__(self, codes: torch.Tensor, sizes: tuple[int, ...]):
        n, levels = codes.shape
        self.levels = levels
        self.prefix: list[torch.Tensor] = []
        self.count: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        pid = torch.zeros(n, dtype=torch.long)
        n_pref = 1
        for t in range(levels):
            self.prefix.append(pid)
            count = torch.zeros(n_pref, sizes[t], dtype=torch.long)
            count.index_put_((pid, codes[:, t]), torch.ones(n, dtype=torch.long), accumulate=True)
            if t + 1 < levels:
                uniq, nxt = torch.unique(codes[:, :t + 1], dim=0, return_inverse=True)
                n_next = uniq.shape[0]
            else:
                nxt, n_next = torch.arange(1, n + 1), n
            child = torch.full((n_pref, sizes[t]), -1, dtype=torch.long)
            child[pid, codes[:, t]] = nxt
            self.count.append(count)
            self.child.append(child)
            pid, n_pref = nxt.view(-1), n_next
        if n and int(self.count[-1].max()) > 1:
            raise ValueError("semantic IDs are not unique: two items share a full code")


# ----------------------------------------------------------------------------------------------------------
# model inputs and the T5

class Inputs:
    """Sample rows -> T5 encoder input: ``[user token] + codes of the last ``max_history`` items``, right-padded."""

    def __init__(self, vocab: Vocab, max_history: int):
        self.vocab = vocab
        self.max_history = max_history

    @property
    def width(self) -> int:
        return (1 if self.vocab.user_buckets else 0) + self.max_history * self.vocab.levels

    def __call__(self, df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        hist = pad_histories(df["history_item_ids"].to_list(), self.max_history, left=False)
        ids = self.vocab.item_tokens[hist].view(hist.shape[0], -1)  # [B, H * L], pad items -> pad tokens
        if self.vocab.user_buckets:
            users = torch.tensor([self.vocab.user_token(u) for u in df["user_id"].to_list()], dtype=torch.long)
            ids = torch.cat([users.view(-1, 1), ids], dim=1)
        return ids, ids != PAD


def build_t5(vocab_size: int, cfg: TigerCfg):
    """A freshly initialised T5 encoder-decoder (weights from torch's global RNG)."""
    from transformers import T5Config, T5ForConditionalGeneration
    config = T5Config(vocab_size=vocab_size, d_model=cfg.hidden, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
                      num_layers=cfg.encoder_layers, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.heads,
                      dropout_rate=cfg.dropout, feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS,
                      decoder_start_token_id=PAD, use_cache=True)
    return T5ForConditionalGeneration(config)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab: Vocab,
                      items: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log-probability of each candidate item's code sequence: ``[B, M]`` for ``items [B, M]``
    (the brute-force reference of :func:`beam_search`)."""
    b, m = items.shape
    labels = vocab.item_tokens[items.reshape(-1)]
    rows = torch.arange(b).repeat_interleave(m)
    out = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows], labels=labels)
    logp = out.logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return logp.sum(-1).view(b, m)


def _autocast(enabled: bool):
    """bf16 autocast of the T5's matmuls on CPU (AMX / AVX512-BF16 make them ~2x faster), or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------
# constrained beam search

def _exclusions(exclude: list[list[int]] | None, b: int) -> torch.Tensor | None:
    if exclude is None:
        return None
    rows = [sorted(set(int(i) for i in h if i > 0)) for h in exclude]
    if len(rows) != b:
        raise ValueError(f"{len(rows)} exclusion lists for {b} inputs")
    width = max([1, *map(len, rows)])
    out = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


@torch.no_grad()
def beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab: Vocab, trie: Trie,
                beam: int, exclude: list[list[int]] | None = None, use_cache: bool = True,
                autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact trie-constrained beam search over the ``vocab.levels`` code steps, batched.

    Returns ``(items [B, beam], scores [B, beam])``: item ids in descending order of their sequence
    log-probability (log-softmax over the whole vocabulary, summed over the steps); slots with no valid item left
    hold item 0 and score -inf. Only continuations with an item below them are considered, so every returned
    item is a real item; items in ``exclude[b]`` are never returned for input ``b``. When ``beam`` is at least
    the number of valid items nothing is pruned and the result is the exact top of all items. With
    ``autocast`` the T5 runs its matmuls in bf16; the log-softmax and the accumulated scores stay float32.
    """
    from transformers.modeling_outputs import BaseModelOutput
    model.eval()
    b = input_ids.shape[0]
    with _autocast(autocast):
        hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    excl = _exclusions(exclude, b)
    if excl is not None:
        excl_valid = excl > 0
        excl_codes = vocab.codes[(excl - 1).clamp(min=0)]  # [B, H, L]
    prefix = torch.zeros(b, 1, dtype=torch.long)  # prefix id of each beam
    scores = torch.zeros(b, 1)
    dec = torch.full((b, 1), model.config.decoder_start_token_id, dtype=torch.long)
    rows = torch.arange(b)  # encoder row of each (flattened) beam
    cache = None
    for t in range(vocab.levels):
        k = prefix.shape[1]
        enc = BaseModelOutput(last_hidden_state=hidden[rows])
        with _autocast(autocast):
            if use_cache:
                out = model(encoder_outputs=enc, attention_mask=attention_mask[rows], decoder_input_ids=dec[:, -1:],
                            past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            else:
                out = model(encoder_outputs=enc, attention_mask=attention_mask[rows], decoder_input_ids=dec,
                            use_cache=False)
        size, off = vocab.sizes[t], vocab.offsets[t]
        logp = out.logits[:, -1].float().log_softmax(-1)[:, off:off + size].view(b, k, size)
        left = trie.count[t][prefix]  # [B, K, V_t] items under each continuation
        if excl is not None:
            hp = torch.where(excl_valid, trie.prefix[t][(excl - 1).clamp(min=0)], -1)  # [B, H]
            match = (prefix.unsqueeze(2) == hp.unsqueeze(1)).float()  # [B, K, H]
            onehot = F.one_hot(excl_codes[:, :, t], size).float() * excl_valid.unsqueeze(2)  # [B, H, V_t]
            left = left - torch.bmm(match, onehot).round().long()
        cand = (scores.unsqueeze(2) + logp.masked_fill(left <= 0, float("-inf"))).view(b, k * size)
        top, idx = cand.topk(min(beam, k * size), dim=1)
        parent, code = idx // size, idx % size
        alive = torch.isfinite(top)
        nxt = trie.child[t][prefix.gather(1, parent), code]
        prefix = torch.where(alive, nxt, 0).clamp(min=0)
        scores = top
        src = (torch.arange(b).unsqueeze(1) * k + parent).view(-1)  # flattened parent beam of each new beam
        dec = torch.cat([dec[src], (code + off).view(-1, 1)], dim=1)
        rows = torch.arange(b).repeat_interleave(top.shape[1])
        if use_cache and t + 1 < vocab.levels:
            cache.reorder_cache(src)
    items = torch.where(torch.isfinite(scores), prefix, 0)
    return items, scores


def make_scorer(model, vocab: Vocab, trie: Trie, inputs: Inputs, beam: int, batch_size: int,
                exclude_history: bool, autocast: bool = False) -> Scorer:
    """A :data:`r2ec.eval.Scorer`: beam items get their log-probs (descending), all other items -inf."""

    def score(batch: pl.DataFrame) -> torch.Tensor:
        model.eval()
        out = torch.full((batch.height, vocab.n_items + 1), float("-inf"))
        for start in range(0, batch.height, batch_size):
            part = batch.slice(start, batch_size)
            ids, mask = inputs(part)
            excl = part["history_item_ids"].to_list() if exclude_history else None
            items, sc = beam_search(model, ids, mask, vocab, trie, beam, excl, autocast=autocast)
            rows = torch.arange(start, start + part.height).unsqueeze(1).expand_as(items)
            keep = items > 0
            out[rows[keep], items[keep]] = sc[keep]
        return out

    return score
