"""RecPO rewards, advantages and losses on hand-computed literal inputs."""

import math

import pytest
import torch

from r2ec.recpo.advantages import advantages, grpo_advantages, rloo_advantages
from r2ec.recpo.losses import best_trajectory_mask, clipped_item_loss, clipped_surrogate, clipped_token_loss, kl_penalty
from r2ec.train.losses import catalogue_target_logprob, in_batch_labels, in_batch_target_logprob
from r2ec.recpo.rewards import fused_reward, mask_history, ndcg_reward, rewards_from_scores, softmax_prob_reward


# ---------------------------------------------------------------------------------------------- rewards
def test_ndcg_reward_literals():
    r = ndcg_reward(torch.tensor([1, 3, 7, 8, 1000]), k_r=7)
    assert r.tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.0, 0.0])


def test_softmax_prob_reward_literals():
    scores = torch.tensor([[float("-inf"), 0.0, math.log(3.0)], [float("-inf"), 1.0, 1.0]])
    p = softmax_prob_reward(scores, torch.tensor([2, 1]))
    assert p.tolist() == pytest.approx([0.75, 0.5])


def test_fused_reward_literals():
    scores = torch.tensor([[float("-inf"), 0.0, math.log(3.0)]])
    r, rd, rc = fused_reward(torch.tensor([3]), scores, torch.tensor([2]), beta=0.2, k_r=10)
    assert rd.item() == pytest.approx(0.5) and rc.item() == pytest.approx(0.75)
    assert r.item() == pytest.approx(0.8 * 0.5 + 0.2 * 0.75)
    r1, _, _ = fused_reward(torch.tensor([3]), scores, torch.tensor([2]), beta=1.0, k_r=10)
    r0, _, _ = fused_reward(torch.tensor([3]), scores, torch.tensor([2]), beta=0.0, k_r=10)
    assert r1.item() == pytest.approx(0.75) and r0.item() == pytest.approx(0.5)


def test_rewards_from_scores_masks_history_but_keeps_target():
    # items 1..4; scores: item 3 best, then 4, 2, 1. history [3] -> item 3 masked, target 2 ranks behind 4 only.
    scores = torch.tensor([[9.0, 1.0, 2.0, 4.0, 3.0]])
    r, rd, rc, ranks = rewards_from_scores(scores, torch.tensor([2]), [[3]], beta=0.5, k_r=10)
    assert ranks.tolist() == [2]
    assert rd.item() == pytest.approx(1 / math.log2(3))
    z = math.exp(1) + math.exp(2) + math.exp(3)
    assert rc.item() == pytest.approx(math.exp(2) / z)
    # a target that repeats a history item stays rankable in the training reward
    _, _, _, ranks = rewards_from_scores(scores, torch.tensor([3]), [[3, 4]], beta=0.5, k_r=10)
    assert ranks.tolist() == [1]
    s = mask_history(scores, torch.tensor([3]), [[3, 4]])
    assert s[0, 0] == float("-inf") and s[0, 4] == float("-inf") and s[0, 3] == 4.0


def test_tied_scores_rank_against_target():
    _, rd, _, ranks = rewards_from_scores(torch.zeros(1, 5), torch.tensor([1]), [[]], beta=0.0, k_r=10)
    assert ranks.tolist() == [4]


# ---------------------------------------------------------------------------------------------- advantages
def test_grpo_literals():
    a = grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]))
    std = math.sqrt(5 / 3)  # unbiased std of 1,2,3,4
    assert a[0].tolist() == pytest.approx([x / (std + 1e-4) for x in (-1.5, -0.5, 0.5, 1.5)])
    assert a[1].tolist() == [0.0] * 4


def test_rloo_literals():
    a = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    # r_i - mean(others): 1-11/3, 2-10/3, 3-9/3, 6-6/3
    assert a[0].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0])
    assert advantages(torch.tensor([[1.0, 3.0]]), "rloo").tolist() == [[-2.0, 2.0]]
    with pytest.raises(ValueError):
        advantages(torch.tensor([[1.0, 3.0]]), "ppo")


# ---------------------------------------------------------------------------------------------- losses
def test_clipped_surrogate_literals():
    ratio = torch.tensor([1.0, 1.5, 1.5, 0.5, 0.5, 1.1])
    adv = torch.tensor([2.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    out = clipped_surrogate(ratio, adv, 0.2, 0.28)
    # 1.5 with A>0 clipped to 1.28; 1.5 with A<0 not clipped (-1.5 is the min); 0.5 A>0 unclipped (0.5);
    # 0.5 A<0 clipped to 0.8 -> min(-0.5, -0.8) = -0.8
    assert out.tolist() == pytest.approx([-2.0, -1.28, 1.5, -0.5, 0.8, -1.1])


def test_token_loss_is_token_mean_and_clip_kills_gradient():
    old = torch.zeros(2, 3)
    new = torch.log(torch.tensor([[1.0, 1.5, 1.0], [0.5, 1.0, 9.0]])).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = clipped_token_loss(new, old, adv, mask, 0.2, 0.28)
    # per-token: -1, -1.28 (clipped), -1 | +0.8 (clipped), +1, (masked)  -> sum -1.48 over 5 tokens
    assert loss.item() == pytest.approx(-1.48 / 5)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    loss.backward()
    g = new.grad
    assert g[0, 1] == 0 and g[1, 0] == 0 and g[1, 2] == 0  # clipped tokens and the masked one get no gradient
    assert g[0, 0] == pytest.approx(-1 / 5) and g[1, 1] == pytest.approx(1 / 5)


def test_token_loss_ratio_one_is_policy_gradient():
    new = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, stats = clipped_token_loss(new, new.detach().clone(), torch.tensor([0.5]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-0.5) and stats["ratio_mean"] == pytest.approx(1.0)


def test_catalogue_logprob_literals_masks_history_but_keeps_target():
    s = torch.tensor([[float("-inf"), 1.0, 2.0, 3.0], [float("-inf"), 0.0, 0.0, 0.0]])
    lp = catalogue_target_logprob(s, torch.tensor([2, 1]), [[3, 2], []])
    # row 0: item 3 is history (masked), target 2 stays -> log(e^2 / (e^1 + e^2)); row 1: uniform over 3 items
    assert lp[0].item() == pytest.approx(2 - math.log(math.e + math.e ** 2))
    assert lp[1].item() == pytest.approx(-math.log(3))
    assert catalogue_target_logprob(s, torch.tensor([2, 1]))[0].item() == pytest.approx(
        2 - math.log(math.e + math.e ** 2 + math.e ** 3))


def test_in_batch_logprob_and_labels():
    uniq, labels = in_batch_labels([7, 3, 7, 5])
    assert uniq == [7, 3, 5] and labels.tolist() == [0, 1, 0, 2]
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    lp = in_batch_target_logprob(u, v, torch.tensor([0, 0]), tau=0.5)
    # row 0: cos = [1, 0] -> logits [2, 0]; row 1: cos = [0, 1] -> logits [0, 2]
    assert lp.tolist() == pytest.approx([2 - math.log(math.exp(2) + 1), 0 - math.log(1 + math.exp(2))])


def test_item_loss_literals():
    new = torch.log(torch.tensor([0.6, 0.1]))
    old = torch.log(torch.tensor([0.3, 0.2]))
    loss, stats = clipped_item_loss(new, old, torch.tensor([1.0, 1.0]), 0.2, 0.28)
    # ratios 2.0 (-> 1.28), 0.5 -> mean(-1.28, -0.5)
    assert loss.item() == pytest.approx(-(1.28 + 0.5) / 2)
    assert stats["item_clip_frac"] == pytest.approx(0.5)
    empty, _ = clipped_item_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0))
    assert empty.item() == 0.0


def test_kl_k3_literals():
    new = torch.tensor([[0.0, math.log(2.0)]])
    ref = torch.tensor([[0.0, 0.0]])
    d = -math.log(2.0)
    assert kl_penalty(new, ref, torch.ones(1, 2)).item() == pytest.approx((math.exp(d) - d - 1) / 2)
    assert kl_penalty(ref, ref, torch.ones(1, 2)).item() == 0.0


def test_best_trajectory_gating():
    r = torch.tensor([[0.1, 0.9, 0.3, 0.9], [0.5, 0.2, 0.7, 0.1]])
    m = best_trajectory_mask(r, 1)
    assert m.tolist() == [[False, True, False, False], [False, False, True, False]]  # argmax, ties -> first
    m2 = best_trajectory_mask(r, 2)
    assert m2.tolist() == [[False, True, False, True], [True, False, True, False]]
    with pytest.raises(ValueError):
        best_trajectory_mask(r, 5)


# ---------------------------------------------------------------------------------------------- diagnostics
def test_flat_group_frac_literals():
    from r2ec.recpo.diagnostics import flat_group_frac
    R = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [1.0, 1.0, 0.9]])
    assert flat_group_frac(R) == pytest.approx(0.5)
    assert flat_group_frac(torch.zeros(0, 3)) == 0.0
    with pytest.raises(ValueError):
        flat_group_frac(torch.zeros(4))


def test_clip_fraction_and_ratio_on_literal_ratios():
    # ratios exp(new - old) = [0.5, 1.0, 1.5] (x2 trajectories); eps 0.2 / 0.28
    ratio = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]])
    new, old = ratio.log(), torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # A = +1: only 1.5 > 1.28 is clipped; A = -1: only 0.5 < 0.8 is clipped (the masked 1.5 does not count)
    _, st = clipped_token_loss(new, old, torch.tensor([1.0, -1.0]), mask, 0.2, 0.28)
    assert st["clip_frac"] == pytest.approx(2 / 5)
    assert st["ratio_mean"] == pytest.approx((0.5 + 1.0 + 1.5 + 0.5 + 1.0) / 5)


def test_k3_kl_and_masked_mean_literals():
    from r2ec.recpo.diagnostics import k3_kl, masked_mean, mean_std
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    d = math.log(0.5)  # ref - logp at the first token
    assert k3_kl(logp, ref, torch.tensor([[1.0, 1.0]])) == pytest.approx((math.exp(d) - d - 1) / 2)
    assert k3_kl(logp, logp, torch.ones(1, 2)) == 0.0
    assert masked_mean(torch.tensor([[1.0, 5.0, 3.0]]), torch.tensor([[1.0, 0.0, 1.0]])) == pytest.approx(2.0)
    assert masked_mean(torch.ones(1, 2), torch.zeros(1, 2)) == 0.0
    ms = mean_std("r", torch.tensor([1.0, 3.0]))
    assert ms == {"r": pytest.approx(2.0), "r_std": pytest.approx(math.sqrt(2.0))}
    assert mean_std("r", torch.tensor([1.0]))["r_std"] == 0.0


def test_shuffled_advantages_is_a_seeded_permutation_and_keeps_the_global_stream():
    from r2ec.recpo.diagnostics import shuffled_advantages
    adv = torch.arange(12, dtype=torch.float32)
    torch.manual_seed(0)
    a, perm = shuffled_advantages(adv, 7)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)  # the global stream was not consumed
    assert sorted(a.tolist()) == adv.tolist() and not torch.equal(a, adv)
    assert torch.equal(a, adv[perm])
    assert torch.equal(shuffled_advantages(adv, 7)[0], a) and not torch.equal(shuffled_advantages(adv, 8)[0], a)

