"""Side-by-side benchmark: r2ec's SASRec vs RecBole 1.2.1's SASRec on the same prepared split.

Not a CI test. Usage (from the repository root, inside the project venv)::

    python benchmarks/recbole_sasrec.py --data results/data/movielens-100k --epochs 20 --patience 5 \\
        > benchmarks/recbole_sasrec.log 2>&1 &

What it does:

1. writes our train/valid/test samples as RecBole benchmark files
   ``<work>/r2ec_bench/r2ec_bench.{train,valid,test}.inter`` (header
   ``user_id:token  item_id:token  item_id_list:token_seq``, the history space-separated, its last 20 items);
2. creates RecBole's own venv (``./.bench-venv-recbole``, gitignore it) on first use with
   ``torch==2.13.0 "numpy<2" "pandas<2.2" "setuptools<81" recbole==1.2.1`` and runs this same file there as a
   worker (``--worker``): RecBole SASRec, CE loss, no negative sampling, ``valid_metric: NDCG@10``, the same
   hidden / layers / heads / dropout / lr / batch size / epochs / patience. The worker stores RecBole's own
   test numbers and its full-sort scores for every one of our test samples, in our item-id columns;
3. trains our SASRec through :func:`r2ec.baselines.train_classic` with the same settings;
4. ranks both models' test scores with r2ec's evaluator (history masked, pessimistic ties) and also without
   the history mask (RecBole's own full-sort protocol masks nothing), and prints one table.

Seconds/epoch are training seconds (validation excluded) for both, with the same torch thread count; the
table gives the median (robust to load spikes on a shared machine) and the mean. The two trainings run one
after the other, so compare the two rows of one run only. ``--skip-recbole --skip-ours`` re-prints the table
from the stored results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".bench-venv-recbole"
PIP_SPEC = ["torch==2.13.0", "numpy<2", "pandas<2.2", "setuptools<81", "recbole==1.2.1"]
NAME = "r2ec_bench"


# ----------------------------------------------------------------------------------------------------------
# worker: runs inside RecBole's venv (numpy, torch, recbole only)

def worker(args: argparse.Namespace) -> None:
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # RecBole's best-checkpoint reload
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    import recbole.model.sequential_recommender as seqrec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.autograd.set_detect_anomaly(False)  # its SINE module switches anomaly detection on at import
    work = Path(args.work)
    spec = json.loads((work / "spec.json").read_text())
    cfg = {
        "data_path": str(work), "dataset": NAME, "benchmark_filename": ["train", "valid", "test"],
        "alias_of_item_id": ["item_id_list"], "load_col": {"inter": ["user_id", "item_id", "item_id_list"]},
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "MAX_ITEM_LIST_LENGTH": spec["max_len"],
        "train_neg_sample_args": None, "loss_type": "CE",
        "hidden_size": spec["hidden"], "inner_size": 4 * spec["hidden"], "n_layers": spec["layers"],
        "n_heads": spec["heads"], "hidden_dropout_prob": spec["dropout"], "attn_dropout_prob": spec["dropout"],
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "learning_rate": spec["lr"], "weight_decay": spec["weight_decay"], "train_batch_size": spec["batch_size"],
        "eval_batch_size": 2048, "epochs": spec["epochs"], "stopping_step": spec["patience"], "eval_step": 1,
        "valid_metric": "NDCG@10", "metrics": ["Hit", "NDCG"], "topk": [5, 10, 20],
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"},
        "seed": spec["seed"], "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False,
        "checkpoint_dir": str(work / "saved"), "log_wandb": False, "worker": 0,
    }
    config = Config(model="SASRec", config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(spec["threads"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = seqrec.SASRec(config, train_data._dataset).to("cpu")
    trainer = Trainer(config, model)

    epoch_seconds: list[float] = []
    inner = trainer._train_epoch

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        epoch_seconds.append(time.perf_counter() - t0)
        print(f"[recbole] epoch {len(epoch_seconds)} train {epoch_seconds[-1]:.1f}s loss {out}", flush=True)
        return out

    trainer._train_epoch = timed
    t0 = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_seconds = time.perf_counter() - t0
    own = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

    # full-sort scores of the best model for our test samples, columns = our item ids (0 and unknown: -inf)
    model = trainer.model.eval()
    tok = dataset.field2token_id["item_id"]
    n_items = spec["n_items"]
    ours_to_rb = np.array([tok.get(str(i), -1) for i in range(n_items + 1)])
    data = np.load(work / "test_histories.npz")
    flat, offsets = data["flat"], data["offsets"]
    n = len(offsets) - 1
    scores = np.full((n, n_items + 1), -np.inf, dtype=np.float32)
    known = ours_to_rb >= 0
    from recbole.data.interaction import Interaction
    with torch.no_grad():
        for s in range(0, n, 1024):
            rows = range(s, min(s + 1024, n))
            seq = torch.zeros((len(rows), spec["max_len"]), dtype=torch.long)
            lens = torch.zeros(len(rows), dtype=torch.long)
            for j, r in enumerate(rows):
                h = flat[offsets[r]:offsets[r + 1]][-spec["max_len"]:]
                seq[j, :len(h)] = torch.as_tensor(ours_to_rb[h])  # RecBole pads on the right
                lens[j] = len(h)
            inter = Interaction({"item_id_list": seq, "item_length": lens,
                                 "user_id": torch.zeros(len(rows), dtype=torch.long)})
            rb = model.full_sort_predict(inter).numpy()  # [b, RecBole items]
            scores[s:s + len(rows)][:, known] = rb[:, ours_to_rb[known]]
    np.save(work / "recbole_test_scores.npy", scores)
    result = {"own_test": {k: float(v) for k, v in own.items()}, "best_valid_ndcg10": float(best_valid),
              "epochs": len(epoch_seconds), "epoch_seconds": epoch_seconds, "fit_seconds": fit_seconds}
    (work / "recbole_result.json").write_text(json.dumps(result, indent=2))
    print("[recbole] done", json.dumps(result["own_test"]), flush=True)


# ----------------------------------------------------------------------------------------------------------
# driver: runs in the project venv

def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if py.exists():
        return py
    print(f"creating {VENV} (RecBole 1.2.1)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    wheel = Path("/tmp/wheels/recbole-1.2.1-py3-none-any.whl")  # a local copy, when there is one
    spec = [*PIP_SPEC[:-1], str(wheel) if wheel.exists() else PIP_SPEC[-1]]
    subprocess.run([str(py), "-m", "pip", "install", "-q", *spec], check=True)
    return py


def write_benchmark_files(ds, work: Path, max_len: int) -> None:
    import numpy as np
    d = work / NAME
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        df = ds.split(split)
        lines = ["user_id:token\titem_id:token\titem_id_list:token_seq"]
        for u, h, t in zip(df["user_id"].to_list(), df["history_item_ids"].to_list(),
                           df["target_item_id"].to_list()):
            lines.append(f"{u}\t{t}\t{' '.join(map(str, h[-max_len:]))}")
        (d / f"{NAME}.{split}.inter").write_text("\n".join(lines) + "\n")
    hist = ds.split("test")["history_item_ids"].to_list()
    offsets = np.cumsum([0, *map(len, hist)])
    np.savez(work / "test_histories.npz", flat=np.array([i for h in hist for i in h], dtype=np.int64),
             offsets=offsets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="results/data/movielens-100k", help="prepared dataset directory")
    ap.add_argument("--work", default="cache/bench_recbole", help="scratch directory (RecBole files, runs)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is robust on a shared machine)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: SeqModelCfg's")
    ap.add_argument("--skip-recbole", action="store_true", help="reuse the worker's last result")
    ap.add_argument("--skip-ours", action="store_true", help="reuse our last run")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import dataclasses
    import shutil

    import numpy as np
    import polars as pl
    import torch

    from r2ec.baselines import train_classic
    from r2ec.baselines.seqtrain import history_width
    from r2ec.config import EvalCfg, SeqModelCfg
    from r2ec.eval import evaluate
    from r2ec.io import load_dataset

    ds = load_dataset(args.data)
    cfg = SeqModelCfg(epochs=args.epochs, patience=args.patience, threads=args.threads)
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    max_len = history_width(ds)
    spec = {**dataclasses.asdict(cfg), "max_len": max_len, "n_items": ds.n_items}
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    print(f"dataset {ds.name}: {ds.n_items} items, samples " +
          ", ".join(f"{s} {ds.split(s).height}" for s in ("train", "valid", "test")), flush=True)
    print("settings:", json.dumps(spec), flush=True)

    if not args.skip_recbole:
        write_benchmark_files(ds, work, max_len)
        py = ensure_venv()
        shutil.rmtree(work / "saved", ignore_errors=True)
        env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run([str(py), str(Path(__file__).resolve()), "--worker", "--work", str(work)], env=env,
                       check=True)
    rb = json.loads((work / "recbole_result.json").read_text())

    run_dir = work / "ours_sasrec"
    if not args.skip_ours:
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        train_classic("sasrec", ds, cfg, EvalCfg(), run_dir, progress=False)
        print(f"[ours] fit {time.perf_counter() - t0:.0f}s", flush=True)
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]

    from r2ec.baselines import load_scorer
    ours_scorer = load_scorer("sasrec", ds, run_dir)
    test = ds.split("test")
    rb_scores = torch.from_numpy(np.load(work / "recbole_test_scores.npy"))
    row_of = dict(zip(test["sample_id"].to_list(), range(test.height)))

    def rb_scorer(batch: pl.DataFrame) -> torch.Tensor:
        return rb_scores[[row_of[s] for s in batch["sample_id"].to_list()]]

    masked, unmasked = EvalCfg(), EvalCfg(mask_history=False, mask_repeated_target=False)
    rows = []
    for name, scorer, secs, epochs in (
            ("r2ec SASRec", ours_scorer, [r["train_seconds"] for r in log], len(log)),
            ("RecBole 1.2.1 SASRec", rb_scorer, rb["epoch_seconds"], rb["epochs"])):
        m, _ = evaluate(scorer, ds, "test", masked, progress=False)
        u, _ = evaluate(scorer, ds, "test", unmasked, progress=False)
        rows.append((name, m["N@10"], m["H@10"], u["N@10"], u["H@10"], float(np.median(secs)),
                     float(np.mean(secs)), epochs))
    own = rb["own_test"]
    out = ["", f"test set: {test.height} samples; masked = r2ec evaluator (history masked); "
               "unmasked = same evaluator without the mask (RecBole's protocol)",
           f"{'method':<24}{'N@10':>8}{'H@10':>8}{'N@10 unm':>10}{'H@10 unm':>10}{'s/ep med':>10}{'s/ep mean':>10}"
           f"{'epochs':>8}"]
    for r in rows:
        out.append(f"{r[0]:<24}{r[1]:>8.4f}{r[2]:>8.4f}{r[3]:>10.4f}{r[4]:>10.4f}{r[5]:>10.1f}{r[6]:>10.1f}{r[7]:>8d}")
    out.append(f"RecBole's own evaluator (no mask): ndcg@10 {own.get('ndcg@10', float('nan')):.4f}, "
               f"hit@10 {own.get('hit@10', float('nan')):.4f}")
    text = "\n".join(out)
    print(text, flush=True)
    (work / "table.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
