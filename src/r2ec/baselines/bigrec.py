"""BigRec (Bao et al. 2023, "A bi-step grounding paradigm"): the LLM generates the next item's title, which is
grounded to every catalogue item by L2 distance of base-model embeddings. Also the SFT shared with D3.

Step 1, SFT (on the shared LLM harness, :mod:`r2ec.train.harness`): LoRA fine-tuning on
``bigrec.train_samples`` seeded train samples (1,024 as the official run; 0 = all) to generate the target's
response (``"title"`` + EOS, :mod:`r2ec.baselines.title_trie`) after an Alpaca prompt (the official
instruction/input/response format; the history titles come from :func:`r2ec.llm.prompts.history_dicts`, the
last ``bigrec.history_items`` of them), loss on the response tokens only (token mean over the batch).
Steps = ``bigrec.epochs`` x samples / ``bigrec.batch_size``, capped by ``bigrec.max_minutes``; seeded batches,
checkpoints, resumption, early stopping and the best adapter (``run_dir/best``) are the harness's. Model
selection: valid N@10 of step 2 (``eval.valid_max_samples`` samples).

Step 2, grounding: beam search (``bigrec.num_beams``, transformers' length normalisation
``bigrec.length_penalty``; the best beam is kept) on the merged inference copy, at most as many tokens as the
longest catalogue response; the generated title (quotes stripped) and every catalogue title are embedded by
the **base** model (LoRA off): the last layer's state at the last token, as the official code. Items are ranked
by L2 distance (score = -distance), optionally re-weighted by popularity as the paper's statistical-information
injection (official ``adjust_pda.py``, :func:`grounding_distance`; ``bigrec.popularity_gamma``, several values
picked on valid N@10 from one decode; popularity = train-target counts, nothing from valid/test). The
catalogue's title table is cached under ``--cache`` (``title_tables/``). Items sharing the target's title count
as the target (the official evaluation takes the best rank over the items of the target title): the scorer
drops them from the ranking of that sample.

Per evaluation, ``metrics.json`` carries ``invalid_rate`` (generations that name no catalogue title exactly:
their token sequence is no complete path of the title trie), ``mean_gen_len`` (generated tokens, EOS
excluded), ``decode_s`` and ``decode_samples_per_s``; ``test_generations.jsonl`` holds each test sample's best
generation (D3: its top beam).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl
import torch

from r2ec.config import BigrecCfg, Params
from r2ec.io import Dataset, slug, write_text
from r2ec.train.harness import SELECT_METRIC, LLMHarness, trained_scorer
from r2ec import dist

log = logging.getLogger(__name__)

SFT_FILE = "sft.json"  # in run_dir/best: see sft_identity
ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclass(frozen=True)
class SftSchedule:
    """The harness's view of ``bigrec``: only what the SFT's checkpoints depend on (decoding keys excluded)."""
    seed: int
    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str
    grad_clip: float
    batch_size: int
    steps: int
    eval_every: int
    patience: int
    checkpoint_every: int
    max_minutes: float
    train_max_samples: int
    history_items: int


def sft_schedule(cfg: BigrecCfg, ds: Dataset) -> SftSchedule:
    n = ds.split("train").height
    if 0 < cfg.train_samples < n:
        n = cfg.train_samples
    steps = max(1, math.ceil(cfg.epochs * n / cfg.batch_size))
    return SftSchedule(seed=cfg.seed, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                       schedule=cfg.schedule, grad_clip=cfg.grad_clip, batch_size=cfg.batch_size, steps=steps,
                       eval_every=cfg.eval_every, patience=cfg.patience, checkpoint_every=cfg.checkpoint_every,
                       max_minutes=cfg.max_minutes, train_max_samples=cfg.train_samples,
                       history_items=cfg.history_items)


def sft_identity(params: Params, ds: Dataset) -> dict[str, Any]:
    """What an SFT adapter must share with the run that decodes it (kept next to the best adapter): the backbone,
    the LoRA layout and the data; other ``llm`` keys (precision, threads, ...) do not change what the adapter is."""
    from r2ec.config import to_dict
    return {"backbone": params.llm.backbone, "lora": to_dict(params.lora), "dataset": ds.name,
            "n_items": ds.n_items}


def prompt_text(history_titles: list[str], domain: str) -> str:
    """BigRec's Alpaca prompt for a chronological list of history titles."""
    from r2ec.llm.prompts import category_nouns
    plural, singular = category_nouns(domain)
    return ALPACA.format(
        instruction=f"Given a list of {plural} the user interacted with before, please recommend a new {singular} "
                    f"that the user likes to the user.",
        input=f"The user has interacted with the following {plural} before: "
              + ", ".join(f'"{t}"' for t in history_titles))


def embed_ids(tokenizer, text: str, eos_id: int) -> list[int]:
    """Ids embedded for a title; a title that tokenises to nothing is embedded as EOS alone."""
    return list(tokenizer.encode(text, add_special_tokens=False)) or [int(eos_id)]


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], eos_id: int, pad_id: int, batch_size: int) -> torch.Tensor:
    """``[len(texts), H]`` float32: the last layer's state at the last token of each text (left padded)."""
    from r2ec.llm.encoder import last_hidden, pad_left
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(texts), batch_size):
        ids, mask, pos = pad_left([embed_ids(tokenizer, t, eos_id) for t in texts[s:s + batch_size]], pad_id, dev)
        out.append(last_hidden(model, ids, mask, pos)[:, -1].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def popularity_weights(counts, n_items: int) -> torch.Tensor:
    """``[N]`` min-max normalised train-target counts of items 1..N (the official ``adjust_pda.py`` scale:
    ``p = (c - min c) / (max c - min c)``, 0 when every count is equal)."""
    c = torch.as_tensor(counts, dtype=torch.float64)[1:n_items + 1]
    span = c.max() - c.min() if c.numel() else c.new_zeros(())
    return ((c - c.min()) / span if span > 0 else torch.zeros_like(c)).float()


def grounding_distance(dist: torch.Tensor, popularity: torch.Tensor, gamma: float) -> torch.Tensor:
    """BigRec's grounding distance with statistical information (the paper's popularity injection, official
    ``adjust_pda.py``): per row ``d' = (1 + p)^-gamma * (d - min d) / (max d - min d)`` with ``p`` from
    :func:`popularity_weights`; ``gamma = 0`` returns ``d`` (the same ranking as the plain L2 grounding). An exact
    title match (``d = min d``) stays first for every gamma."""
    if gamma == 0:
        return dist
    lo, hi = dist.min(1, keepdim=True).values, dist.max(1, keepdim=True).values
    return (1.0 + popularity.to(dist)).pow(-gamma) * (dist - lo) / (hi - lo).clamp_min(1e-12)


def drop_target_duplicates(scores: torch.Tensor, targets: list[int], trie) -> torch.Tensor:
    """Rank a target title's items as one: the other items with the target's title leave that sample's ranking
    (score -inf), so the target gets the best rank of its title's items (ties elsewhere still count against it)."""
    for b, t in enumerate(targets):
        title = trie.item_title.get(int(t))
        if title is not None and len(trie.title_items[title]) > 1:
            others = [i for i in trie.title_items[title] if i != int(t)]
            scores[b, others] = float("-inf")
    return scores


class TitleGenHarness(LLMHarness):
    """What BigRec and D3 share on the harness: BigRec's SFT schedule, prompts, the title trie, batched beam
    search on the inference copy and the generation statistics added to every evaluation's metrics."""

    def __init__(self, method: str, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None,
                 progress: bool, use_dvclive: bool, hook: Callable[[int, dict], None] | None):
        from r2ec.baselines.title_trie import build_title_trie
        from r2ec.llm.backbone import _eos_id
        self.cfg = params.bigrec
        super().__init__(method, ds, params, sft_schedule(params.bigrec, ds), run_dir, cache_dir, progress,
                         use_dvclive, hook)
        self.eos_id = _eos_id(self.tok)
        self.titles = {int(r["item_id"]): str(r["title"]) for r in ds.items.iter_rows(named=True)}
        ids = sorted(self.titles)
        self.trie = build_title_trie(self.tok, [self.titles[i] for i in ids], ids, self.eos_id)
        self.max_new_tokens = self.trie.max_len
        self.value = self.sweep_values()[0]
        self._reset_stats()

    # ------------------------------------------------------------------------------------------ prompts
    def prompt_of(self, row: dict) -> list[int]:
        hist = row["history_item_ids"][-self.cfg.history_items:]
        text = prompt_text([self.titles[int(i)] for i in hist], self.ds.name)
        return list(self.tok.encode(text, add_special_tokens=False))

    def pairs_of(self, rows: pl.DataFrame) -> list[tuple[list[int], list[int]]]:
        from r2ec.baselines.title_trie import response_ids
        return [(self.prompt_of(r), response_ids(self.tok, self.titles[int(r["target_item_id"])], self.eos_id))
                for r in rows.iter_rows(named=True)]

    # ------------------------------------------------------------------------------------------ decoding
    def _reset_stats(self) -> None:
        self.stats = {"samples": 0, "invalid": 0, "tokens": 0, "seconds": 0.0}
        self.generations: list[dict] = []

    def decode(self, rows: list[dict], batch_size: int, **kw):
        """Beam search for the prompts of ``rows`` in chunks on the inference copy; counts samples, tokens and
        seconds and records each sample's best generation."""
        from r2ec.baselines.title_trie import beam_search, response_text
        model, ctx = self.infer()
        self.policy.eval()
        prompts = [self.prompt_of(r) for r in rows]
        t0 = time.perf_counter()
        out = []
        with ctx:
            for s in range(0, len(prompts), batch_size):
                out += beam_search(model, prompts[s:s + batch_size], max_new_tokens=self.max_new_tokens,
                                   eos_id=self.eos_id, pad_id=self.pad_id, **kw)
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["samples"] += len(prompts)
        for row, hyps in zip(rows, out):
            best = hyps[0].tokens if hyps else []
            valid = bool(hyps) and self.trie.items_of(best) is not None
            self.stats["tokens"] += len([t for t in best if t != self.eos_id])
            self.stats["invalid"] += not valid
            self.generations.append({"sample_id": int(row["sample_id"]),
                                     "target": self.titles[int(row["target_item_id"])],
                                     "generated": response_text(self.tok, best, self.eos_id), "valid": valid})
        return out

    # ------------------------------------------------------------------------------------------ evaluation
    sweep_key = "gamma"  # the decoding/grounding setting picked on valid N@10 (metrics key)
    redecodes = True  # every swept value needs a fresh decode (else the first pass's generations are reused)

    def sweep_values(self) -> tuple[float, ...]:
        """Candidate values of ``sweep_key``; the first is used until a validation picks one."""
        return (0.0,)

    def evaluate(self, split: str) -> tuple[dict, pl.DataFrame]:
        """The harness's evaluation, once per candidate of ``sweep_key`` on valid (the best valid N@10 is kept
        and stays set for test) with the generation statistics of the decodes behind it."""
        values = self.sweep_values() if split == "valid" else (self.value,)
        tried = []
        for i, v in enumerate(values):
            self.value = v
            if i == 0 or self.redecodes:
                self._reset_stats()
            metrics, ranks = super().evaluate(split)
            metrics.update(self.decode_stats(merged=True))
            score = metrics.get(SELECT_METRIC, next(x for k, x in metrics.items() if k.startswith("N@")))
            tried.append((score, -len(tried), v, metrics, ranks))
        _, _, self.value, metrics, ranks = max(tried, key=lambda x: x[:2])
        metrics[self.sweep_key] = self.value
        if len(tried) > 1:
            metrics[f"valid_{SELECT_METRIC}_by_{self.sweep_key}"] = {str(t[2]): t[0] for t in tried}
        if split == "test":  # the best generation per test sample, for inspection
            gens = self.generations
            if self.world > 1:  # every rank decoded its shard: back into the evaluation's sample order
                pos = {int(s): i for i, s in enumerate(ranks["sample_id"].to_list())}
                gens = sorted((g for part in dist.gather_objects(self.acc, gens) for g in part),
                              key=lambda g: pos.get(g["sample_id"], len(pos)))
            if self.acc.is_main_process:
                write_text(self.run_dir / "test_generations.jsonl", "".join(json.dumps(g) + "\n" for g in gens))
        log.info("%s %s: invalid %.3f, mean length %.1f, %.2f samples/s, %s %s", self.method, split,
                 metrics["invalid_rate"], metrics["mean_gen_len"], metrics["decode_samples_per_s"], self.sweep_key,
                 self.value)
        return metrics, ranks

    def load_best(self) -> tuple[dict, pl.DataFrame] | None:
        out = super().load_best()
        if out is not None and self.sweep_key in out[0]:  # test uses the value picked with the best state
            self.value = out[0][self.sweep_key]
        return out

    def decode_stats(self, merged: bool = False) -> dict[str, float]:
        """Generation statistics of the decodes so far; ``merged``: summed over the ranks (a collective under
        N processes, seconds summed over them too)."""
        st = self.stats
        if merged and self.world > 1:
            parts = dist.gather_objects(self.acc, dict(st))
            st = {k: sum(p[k] for p in parts) for k in st}
        n = max(st["samples"], 1)
        return {"invalid_rate": st["invalid"] / n, "mean_gen_len": st["tokens"] / n,
                "decode_s": round(st["seconds"], 2), "decode_samples_per_s": st["samples"] / max(st["seconds"], 1e-9)}


class _BigRec(TitleGenHarness):
    """SFT step + BigRec grounding scorer."""

    grad_reduce = "sum"  # the SFT loss is normalised by the global batch's response tokens (train_step)

    sweep_key = "popularity_gamma"
    redecodes = False  # gamma re-weights the grounding only: one decode per evaluation

    def __init__(self, *args, **kw):
        from r2ec.data.popularity import popularity_counts
        super().__init__("bigrec", *args, **kw)
        self.table: torch.Tensor | None = None
        self.popularity = popularity_weights(popularity_counts(self.ds.split("train"), self.ds.n_items),
                                             self.ds.n_items)
        # sample_id -> embedded generation, kept only within one evaluation (its gamma passes share the decode);
        # outside (Table 4 timing) every call decodes
        self.generated: dict[int, torch.Tensor] | None = None

    def sweep_values(self) -> tuple[float, ...]:
        return self.p.bigrec.popularity_gamma

    def evaluate(self, split: str) -> tuple[dict, pl.DataFrame]:
        self.generated = {}
        try:
            return super().evaluate(split)
        finally:
            self.generated = None

    def train_step(self, rows: pl.DataFrame) -> dict[str, Any]:
        from r2ec.llm.rollout import completion_logprobs
        pairs = self.pairs_of(rows)
        n_tok = sum(len(c) for _, c in pairs)
        self.policy.train()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            lp = torch.cat(completion_logprobs(self.policy, pairs, 1.0, pad_id=self.pad_id))
            loss = -lp.sum() / n_tok  # token mean over the batch
            if self.world > 1:  # this rank's share of the global batch's token mean (gradients are summed)
                n_all = float(dist.all_sum(self.acc, torch.tensor(float(n_tok), dtype=torch.float64)))
                share = -lp.sum() / n_all
        self.backward(loss if self.world == 1 else share)
        gnorm = self.optimizer_step()
        self.policy.eval()
        return {"loss": float(loss.detach()), "grad_norm": gnorm, "response_tokens": n_tok}

    def save_best_extra(self, tmp: Path) -> None:
        (tmp / SFT_FILE).write_text(json.dumps(sft_identity(self.p, self.ds), indent=2))

    def _table_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256(json.dumps([self.p.llm.backbone, self.p.llm.dtype, self.titles]).encode()).hexdigest()
        return self.cache_dir / "title_tables" / f"{slug(self.ds.name)}-{h[:16]}.pt"

    def before_evaluate(self) -> None:
        """The catalogue's base-model title table ``[N + 1, H]`` (row 0 unused), built once and cached."""
        from r2ec.llm.encoder import load_item_table, save_item_table
        if self.table is not None:
            return
        path = self._table_path()
        if path is not None and path.exists():
            self.table, _ = load_item_table(path)
            return
        t0 = time.perf_counter()
        ids = sorted(self.titles)
        emb = self.embed([self.titles[i] for i in ids])
        table = torch.zeros(self.ds.n_items + 1, emb.shape[1])
        table[torch.tensor(ids)] = emb
        self.table = table
        log.info("embedded %d titles with the base model in %.1fs", len(ids), time.perf_counter() - t0)
        if path is not None:
            save_item_table(path, table, {"dataset": self.ds.name, "backbone": self.p.llm.backbone})

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Base-model (adapter off) embeddings of ``texts`` in ``llm.dtype``, never under bf16 autocast: the last
        layer's last-token states of SmolLM2 move a lot in bf16 (cosine to float32 down to 0.41 measured), which
        would break the exact match of a generated title with its item."""
        self.policy.eval()
        with self.policy.disable_adapter():
            return embed_texts(self.policy, self.tok, texts, self.eos_id, self.pad_id, self.cfg.embed_batch_size)

    def scorer(self, batch: pl.DataFrame) -> torch.Tensor:
        from r2ec.baselines.title_trie import response_text
        rows = list(batch.iter_rows(named=True))
        memo = self.generated if self.generated is not None else {}
        todo = [r for r in rows if int(r["sample_id"]) not in memo]
        if todo:
            hyps = self.decode(todo, self.cfg.decode_batch_size, num_beams=self.cfg.num_beams,
                               length_penalty=self.cfg.length_penalty)
            texts = [response_text(self.tok, h[0].tokens, self.eos_id) if h else "" for h in hyps]
            memo.update(zip((int(r["sample_id"]) for r in todo), self.embed(texts)))
        gen = torch.stack([memo[int(r["sample_id"])] for r in rows])
        d = grounding_distance(torch.cdist(gen, self.table[1:]), self.popularity, self.value)
        scores = torch.cat([torch.full((len(rows), 1), float("-inf")), -d], dim=1)
        return drop_target_duplicates(scores, [int(r["target_item_id"]) for r in rows], self.trie)


def train_bigrec(ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None = None, progress: bool = True,
                 *, dvclive: bool = True, hook: Callable[[int, dict], None] | None = None) -> dict[str, dict]:
    """SFT (resumable) + BigRec evaluation; writes the harness's run outputs (see the module docstring)."""
    return _BigRec(ds, params, Path(run_dir), cache_dir, progress, dvclive, hook).run()


# the method registry's uniform entries (r2ec.methods)
def train_method(method: str, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path, progress: bool) -> dict:
    return train_bigrec(ds, params, run_dir, cache_dir, progress)


def run_scorer(method: str, run_dir: Path, ds: Dataset, params: Params, cache_dir: Path):
    return trained_scorer(_BigRec(ds, params, Path(run_dir), cache_dir, False, False, None))
