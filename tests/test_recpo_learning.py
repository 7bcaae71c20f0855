"""benchmarks/recpo_learning.py end to end on the tiny random Llama: JSON structure and a real control arm."""

import json
import math

import pytest
import yaml

from r2ec.config import to_dict
from recpo_fixtures import load_benchmark, tiny_params, with_recpo, write_tiny_dataset


def _bench():
    return load_benchmark("recpo_learning")


def _setup(tmp_path):
    _, data = write_tiny_dataset(tmp_path)
    p = with_recpo(tiny_params(), batch_size=2, group_size=3, max_reasoning_tokens=4, item_refresh_every=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(p)))
    return data


def test_recpo_learning_benchmark_end_to_end(tmp_path):
    data = _setup(tmp_path)
    out = tmp_path / "res" / "learning.json"
    res = _bench().main(["--params", str(tmp_path / "params.yaml"), "--data", str(data), "--cache", "",
                         "--users", "4", "--steps", "2", "--eval-every", "1", "--work", str(tmp_path / "work"),
                         "--out", str(out)])
    js = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    for k in ("command", "date", "machine", "params", "users", "steps", "p_rise", "p_vs_control", "summary",
              "arms", "same_start"):
        assert k in js, k
    assert js["users"] == 4 and js["params"]["recpo"]["train_max_samples"] == 4
    assert js["params"]["recpo"]["shuffle_advantages"] is False
    assert 0.0 <= js["p_rise"] <= 1.0 and 0.0 <= js["p_vs_control"] <= 1.0
    assert js["same_start"] is True  # both arms start from the same state
    bar = js["bar"]
    assert bar["checks"] == {"p_rise < 0.01": js["p_rise"] < 0.01, "p_vs_control < 0.05": js["p_vs_control"] < 0.05,
                             "minutes <= 30": js["minutes"] <= 30}
    assert bar["passed"] == all(bar["checks"].values())
    assert set(js["arms"]) == {"recpo", "control"}
    for name, arm in js["arms"].items():
        assert [c["step"] for c in arm["curve"]] == [1, 2]
        assert [c["step"] for c in arm["pool_curve"]] == [0, 1, 2]
        assert all(math.isfinite(c["reward"]) for c in arm["curve"] + arm["pool_curve"])
        for when in ("before", "after"):
            assert len(arm[when]["reward"]) == len(arm[when]["N@10"]) == len(arm[when]["rank"]) == 4
            assert all(0.0 <= x <= 1.0 for x in arm[when]["N@10"])
        assert arm["sample_ids"] == js["arms"]["recpo"]["sample_ids"]
    # the control arm's token loss really got shuffled advantages, the RecPO arm's never
    assert all(c["adv_shuffled_frac"] == 0.0 for c in js["arms"]["recpo"]["curve"])
    assert any(c["adv_shuffled_frac"] > 0.0 for c in js["arms"]["control"]["curve"])
    # identical batches and rollouts at the first step: the same rewards, a different token loss
    r0, c0 = js["arms"]["recpo"]["curve"][0], js["arms"]["control"]["curve"][0]
    assert r0["reward"] == c0["reward"] and r0["item_loss"] == c0["item_loss"]
    assert res["p_rise"] == js["p_rise"]


def test_two_jobs_give_the_arms_of_one_process_and_sampled_rewards(tmp_path):
    """``--jobs 2`` runs each arm in its own process: the same curves and pool rewards as running them in turn;
    ``--sampled G`` adds each user's mean reward over G sampled trajectories and its p-values."""
    data = _setup(tmp_path)
    common = ["--params", str(tmp_path / "params.yaml"), "--data", str(data), "--cache", "", "--users", "4",
              "--steps", "1", "--eval-every", "0", "--sampled", "2"]
    one = _bench().main(common + ["--work", str(tmp_path / "w1"), "--out", str(tmp_path / "one.json")])
    two = _bench().main(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "two.json"),
                                  "--jobs", "2"])
    for name in ("recpo", "control"):
        a, b = one["arms"][name], two["arms"][name]
        # the same rollouts and rewards; losses and pool rewards to float rounding (the child process may run
        # another number of torch threads, which reorders reductions)
        assert [c["reward"] for c in a["curve"]] == pytest.approx([c["reward"] for c in b["curve"]], rel=1e-4)
        assert [c["token_loss"] for c in a["curve"]] == pytest.approx([c["token_loss"] for c in b["curve"]],
                                                                     rel=1e-2, abs=1e-7)
        for when in ("before", "after"):
            assert a[when]["rank"] == b[when]["rank"]
            assert a[when]["reward_sampled"] == pytest.approx(b[when]["reward_sampled"], rel=1e-4)
        assert len(a["after"]["reward_sampled"]) == 4
        assert all(0.0 <= x <= 1.0 for x in a["after"]["reward_sampled"])
    # the sampled reward is seeded: both arms measure the same start
    assert one["arms"]["recpo"]["before"]["reward_sampled"] == one["arms"]["control"]["before"]["reward_sampled"]
    for k in ("p_rise_sampled", "p_vs_control_sampled", "p_rise_control_sampled"):
        assert 0.0 <= two[k] <= 1.0
