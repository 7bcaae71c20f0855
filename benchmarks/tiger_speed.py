"""Speed benchmark of TIGER (a benchmark, not a test; it asserts nothing about quality).

Usage (from the repository root, inside the project venv)::

    python benchmarks/tiger_speed.py --threads 1
    python benchmarks/tiger_speed.py --data results/data/movielens-100k -S tiger.hidden=64 --out bench.json

With the ``tiger`` params from ``--params`` plus ``-S key=value`` overrides, on a prepared dataset, it times

1. the item text embeddings (from the cache under ``--cache`` when present; the seconds of a fresh encoding
   otherwise) and the RQ-VAE training (``tiger.rqvae_epochs`` epochs; k-means initialisation included);
2. T5 training throughput: ``--train-samples`` training samples in ``tiger.batch_size`` batches (samples/s,
   after one warm-up batch);
3. constrained beam-search decoding throughput through the run's scorer (beam ``tiger.beam``, batches of
   ``tiger.beam_batch_size``) on the first ``--decode-samples`` test samples, with the untrained model (the
   cost does not depend on the weights).

Numbers depend on the machine's load; compare runs taken on the same machine under the same load only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from r2ec import config as C
from r2ec.baselines import tiger as T
from r2ec.baselines import tiger_semantic as S
from r2ec.io import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data", default="results/data/movielens-100k", help="prepared dataset")
    ap.add_argument("--cache", default="results/cache", help="cache root of the item embeddings")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--train-samples", type=int, default=2048)
    ap.add_argument("--decode-samples", type=int, default=256)
    ap.add_argument("--out", help="also write the numbers as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = C.load(args.params, args.overrides)
    cfg = p.tiger
    ds = load_dataset(args.data)

    t0 = time.perf_counter()
    emb, info = S.item_embeddings(ds.items, cfg.encoder, args.cache, cfg.embed_batch_size, cfg.text_max_tokens)
    t_emb = time.perf_counter() - t0
    model_rq, summary = S.train_rqvae(emb, **T._rq_kwargs(cfg))
    codes = model_rq.encode(torch.as_tensor(emb)).numpy()
    stats = S.code_stats(codes, cfg.codebook_size)
    sem = S.semantic_ids(codes)
    vocab = T.Vocab(sem, [cfg.codebook_size] * cfg.rqvae_levels + [int(sem[:, -1].max()) + 1], cfg.user_buckets)
    trie = T.Trie(vocab.codes, vocab.sizes)
    inputs = T.Inputs(vocab, T._max_history(ds, cfg))

    torch.manual_seed(cfg.seed)
    model = T.build_t5(vocab.size, cfg)
    n_params = sum(q.numel() for q in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = ds.split("train").head(args.train_samples + cfg.batch_size)
    ids, _ = inputs(train)
    labels = vocab.item_tokens[torch.as_tensor(train["target_item_id"].to_numpy().copy())]
    order = torch.arange(train.height)
    T._train_chunk(model, opt, ids, labels, order[:cfg.batch_size], cfg, False, "")  # warm-up
    t0 = time.perf_counter()
    T._train_chunk(model, opt, ids, labels, order[cfg.batch_size:], cfg, False, "")
    train_sps = (train.height - cfg.batch_size) / (time.perf_counter() - t0)

    test = ds.split("test").head(args.decode_samples)
    scorer = T.make_scorer(model, vocab, trie, inputs, cfg.beam, cfg.beam_batch_size, cfg.exclude_history)
    scorer(test.head(min(4, test.height)))  # warm-up
    t0 = time.perf_counter()
    with torch.no_grad():
        scorer(test)
    decode_sps = test.height / (time.perf_counter() - t0)

    rows = [
        ("item embeddings s", f"{t_emb:.1f}" + (" (cached)" if info["cached"] else "")),
        ("RQ-VAE s", f"{summary['seconds']:.1f} ({summary['steps']} steps)"),
        ("codebook utilisation", " / ".join(f"{u:.3f}" for u in stats["utilisation_per_level"])),
        ("collision rate", f"{stats['collision_rate']:.4f}"),
        ("T5 parameters", f"{n_params / 1e6:.2f} M"),
        ("T5 training samples/s", f"{train_sps:.1f}"),
        ("beam-search decoding samples/s", f"{decode_sps:.1f} (beam {cfg.beam})"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"TIGER on {ds.name} ({ds.n_items} items), {args.threads} thread(s)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "dataset": ds.name, "threads": args.threads, "embeddings_seconds": t_emb,
            "embeddings_cached": info["cached"],
            "rqvae_seconds": summary["seconds"], "rqvae": summary, "codes": stats, "t5_params": n_params,
            "t5_train_samples_per_s": train_sps, "decode_samples_per_s": decode_sps,
            "tiger": C.to_dict(cfg)}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
