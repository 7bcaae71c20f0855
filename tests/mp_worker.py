"""One rank of a multi-process LLM run on the tiny model (started N times by torchrun; see test_multiprocess.py).

argv[1] is a JSON object: ``method``, ``out`` (run dir), ``recpo`` (tiny_params overrides), optional ``kill_at``
(interrupt both ranks after that many steps, as a kill would). Each rank writes ``out/rank<r>.done`` when it
ends cleanly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from recpo_fixtures import Killed, kill_at, tiny_dataset, tiny_params  # noqa: E402

from r2ec.recpo.trainer import train_r2ec  # noqa: E402


def main() -> None:
    job = json.loads(sys.argv[1])
    out = Path(job["out"])
    hook = kill_at(job["kill_at"]) if job.get("kill_at") else None
    try:
        train_r2ec(job["method"], tiny_dataset(), tiny_params(**job["recpo"]), out, None, progress=False,
                   dvclive=False, hook=hook)
        ended = "finished"
    except Killed:
        ended = "killed"
    import os
    (out / f"rank{os.environ['RANK']}.done").write_text(ended)


if __name__ == "__main__":
    main()
