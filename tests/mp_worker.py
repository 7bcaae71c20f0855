"""One rank of a multi-process LLM run on the tiny model (started N times by torchrun; see test_multiprocess.py).

argv[1] is a JSON object: ``method``, ``out`` (run dir), ``recpo`` (tiny_params overrides), optional ``kill_at``
(interrupt both ranks after that many steps, as a kill would), ``eval_batch`` (eval.batch_size). ``method``
``bigrec`` trains BigRec with test_bigrec_d3's params (``recpo`` then unused). Each rank writes ``out/rank<r>.done`` when it
ends cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from recpo_fixtures import Killed, kill_at, tiny_dataset, tiny_params  # noqa: E402

from r2ec.recpo.trainer import train_r2ec  # noqa: E402


def params_of(job: dict):
    """The run's params (shared with the single-process reference run of the tests)."""
    if job["method"] == "bigrec":
        from test_bigrec_d3 import _params
        p = _params(bigrec={"popularity_gamma": (0.0, 3.0)})
    else:
        p = tiny_params(**job["recpo"])
    # optional llm / lora overrides (the frozen-states run adapts only the last layer)
    p = dataclasses.replace(p, llm=dataclasses.replace(p.llm, **job.get("llm", {})),
                            lora=dataclasses.replace(p.lora, **job.get("lora", {})))
    return dataclasses.replace(p, eval=dataclasses.replace(p.eval, batch_size=job.get("eval_batch", 2)))


def main() -> None:
    job = json.loads(sys.argv[1])
    out = Path(job["out"])
    hook = kill_at(job["kill_at"]) if job.get("kill_at") else None
    p = params_of(job)
    try:
        if job["method"] == "bigrec":
            from r2ec.baselines.bigrec import train_bigrec
            train_bigrec(tiny_dataset(), p, out, None, progress=False, dvclive=False, hook=hook)
        else:
            train_r2ec(job["method"], tiny_dataset(), p, out, None, progress=False, dvclive=False, hook=hook)
        ended = "finished"
    except Killed:
        ended = "killed"
    import os
    (out / f"rank{os.environ['RANK']}.done").write_text(ended)
    from r2ec.train.engine import shutdown
    shutdown()


if __name__ == "__main__":
    main()
