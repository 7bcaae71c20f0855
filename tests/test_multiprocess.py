"""LLM runs under N processes (torchrun, 2 CPU processes, gloo) on the tiny model: R2ec and BigRec.

Every launch has a timeout and runs in its own process group, killed whole on expiry: a hang fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch

from mp_worker import params_of
from recpo_fixtures import tiny_dataset, tiny_params

from r2ec.errors import UserError
from r2ec.recpo.trainer import train_r2ec
from r2ec import dist
from r2ec.train.checkpoint import load_checkpoint
from r2ec.train.harness import mean_record

ROOT = Path(__file__).resolve().parents[1]
# R2ec with reasoning; a global batch of 4 users = 2 per rank
CFG = dict(steps=2, eval_every=2, checkpoint_every=1, batch_size=4, group_size=2, max_reasoning_tokens=4)
TIMEOUT = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, recpo: dict, *, method: str = "r2ec", kill_at: int = 0, env: dict | None = None,
           n: int = 2, check: bool = True, **over: dict) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node n tests/mp_worker.py`` on CPU; the whole group is killed after TIMEOUT s
    (``over``: ``llm`` / ``lora`` overrides of the worker's params)."""
    job = {"method": method, "out": str(out), "recpo": recpo, "kill_at": kill_at, **over}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / "tests" / "mp_worker.py"), json.dumps(job)]
    e = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
         "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    e = {k: v for k, v in e.items() if v is not None}  # None in ``env``: the variable unset
    p = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, cwd=ROOT)
    try:
        so, se = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        import psutil
        # torchrun starts each worker in a session of its own: kill them one by one, then the launcher's group
        for kid in psutil.Process(p.pid).children(recursive=True):
            kid.kill()
        os.killpg(p.pid, signal.SIGKILL)
        so, se = p.communicate()
        pytest.fail(f"{n}-process run did not end within {TIMEOUT}s (a hang)\n{se[-3000:]}")
    assert p.returncode == 0 or not check, se[-5000:]
    return subprocess.CompletedProcess(cmd, p.returncode, so, se)


# DeepSpeed ZeRO-2 as `accelerate launch --config_file configs/accelerate/zero2.yaml` selects it, on CPU processes
ZERO2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_CPU": None, "DS_ACCELERATOR": "cpu",
         "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ROOT / "configs" / "accelerate" / "ds_config_zero2.json")}
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed not installed (make test installs it)")


def ended(out: Path) -> list[str]:
    return [(out / f"rank{r}.done").read_text() if (out / f"rank{r}.done").exists() else "-" for r in range(2)]


def train_log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_proc(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mp") / "straight"
    launch(out, CFG)
    assert ended(out) == ["finished", "finished"]
    return out


def test_two_processes_match_one_process_with_the_same_global_batch(two_proc, tmp_path):
    torch.set_num_threads(1)
    # eval.batch_size 2: the 6 valid/test samples are 3 eval batches (ranks 0, 1, 0); 12 items, 2 encoding batches
    m1 = train_r2ec("r2ec", tiny_dataset(), params_of({"method": "r2ec", "recpo": CFG}), tmp_path, None,
                    progress=False, dvclive=False)
    m2 = json.loads((two_proc / "metrics.json").read_text())
    # ranks: identical rows in identical order (evaluation is sharded by whole eval batches, item-table rows by
    # whole encoding batches: every score is computed in the very batch one process computes it in)
    assert pl.read_parquet(two_proc / "ranks.parquet").equals(pl.read_parquet(tmp_path / "ranks.parquet"))
    assert m1 == m2  # metrics are functions of the ranks
    # the loss scaling keeps the global mean: step 0's gradient norm (before any weight differs) equals one
    # process's up to float summation order (two half-batch backwards summed vs one whole-batch backward)
    g1, g2 = train_log(tmp_path)[0]["grad_norm"], train_log(two_proc)[0]["grad_norm"]
    assert g2 == pytest.approx(g1, rel=1e-5)
    # weights after 2 steps: Adam divides by sqrt(v), which magnifies the float-order differences of near-zero
    # gradient entries up to ~lr; 1e-4 absolute (lr = 1e-2, weights ~0.1) still fails on any mis-scaled or
    # missing reduction (a one-rank gradient moves weights by ~lr)
    a = load_checkpoint(tmp_path / "last")["trainable"]
    b = load_checkpoint(two_proc / "last")["trainable"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)


def test_frozen_states_under_two_processes_match_one_process(tmp_path):
    # each rank builds the states of its own shard of trajectories; the result is one process's
    over = {"llm": {"frozen_states": True}, "lora": {"last_layers": 1}}
    launch(tmp_path / "two", CFG, **over)
    assert ended(tmp_path / "two") == ["finished", "finished"]
    torch.set_num_threads(1)
    train_r2ec("r2ec", tiny_dataset(), params_of({"method": "r2ec", "recpo": CFG, **over}), tmp_path / "one", None,
               progress=False, dvclive=False)
    assert pl.read_parquet(tmp_path / "two" / "ranks.parquet").equals(pl.read_parquet(tmp_path / "one" / "ranks.parquet"))
    g1, g2 = train_log(tmp_path / "one")[0]["grad_norm"], train_log(tmp_path / "two")[0]["grad_norm"]
    assert g2 == pytest.approx(g1, rel=1e-5)
    assert {r["frozen_split"] for d in ("one", "two") for r in train_log(tmp_path / d)} == {1}  # the fast path ran
    a = load_checkpoint(tmp_path / "one" / "last")["trainable"]
    b = load_checkpoint(tmp_path / "two" / "last")["trainable"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)


def test_kill_and_resume_under_two_processes_equals_the_uninterrupted_run(two_proc, tmp_path):
    out = tmp_path / "resumed"
    launch(out, CFG, kill_at=1)  # both ranks interrupted after step 1 of 2 (its checkpoint written)
    assert ended(out) == ["killed", "killed"]
    assert load_checkpoint(out / "last")["step"] == 1
    launch(out, CFG)
    assert ended(out) == ["finished", "finished"]
    a, b = load_checkpoint(two_proc / "last"), load_checkpoint(out / "last")
    assert a["step"] == b["step"] == 2
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    assert json.loads((out / "metrics.json").read_text()) == json.loads((two_proc / "metrics.json").read_text())
    assert pl.read_parquet(out / "ranks.parquet").equals(pl.read_parquet(two_proc / "ranks.parquet"))
    assert [r["step"] for r in train_log(out)] == [0, 1]


@pytest.mark.parametrize("fast,steps_run", [(1, [0, 1]), (0, [0])])
def test_no_hang_when_one_ranks_clock_ends_its_budget_first(tmp_path, fast, steps_run):
    """Rank ``fast``'s clock runs 1e9 times fast: its own budget (1 minute) ends after its first step. The main
    process's clock decides for both, so both ranks stop at the same step and end cleanly."""
    t0 = time.perf_counter()
    launch(tmp_path, {**CFG, "max_minutes": 1.0}, env={"R2EC_CLOCK_SCALE": f"{fast}:1e9"})
    assert ended(tmp_path) == ["finished", "finished"]
    assert [r["step"] for r in train_log(tmp_path)] == steps_run
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["n_samples"] == 6
    assert time.perf_counter() - t0 < TIMEOUT


def test_bigrec_two_processes_match_one_process(tmp_path):
    from r2ec.baselines.bigrec import train_bigrec
    torch.set_num_threads(1)
    m1 = train_bigrec(tiny_dataset(), params_of({"method": "bigrec"}), tmp_path / "one", None, progress=False,
                      dvclive=False)
    launch(tmp_path / "two", {}, method="bigrec")
    assert ended(tmp_path / "two") == ["finished", "finished"]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    wall = {"decode_s", "decode_samples_per_s"}
    for split in ("valid", "test"):
        assert {k: v for k, v in m2[split].items() if k not in wall} == \
               {k: v for k, v in m1[split].items() if k not in wall}
    assert pl.read_parquet(tmp_path / "two" / "ranks.parquet").equals(pl.read_parquet(tmp_path / "one" / "ranks.parquet"))
    gens = [json.loads(x)["sample_id"] for x in open(tmp_path / "two" / "test_generations.jsonl")]
    assert gens == [json.loads(x)["sample_id"] for x in open(tmp_path / "one" / "test_generations.jsonl")]
    # token-mean SFT loss over the global batch: step 0's gradient norm is one process's (float order aside)
    assert train_log(tmp_path / "two")[0]["grad_norm"] == pytest.approx(train_log(tmp_path / "one")[0]["grad_norm"],
                                                                         rel=1e-5)


def test_global_batch_must_split_evenly_over_the_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "world", lambda acc: 2)
    with pytest.raises(UserError, match="batch_size=3 .* multiple of the 2 processes"):
        train_r2ec("r2ec", tiny_dataset(), tiny_params(batch_size=3), tmp_path, None, progress=False,
                   dvclive=False)


def test_shards_and_mean_record():
    assert [dist.shard(4, r, 2) for r in range(2)] == [(0, 2), (2, 4)]
    assert [dist.shard(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert dist.from_main(None, 3) == 3 and dist.gather_objects(None, 3) == [3]
    assert mean_record([{"step": 0, "a": 1.0, "s": "x"}, {"step": 0, "a": 3.0, "s": "y"}]) == \
        {"step": 0, "a": 2.0, "s": "x"}


@pytest.fixture(scope="module")
def zero2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2") / "straight"
    launch(out, CFG, env=ZERO2)
    assert ended(out) == ["finished", "finished"]
    return out


@needs_deepspeed
def test_zero2_two_processes_match_one_process(zero2, two_proc):
    """ZeRO-2 on 2 CPU processes trains what 2 plain processes (and so 1 process) train: the same ranks and
    metrics, and weights within the tolerance of the plain 2-process test (float summation order)."""
    assert pl.read_parquet(zero2 / "ranks.parquet").equals(pl.read_parquet(two_proc / "ranks.parquet"))
    assert json.loads((zero2 / "metrics.json").read_text()) == json.loads((two_proc / "metrics.json").read_text())
    a, b = load_checkpoint(two_proc / "last"), load_checkpoint(zero2 / "last")
    assert isinstance(b["optimizer"], list) and len(b["optimizer"]) == 2  # every rank's ZeRO partition
    for k in a["trainable"]:
        torch.testing.assert_close(b["trainable"][k], a["trainable"][k], rtol=0, atol=1e-4, msg=k)


@needs_deepspeed
def test_zero2_kill_and_resume_equals_the_uninterrupted_run(zero2, tmp_path):
    """Resume under ZeRO-2: every rank gets its own optimizer partition back (ZeRO's loader takes the list of all
    ranks' partitions and refreshes its fp32 master copies from the restored weights), so step 2 continues the
    straight run's Adam state."""
    out = tmp_path / "resumed"
    launch(out, CFG, kill_at=1, env=ZERO2)
    assert ended(out) == ["killed", "killed"]
    launch(out, CFG, env=ZERO2)
    assert ended(out) == ["finished", "finished"]
    a, b = load_checkpoint(zero2 / "last"), load_checkpoint(out / "last")
    assert a["step"] == b["step"] == 2
    for k in a["trainable"]:
        torch.testing.assert_close(b["trainable"][k], a["trainable"][k], rtol=0, atol=1e-6, msg=k)
    assert pl.read_parquet(out / "ranks.parquet").equals(pl.read_parquet(zero2 / "ranks.parquet"))


@needs_deepspeed
def test_zero2_weights_loaded_after_prepare_survive_the_first_step(zero2, tmp_path):
    """A warm start loads another run's adapter after `prepare`; with a vanishing lr (1e-30: an Adam step moves a
    weight by ~lr) the first ZeRO-2 step must leave those weights (without the master-weight refresh it restores
    the fresh LoRA init, whose lora_B is zero)."""
    src = tmp_path / "runs" / "r2ec_no_reasoning" / "best"
    src.mkdir(parents=True)
    (src / "trainable.pt").write_bytes((zero2 / "best" / "trainable.pt").read_bytes())
    out = tmp_path / "runs" / "r2ec"
    launch(out, {**CFG, "steps": 1, "lr": 1e-30, "warm_start": "r2ec_no_reasoning"}, env=ZERO2)
    loaded = torch.load(src / "trainable.pt")
    after = load_checkpoint(out / "last")
    assert after["step"] == 1
    lora = [k for k in loaded if "lora_" in k]
    assert lora and any(loaded[k].abs().sum() > 0 for k in lora if "lora_B" in k)  # trained, not the init
    for k in lora:
        torch.testing.assert_close(after["trainable"][k], loaded[k], rtol=0, atol=1e-12, msg=k)


@needs_deepspeed
def test_zero2_starts_over_on_a_checkpoint_of_the_plain_engine(zero2, tmp_path):
    """A plain 2-process checkpoint holds whole optimizer states, ZeRO-2 wants partitions: the run is not
    resumed from it but starts over (its fingerprint names the engine) and ends as the straight ZeRO-2 run."""
    out = tmp_path / "mixed"
    launch(out, CFG, kill_at=1)  # a plain 2-process checkpoint after step 1
    launch(out, CFG, env=ZERO2)
    assert ended(out) == ["finished", "finished"] and [r["step"] for r in train_log(out)] == [0, 1]
    a, b = load_checkpoint(zero2 / "last"), load_checkpoint(out / "last")
    for k in a["trainable"]:
        torch.testing.assert_close(b["trainable"][k], a["trainable"][k], rtol=0, atol=1e-6, msg=k)


def test_optimizer_state_of_another_engine_is_refused():
    from types import SimpleNamespace

    from r2ec.train import engine
    plain = SimpleNamespace(num_processes=1, distributed_type=None)
    with pytest.raises(UserError, match="checkpoint written DeepSpeed with 2 processes, this run is without"):
        engine.load_optimizer_state(plain, None, [{}, {}], "run/last")

def test_a_deepspeed_config_without_deepspeed_is_a_one_line_error(monkeypatch):
    from r2ec.train import engine
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"deepspeed is not installed: pip install 'r2ec\[gpu\]'"):
        engine.make_accelerator("no")
