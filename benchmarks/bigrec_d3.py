"""BigRec / D3 speed on the real backbone: SFT step time, free (BigRec) and constrained (D3) decoding throughput.

    python benchmarks/bigrec_d3.py --data results/data/movielens-100k --cache results/cache --threads 1

Prints one JSON line per measurement (no training run is written; the LoRA stays at its initialisation).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from r2ec import config as C
from r2ec.io import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default="results/cache")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sft-batches", type=int, nargs="*", default=[8, 16], help="none: skip the SFT timing")
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--samples", type=int, default=32, help="valid samples decoded per measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from r2ec.baselines.bigrec import _BigRec
    p = C.load(args.params, args.overrides)
    ds = load_dataset(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tr = _BigRec(ds, p, Path(tmp), Path(args.cache), False, False, None)
        print(json.dumps({"titles": len(tr.trie.title_paths), "trie_nodes": tr.trie.n_nodes,
                          "max_new_tokens": tr.max_new_tokens,
                          "prompt_tokens": sum(len(tr.prompt_of(r)) for r in ds.split("valid")[:64].iter_rows(
                              named=True)) / 64}), flush=True)
        pool = tr.train_pool()
        for bs in args.sft_batches:
            rows = pool[:bs]
            tr.train_step(rows)  # warm-up
            t0 = time.perf_counter()
            rec = tr.train_step(rows)
            print(json.dumps({"sft_batch": bs, "step_s": round(time.perf_counter() - t0, 2),
                              "loss": round(rec["loss"], 3)}), flush=True)
        t0 = time.perf_counter()
        tr.before_evaluate()
        print(json.dumps({"title_table_s": round(time.perf_counter() - t0, 1)}), flush=True)
        rows = list(ds.split("valid")[:args.samples].iter_rows(named=True))
        for name, kw in (("bigrec", {"num_beams": p.bigrec.num_beams, "length_penalty": p.bigrec.length_penalty}),
                         ("d3", {"num_beams": p.d3.num_beams, "length_penalty": p.d3.length_penalty,
                                 "trie": tr.trie})):
            for bs in args.decode_batches:
                tr._reset_stats()
                tr.decode(rows, bs, **kw)
                st = tr.stats
                print(json.dumps({"decode": name, "batch": bs, "samples_per_s": round(st["samples"] / st["seconds"], 3),
                                  "invalid_rate": st["invalid"] / st["samples"],
                                  "mean_len": st["tokens"] / st["samples"]}), flush=True)


if __name__ == "__main__":
    main()
