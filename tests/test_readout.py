"""R2ec's learned readout: hand-computed scores, the fit, and its life in a run (fit, save, resume, warm start)."""

import dataclasses
import json

import pytest
import torch

from r2ec.config import ConfigError, ReadoutCfg, from_dict, to_dict
from r2ec.model.readout import Readout, distill_user_map, fit_readout, table_stats
from r2ec.recpo.trainer import _Trainer, train_r2ec
from recpo_fixtures import Killed, kill_at, tiny_dataset, tiny_params, with_recpo


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset()


def _with_readout(p, **kw):
    return dataclasses.replace(p, readout=ReadoutCfg(**{"rank": 2, "train_users": 6, "epochs": 30, "lr": 0.05,
                                                        **kw}))


def test_scores_are_the_tied_projection_of_standardised_states():
    ro = Readout(2, 1, seed=0)
    with torch.no_grad():
        ro.proj.copy_(torch.tensor([[1.0], [2.0]]))
    ro.set_user_stats(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))  # mean (1, 2), std (sqrt 2, 2 sqrt 2)
    table = torch.tensor([[9.0, 9.0], [1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # row 0 (pad) is ignored by the stats
    mu, sd = table_stats(table)
    torch.testing.assert_close(mu, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(sd, torch.tensor([1.0, 3.0 ** 0.5]) + 1e-6)
    s = ro.scores(torch.tensor([[3.0, 6.0]]), table)
    # z_u = ((3-1)/sqrt2, (6-2)/(2 sqrt2)) = (sqrt2, sqrt2) -> A^T z_u = 3 sqrt2
    # item 1: z = (-1, -1/sqrt3) -> -1 - 2/sqrt3; item 2: (1, -1/sqrt3) -> 1 - 2/sqrt3; item 3: (0, 2/sqrt3) -> 4/sqrt3
    u = 3 * 2 ** 0.5
    expect = torch.tensor([float("-inf"), u * (-1 - 2 / 3 ** 0.5), u * (1 - 2 / 3 ** 0.5), u * 4 / 3 ** 0.5])
    torch.testing.assert_close(s[0], expect, rtol=1e-4, atol=1e-4)


def test_fit_lowers_the_catalogue_loss_deterministically():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 6, generator=g)
    targets = torch.randint(1, 9, (40,), generator=g)
    users = table[targets] + 0.3 * torch.randn(40, 6, generator=g)  # a user's state points at its target
    hist = [[int(t) % 8 + 1] for t in targets]
    runs = []
    for _ in range(2):
        ro = Readout(6, 3, seed=1)
        info = fit_readout(ro, users, targets, hist, table, None, epochs=80, lr=0.05, weight_decay=0.0)
        runs.append((ro.proj.detach().clone(), info))
    (a, info), (b, _) = runs
    assert torch.equal(a, b)  # seeded init, full batch: the same fit twice
    assert info["loss_last"] < info["loss_first"] - 0.5
    assert info["loss_first"] == pytest.approx(torch.log(torch.tensor(8.0)).item() - 0.0, abs=0.2)
    assert ro.proj.grad is None


def test_params_check_the_readout_keys():
    raw = to_dict(tiny_params())
    with pytest.raises(ConfigError, match="readout.rank"):
        from_dict({**raw, "readout": {**raw["readout"], "rank": -1}}, "p.yaml")
    with pytest.raises(ConfigError, match="readout.rank > 0 needs"):
        from_dict({**raw, "readout": {**raw["readout"], "rank": 4, "train_users": 0}}, "p.yaml")
    with pytest.raises(ConfigError, match="would train nothing"):
        from_dict({**raw, "contrastive": {**raw["contrastive"], "steps": 0}}, "p.yaml")


def test_no_reasoning_run_fits_saves_and_scores_with_the_readout(ds, tmp_path):
    p = _with_readout(tiny_params(steps=1, eval_every=1, lr=1e-3))
    train_r2ec("r2ec_no_reasoning", ds, p, tmp_path / "r2ec_no_reasoning", tmp_path / "cache", progress=False,
               dvclive=False)
    run = tmp_path / "r2ec_no_reasoning"
    fit = json.loads((run / "readout_fit.json").read_text())
    assert fit["users"] == 6 and fit["loss_last"] < fit["loss_first"]
    assert list((tmp_path / "cache" / "user_states").glob("*.pt"))  # the base model's states are cached
    assert [json.loads(x)["step"] for x in open(run / "valid_log.jsonl")][0] == 0  # the fitted head is validated
    sd = torch.load(run / "best" / "readout.pt")
    assert sd["proj"].shape == (64, 2) and sd["user_std"].min() > 0

    tr = _Trainer("r2ec_no_reasoning", ds, p, run, tmp_path / "cache", False, False, None)
    tr.load_best()
    torch.testing.assert_close(tr.readout.proj.detach(), sd["proj"])
    user = torch.randn(3, 64)
    expect = tr.readout.scores(user, tr.table).detach()  # tiny params: no popularity prior
    torch.testing.assert_close(tr.scores_of(user), expect)

    # the reasoning variant inherits the fitted readout (projection and user stats) with the adapter
    pw = with_recpo(p, warm_start="r2ec_no_reasoning")
    pw = dataclasses.replace(pw, readout=p.readout)
    rt = _Trainer("r2ec", ds, pw, tmp_path / "r2ec", tmp_path / "cache", False, False, None)
    assert rt.on_fresh_start()
    for k, v in sd.items():
        torch.testing.assert_close(rt.readout.state_dict()[k], v)
    pr = dataclasses.replace(pw, readout=dataclasses.replace(p.readout, rank=3))
    bad = _Trainer("r2ec", ds, pr, tmp_path / "r2ec3", tmp_path / "cache", False, False, None)
    from r2ec.errors import UserError
    with pytest.raises(UserError, match="readout.rank"):
        bad.warm_start()


def test_readout_is_trained_by_the_steps_and_resumes_bit_identically(ds, tmp_path):
    p = _with_readout(tiny_params(steps=3, eval_every=3, lr=1e-2))
    straight = tmp_path / "straight"
    train_r2ec("r2ec_no_reasoning", ds, p, straight, None, progress=False, dvclive=False)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        train_r2ec("r2ec_no_reasoning", ds, p, killed, None, progress=False, dvclive=False, hook=kill_at(2))
    train_r2ec("r2ec_no_reasoning", ds, p, killed, None, progress=False, dvclive=False)
    a = torch.load(straight / "best" / "readout.pt")
    b = torch.load(killed / "best" / "readout.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    fit = torch.load(straight / "best" / "trainable.pt")["policy/r2ec_readout.proj"]
    torch.testing.assert_close(fit, a["proj"])
    st = json.loads((straight / "metrics.json").read_text())
    assert st == json.loads((killed / "metrics.json").read_text())


def test_a_fixed_readout_is_fitted_and_then_left_as_fitted_while_the_adapter_learns(ds, tmp_path):
    p = _with_readout(tiny_params(steps=2, eval_every=2, lr=1e-2), trainable=False)
    moved = []
    hook = lambda step, rec: moved.append(max(float(q.detach().abs().max()) for n, q in tr.policy.named_parameters()
                                              if "lora_B" in n))
    tr = _Trainer("r2ec_no_reasoning", ds, p, tmp_path / "fixed", None, False, False, hook)
    assert not any(q.requires_grad for q in tr.readout.parameters())
    assert not any(q is tr.readout.proj for q in tr.opt_params())
    tr.run()
    fit_info = json.loads((tmp_path / "fixed" / "readout_fit.json").read_text())
    assert fit_info["loss_last"] < fit_info["loss_first"]  # the fit still trains A
    assert not tr.readout.proj.requires_grad  # and hands it back fixed
    fit_only = _Trainer("r2ec_no_reasoning", ds, _with_readout(tiny_params(steps=0)), tmp_path / "fit_only", None,
                        False, False, None)
    fit_only.run()  # the same fit (seed, users, epochs), no steps
    torch.testing.assert_close(tr.readout.proj.detach(), fit_only.readout.proj.detach(), rtol=0, atol=0)
    assert len(moved) == 2 and moved[-1] > 0  # the adapter learned meanwhile
    assert ReadoutCfg().trainable is True


@pytest.mark.parametrize("use_cache", [True, False])
def test_distillation_fits_a_users_only_map_from_reasoning_states_to_the_fitted_projection(ds, tmp_path, use_cache):
    from r2ec.model.readout import distill_user_map
    p = _with_readout(tiny_params(steps=0))
    cache = tmp_path / "cache" if use_cache else None
    train_r2ec("r2ec_no_reasoning", ds, p, tmp_path / "r2ec_no_reasoning", cache, progress=False, dvclive=False)
    sd = torch.load(tmp_path / "r2ec_no_reasoning" / "best" / "readout.pt")
    pw = dataclasses.replace(with_recpo(p, warm_start="r2ec_no_reasoning"),
                             readout=dataclasses.replace(p.readout, distill_users=4, distill_ridge=0.5))
    rt = _Trainer("r2ec", ds, pw, tmp_path / "r2ec", cache, False, False, None)
    rt.on_fresh_start()
    info = json.loads((tmp_path / "r2ec" / "readout_distill.json").read_text())
    # an adapter still at the base model reads the teachers off the fitting stage's cache, if there is one
    assert info["users"] == 4 and info["teacher_cached"] == use_cache
    torch.testing.assert_close(rt.readout.proj.detach(), sd["proj"])  # the items keep the fitted projection
    assert not torch.allclose(rt.readout.user_proj, sd["proj"])
    # the same regression by hand: the readout's users-only map is ridge of reasoning states onto teachers
    from r2ec.model.readout_fit import seeded_train_rows
    fit_rows = seeded_train_rows(rt, 6, 13)
    rows = fit_rows[sorted(__import__("numpy").random.default_rng([2025, 17]).choice(6, 4, replace=False))]
    teacher = rt.user_vectors(rt.prompts_of(rows), None)
    student = rt.user_states(rows)
    from r2ec.model.readout import Readout
    ref = Readout(64, 2, 0, user_map=True)
    ref.load_state_dict(sd, strict=False)
    distill_user_map(ref, teacher, student, 0.5)
    torch.testing.assert_close(rt.readout.user_proj.detach(), ref.user_proj.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rt.readout.user_mean, student.mean(0))
    # saved with the run's best state and read back by a resumed/evaluated run
    rt.save_best_extra(tmp_path)
    assert "user_proj" in torch.load(tmp_path / "readout.pt")
    assert info["student_cached"] is False
    if use_cache:  # a second run from the same warm start reads the reasoning states back: the same map
        again = _Trainer("r2ec", ds, pw, tmp_path / "r2ec_again", cache, False, False, None)
        again.on_fresh_start()
        info2 = json.loads((tmp_path / "r2ec_again" / "readout_distill.json").read_text())
        assert info2["student_cached"] is True and info2["r2"] == pytest.approx(info["r2"], abs=1e-6)
        torch.testing.assert_close(again.readout.user_proj, rt.readout.user_proj, rtol=0, atol=0)
        # another warm-start adapter is another cache entry
        with torch.no_grad():
            next(q for n, q in again.policy.named_parameters() if "lora_B" in n).add_(0.01)
        from r2ec.model.readout_fit import adapter_digest
        assert adapter_digest(again.policy) != adapter_digest(rt.policy)


def test_distill_user_map_recovers_a_linear_relation():
    g = torch.Generator().manual_seed(0)
    ro = Readout(5, 2, seed=0, user_map=True)
    teacher = torch.randn(200, 5, generator=g)
    ro.set_user_stats(teacher)
    student = teacher @ torch.randn(5, 5, generator=g) + 3.0  # an invertible linear image of the teachers
    info = distill_user_map(ro, teacher, student, ridge=1e-6)
    assert info["r2"] > 0.999
    teacher_proj = ((teacher - teacher.mean(0)) / (teacher.std(0) + 1e-6)) @ ro.proj.detach()
    torch.testing.assert_close(ro.users(student).detach(), teacher_proj, rtol=1e-3, atol=1e-3)


def test_redistillation_refits_the_users_only_map_on_the_current_reasoning_before_each_validation(ds, tmp_path):
    from r2ec.model.readout import fit_user_map, teacher_projection
    from r2ec.model.readout_fit import distill_rows
    p = _with_readout(tiny_params(steps=0))
    train_r2ec("r2ec_no_reasoning", ds, p, tmp_path / "r2ec_no_reasoning", None, progress=False, dvclive=False)
    pw = dataclasses.replace(with_recpo(p, warm_start="r2ec_no_reasoning", steps=2, eval_every=2, lr=5e-2),
                             readout=dataclasses.replace(p.readout, distill_users=4, distill_ridge=0.5,
                                                         redistill=True))
    seen = {}

    def hook(step, rec):
        if step == 2:  # right after the step-2 validation: the map it used
            seen["user_proj"] = rt.readout.user_proj.detach().clone()
            seen["mean"] = rt.readout.user_mean.clone()
            seen["states"] = rt.user_states(distill_rows(rt)[0])
    rt = _Trainer("r2ec", ds, pw, tmp_path / "r2ec", None, False, False, hook)
    rt.run()
    lines = [json.loads(x) for x in (tmp_path / "r2ec" / "readout_redistill.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2] and lines[0]["users"] == 4  # never at step 0
    # the warm start's target: the teachers (no reasoning, base adapter) projected by the inherited readout
    sd = torch.load(tmp_path / "r2ec_no_reasoning" / "best" / "readout.pt")
    ref = Readout(64, 2, 0, user_map=True)
    ref.load_state_dict(sd, strict=False)
    teacher = _Trainer("r2ec_no_reasoning", ds, dataclasses.replace(p, readout=pw.readout), tmp_path / "teacher",
                       None, False, False, None)
    target = teacher_projection(ref, teacher.user_vectors(teacher.prompts_of(distill_rows(teacher)[0]), None))
    torch.testing.assert_close(rt.distill_target, target, rtol=1e-4, atol=1e-4)
    # the map of the step-2 validation is the ridge fit of step 2's reasoning states onto that target
    fit_user_map(ref, rt.distill_target, seen["states"], 0.5)
    torch.testing.assert_close(seen["user_proj"], ref.user_proj.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen["mean"], seen["states"].mean(0))
    # the target travels with the checkpoint, so a resumed run re-fits onto the same projections
    st = torch.load(tmp_path / "r2ec" / "last" / "state.pt", weights_only=False)
    torch.testing.assert_close(st["distill_target"], rt.distill_target)
    # killed after step 1 and resumed: the step-2 re-fit lands on the same map
    with pytest.raises(Killed):
        train_r2ec("r2ec", ds, pw, tmp_path / "killed", None, progress=False, dvclive=False, hook=kill_at(1))
    train_r2ec("r2ec", ds, pw, tmp_path / "killed", None, progress=False, dvclive=False)
    a, b = (torch.load(d / "best" / "readout.pt") for d in (tmp_path / "r2ec", tmp_path / "killed"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
