"""D3 (Bao et al. EMNLP 2024, "Decoding Matters"): BigRec's SFT adapter decoded by title-constrained beam search.

No training of its own: the adapter is the pipeline's BigRec run's best one (``runs/<dataset>/bigrec/best``, the
shared SFT stage; its ``sft.json`` must show this run's backbone, ``lora`` params and dataset). Decoding
(:mod:`r2ec.baselines.title_trie`): beam search over the catalogue's responses only, ``d3.num_beams`` beams
(>= max ``eval.ks``), ``d3.length_penalty`` (0: no length normalisation, the paper's fix), titles whose items are
all in the sample's history skipped when the evaluator masks them (``d3.exclude_history``). Optional text-free
assistant: the next-item distribution (softmax over items) of the pipeline's ``d3.assistant`` run (SASRec),
aggregated per title prefix and mixed in log space with weight ``gamma``; with several ``d3.gamma`` values the
best on valid N@10 is used on test.

Ranking: finished beams' items by beam score, every other item -inf after them (ties count against the
target: a target outside the beams ranks last). A beam names its items by exact token match (a trie leaf); the
items sharing the target's title count as the target (as BigRec's evaluation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import polars as pl
import torch

from r2ec.baselines.bigrec import SFT_FILE, TitleGenHarness, drop_target_duplicates, sft_identity
from r2ec.config import Params
from r2ec.config.backbones import backbone_free_run
from r2ec.errors import UserError
from r2ec.io import Dataset
from r2ec.train.checkpoint import load_trainable_state
from r2ec.train.harness import trained_scorer

log = logging.getLogger(__name__)

SFT_RUN = "bigrec"  # the run whose best adapter D3 decodes


class _D3(TitleGenHarness):

    def __init__(self, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None, progress: bool,
                 use_dvclive: bool, hook: Callable[[int, dict], None] | None):
        super().__init__("d3", ds, params, run_dir, cache_dir, progress, use_dvclive, hook)
        self.dc = params.d3
        self.load_sft(self.run_dir.parent / SFT_RUN)
        self.assistant = None
        if max(self.dc.gamma) > 0:
            from r2ec.baselines.seqtrain import load_scorer
            src = backbone_free_run(self.run_dir, self.dc.assistant)
            if not (src / "checkpoint.pt").exists():
                raise UserError(f"d3.assistant={self.dc.assistant!r}: {src / 'checkpoint.pt'} not found; train "
                                f"{self.dc.assistant} on this dataset first (the pipeline does) or set d3.gamma=[0]")
            self.assistant = load_scorer(self.dc.assistant, ds, src)

    def trains(self) -> bool:
        return False

    def load_sft(self, src: Path) -> None:
        """Load the BigRec run's best adapter; its backbone, LoRA and dataset must be this run's."""
        best, ident = src / "best" / "trainable.pt", src / "best" / SFT_FILE
        if not best.exists() or not ident.exists():
            raise UserError(f"D3 decodes BigRec's SFT adapter: {best} (and {ident}) not found; run bigrec on this "
                            f"dataset first (the pipeline does)")
        used, want = json.loads(ident.read_text()), sft_identity(self.p, self.ds)
        for key in want:
            if used.get(key) != want[key]:
                raise UserError(f"{ident}: the SFT adapter was trained with another {key} than this run's; "
                                f"re-run bigrec with this run's backbone, lora params and data")
        load_trainable_state(self.modules(), torch.load(best, map_location="cpu"))
        self.stepped()
        self.sft_step = json.loads((src / "best" / "valid.json").read_text()).get("step")
        log.info("d3: decoding the SFT adapter %s (step %s)", best, self.sft_step)

    def sweep_values(self) -> tuple[float, ...]:
        return self.p.d3.gamma

    def scorer(self, batch: pl.DataFrame) -> torch.Tensor:
        from r2ec.baselines.title_trie import assistant_mass
        rows = list(batch.iter_rows(named=True))
        ev = self.p.eval
        dead = None
        if self.dc.exclude_history and ev.mask_history and ev.mask_repeated_target:
            dead = [self.trie.dead_nodes(r["history_item_ids"]) for r in rows]
        mass = None
        if self.value > 0:
            probs = torch.softmax(self.assistant(batch).float(), dim=1)  # column 0 is -inf -> 0
            mass = assistant_mass(self.trie, probs, self.dc.aggregate)
        hyps = self.decode(rows, self.dc.decode_batch_size, num_beams=self.dc.num_beams,
                           length_penalty=self.dc.length_penalty, trie=self.trie, dead=dead, mass=mass,
                           gamma=self.value)
        scores = torch.full((len(rows), self.ds.n_items + 1), float("-inf"))
        for b, hs in enumerate(hyps):
            for h in reversed(hs):  # best last: a title's items keep their best beam's score
                items = self.trie.items_of(h.tokens) if h.finished else None
                if items:
                    scores[b, items] = h.score
        return drop_target_duplicates(scores, [int(r["target_item_id"]) for r in rows], self.trie)


def train_d3(ds: Dataset, params: Params, run_dir: Path, cache_dir: Path | None = None, progress: bool = True,
             *, dvclive: bool = True) -> dict[str, dict]:
    """Evaluate D3 on BigRec's SFT adapter (``run_dir/../bigrec/best``); writes the run outputs."""
    return _D3(ds, params, Path(run_dir), cache_dir, progress, dvclive, None).run()


# the method registry's uniform entries (r2ec.methods)
def train_method(method: str, ds: Dataset, params: Params, run_dir: Path, cache_dir: Path, progress: bool) -> dict:
    return train_d3(ds, params, run_dir, cache_dir, progress)


def run_scorer(method: str, run_dir: Path, ds: Dataset, params: Params, cache_dir: Path):
    return trained_scorer(_D3(ds, params, Path(run_dir), cache_dir, False, False, None))
