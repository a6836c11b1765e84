"""Loss functions on small hand-computed examples."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from learner.losses import (
    LossWeights,
    advantages,
    clipped_pg_loss,
    dpo_loss,
    kl_penalty,
    kto_loss,
    sequence_logprobs,
    sft_loss,
    total_loss,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- sequence_logprobs ----------------------------------------------------------------------


def test_sequence_logprobs_matches_log_softmax_and_zeroes_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)  # [B,T,V]
    targets = torch.tensor([[1, 4, 0], [2, -100, -100]])  # padding holds an invalid id
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    logp = sequence_logprobs(logits, targets, mask)
    full = torch.log_softmax(logits, dim=-1)
    assert logp.shape == (2, 3)
    assert torch.allclose(logp[0], full[0, torch.arange(3), targets[0]])
    assert torch.isclose(logp[1, 0], full[1, 0, 2])
    assert torch.equal(logp[1, 1:], torch.zeros(2))


def test_sequence_logprobs_hand_value():
    # two equal logits: each token has probability 1/2
    logits = torch.zeros(1, 1, 2)
    logp = sequence_logprobs(logits, torch.tensor([[1]]), torch.ones(1, 1))
    assert logp.item() == pytest.approx(math.log(0.5))


# --- advantages ------------------------------------------------------------------------------


def test_advantages_are_centred_and_normalised():
    adv = advantages(torch.tensor([1.0, 0.0, -1.0, 2.0]))
    # centred [.5, -.5, -1.5, 1.5], population std sqrt(1.25)
    expected = torch.tensor([0.5, -0.5, -1.5, 1.5]) / math.sqrt(1.25)
    assert torch.allclose(adv, expected)
    assert adv.mean().abs() < 1e-6
    assert adv.std(correction=0).item() == pytest.approx(1.0)


def test_advantages_with_running_baseline_and_no_normalisation():
    adv = advantages(torch.tensor([1.0, 1.0, 0.5]), baseline=0.25, normalize=False)
    # an all-positive batch keeps positive advantages against a low running mean
    assert torch.allclose(adv, torch.tensor([0.75, 0.75, 0.25]))


def test_advantages_against_a_fixed_baseline_are_scaled_by_their_rms_not_the_reward_spread():
    adv = advantages(torch.tensor([0.9, 0.7, 0.8, 0.6]), baseline=0.0)
    rms = math.sqrt((0.81 + 0.49 + 0.64 + 0.36) / 4)
    assert torch.allclose(adv, torch.tensor([0.9, 0.7, 0.8, 0.6]) / rms)   # ~1 each, not ~7 (std 0.11)
    assert adv.pow(2).mean().item() == pytest.approx(1.0)
    # a given scale (one for the whole run) replaces this batch's RMS, even for one reply
    assert torch.allclose(advantages(torch.tensor([1.0, 0.0]), baseline=0.0, scale=2.0), torch.tensor([0.5, 0.0]))
    assert torch.allclose(advantages(torch.tensor([0.7]), baseline=0.2, scale=0.5), torch.tensor([1.0]))


def test_advantages_skip_normalisation_for_single_or_constant_batches():
    assert torch.equal(advantages(torch.tensor([0.7])), torch.zeros(1))
    assert torch.allclose(advantages(torch.tensor([0.7]), baseline=0.2), torch.tensor([0.5]))
    const = advantages(torch.tensor([0.3, 0.3, 0.3]))
    assert torch.isfinite(const).all() and torch.equal(const, torch.zeros(3))


def test_advantages_carry_no_gradient():
    rewards = torch.tensor([1.0, -1.0], requires_grad=True)
    assert not advantages(rewards).requires_grad


# --- clipped policy gradient -----------------------------------------------------------------


def test_ratio_one_gives_plain_policy_gradient():
    g = torch.Generator().manual_seed(1)
    logp = (torch.randn(3, 4, generator=g) - 2.0).requires_grad_()  # [B,T]
    adv = torch.tensor([1.5, -0.5, 0.25])  # [B]
    mask = torch.ones(3, 4)

    loss, stats = clipped_pg_loss(logp, logp.detach(), adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)

    ref = logp.detach().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(-(ref * adv[:, None]).mean(), ref)
    assert torch.allclose(grad, ref_grad)
    assert stats["clip_frac"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)


def test_clipping_hand_example():
    # eps 0.2. Row 0 has A=+1, row 1 has A=-1. Ratios:
    #   row 0: 1.5 (clipped to 1.2, pessimistic side -> no gradient), 1.0 (gradient)
    #   row 1: 0.5 (clipped to 0.8, pessimistic side -> no gradient), 1.5 (A<0: unclipped -1.5
    #          is the smaller, so it keeps its gradient)
    ratios = torch.tensor([[1.5, 1.0], [0.5, 1.5]])
    behavior = torch.full((2, 2), math.log(0.5))
    new = (behavior + ratios.log()).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    loss, stats = clipped_pg_loss(new, behavior, adv, torch.ones(2, 2), eps=0.2)
    # objective terms 1.2, 1.0, -0.8, -1.5 -> loss = -(-0.1)/4
    assert loss.item() == pytest.approx(0.025)
    (grad,) = torch.autograd.grad(loss, new)
    # d(-ratio*A/4)/dlogp = -ratio*A/4 where unclipped, 0 where clipped
    expected = torch.tensor([[0.0, -0.25], [0.0, 0.375]])
    assert torch.allclose(grad, expected)
    assert stats["clip_frac"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx(1.125)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 1.0, 0.5, 1.5)]
    assert stats["approx_kl"] == pytest.approx(sum(k3) / 4, rel=1e-5)


def test_clipping_does_not_trigger_inside_eps():
    behavior = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.1, 0.9]])).requires_grad_()
    loss, stats = clipped_pg_loss(new, behavior, torch.tensor([2.0]), torch.ones(1, 2), eps=0.2)
    (grad,) = torch.autograd.grad(loss, new)
    assert stats["clip_frac"] == 0.0
    assert torch.allclose(grad, torch.tensor([[-1.1, -0.9]]))  # -ratio*A/2


def test_pg_reply_reduce_weighs_every_reply_the_same():
    # ratio 1 everywhere. Row 0: 1 real token, A=+1; row 1: 3 real tokens, A=-1; row 2: all padding.
    # token mean: each of the 4 tokens weighs 1/4; reply mean: row 0's token 1/2, row 1's 1/6 each.
    new = torch.zeros(3, 3, requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 0]])
    adv = torch.tensor([1.0, -1.0, 5.0])
    (g_tok,) = torch.autograd.grad(clipped_pg_loss(new, new.detach(), adv, mask)[0], new)
    loss, _ = clipped_pg_loss(new, new.detach(), adv, mask, reduce="reply")
    (g_rep,) = torch.autograd.grad(loss, new)
    assert loss.item() == pytest.approx(0.0)  # -(1/2)(+1 + -1)
    assert torch.allclose(g_tok, torch.tensor([[-0.25, 0, 0], [0.25, 0.25, 0.25], [0, 0, 0]]))
    assert torch.allclose(g_rep, torch.tensor([[-0.5, 0, 0], [1 / 6, 1 / 6, 1 / 6], [0, 0, 0]]))
    with pytest.raises(ValueError, match="reduce"):
        clipped_pg_loss(new, new.detach(), adv, mask, reduce="sum")


def test_pg_padding_is_ignored():
    behavior = torch.tensor([[-1.0, -1.0]])
    new = torch.tensor([[-1.0, 50.0]], requires_grad=True)  # huge garbage on the padded token
    mask = torch.tensor([[1, 0]])
    loss, stats = clipped_pg_loss(new, behavior, torch.tensor([1.0]), mask)
    (grad,) = torch.autograd.grad(loss, new)
    assert loss.item() == pytest.approx(-1.0)
    assert grad[0, 1] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)


# --- KL penalty ------------------------------------------------------------------------------


def test_kl_is_zero_when_policy_equals_reference():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    kl = kl_penalty(logp, logp.detach().clone(), torch.ones(1, 3))
    (grad,) = torch.autograd.grad(kl, logp)
    assert kl.item() == 0.0
    assert torch.equal(grad, torch.zeros(1, 3))  # a minimum: no push


def test_kl_hand_value_and_masking():
    pol = torch.log(torch.tensor([[0.5, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.1]]))
    mask = torch.tensor([[1, 0]])
    # d = log(0.25/0.5); exp(d) - d - 1 = 0.5 + log 2 - 1
    assert kl_penalty(pol, ref, mask).item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)


def test_kl_positive_when_different():
    g = torch.Generator().manual_seed(2)
    pol = torch.randn(2, 5, generator=g)
    ref = torch.randn(2, 5, generator=g)
    assert kl_penalty(pol, ref, torch.ones(2, 5)).item() > 0


# --- SFT -------------------------------------------------------------------------------------


def test_sft_equals_cross_entropy_on_selected_rows():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 7, generator=g)  # [B,T,V]
    targets = torch.randint(0, 7, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    selected = torch.tensor([True, False, True])
    loss = sft_loss(sequence_logprobs(logits, targets, mask), mask, selected)

    ce_targets = targets.masked_fill(mask == 0, -100)
    expected = F.cross_entropy(
        logits[selected].reshape(-1, 7), ce_targets[selected].reshape(-1), ignore_index=-100
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_sft_float_weights_weight_rows():
    logp = torch.tensor([[-1.0, -1.0], [-4.0, -4.0]])
    loss = sft_loss(logp, torch.ones(2, 2), torch.tensor([1.0, 0.5]))
    # (2*1*1 + 2*0.5*4) / (2*1 + 2*0.5) = 6 / 3
    assert loss.item() == pytest.approx(2.0)


def test_sft_with_nothing_selected_is_zero_and_backpropagates():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = sft_loss(logp, torch.ones(1, 2), torch.tensor([False]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(1, 2))


# --- KTO -------------------------------------------------------------------------------------


def test_kto_hand_values():
    policy = torch.tensor([-10.0, -12.0])
    ref = torch.tensor([-11.0, -11.0])
    desirable = torch.tensor([True, False])
    loss, stats = kto_loss(policy, ref, desirable, beta=0.1, lambda_u=2.0, kl_ref=0.5)
    # row 0: logratio +1, 1 - sigmoid(0.1*(1 - 0.5));  row 1: logratio -1,
    # 2*(1 - sigmoid(0.1*(0.5 + 1)))
    d = 1 - _sigmoid(0.05)
    u = 2 * (1 - _sigmoid(0.15))
    assert loss.item() == pytest.approx((d + u) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(0.706321, abs=1e-6)
    assert stats["chosen_reward"] == pytest.approx(0.1)
    assert stats["rejected_reward"] == pytest.approx(-0.1)
    assert stats["kl_ref"] == pytest.approx(0.5)


def test_kto_pushes_desirable_up_and_undesirable_down():
    policy = torch.tensor([-10.0, -10.0], requires_grad=True)
    loss, _ = kto_loss(policy, torch.tensor([-10.0, -10.0]), torch.tensor([True, False]))
    (grad,) = torch.autograd.grad(loss, policy)
    assert grad[0] < 0 < grad[1]  # descent raises the desirable, lowers the undesirable


def test_kto_reference_point_is_clamped_and_not_trained():
    kl = torch.tensor(-3.0, requires_grad=True)
    policy = torch.tensor([-1.0], requires_grad=True)
    loss, stats = kto_loss(policy, torch.tensor([-1.0]), torch.tensor([True]), kl_ref=kl)
    assert stats["kl_ref"] == 0.0
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert policy.grad is not None and kl.grad is None


# --- DPO -------------------------------------------------------------------------------------


def test_dpo_hand_values():
    pc = torch.tensor([-5.0, -8.0])
    pr = torch.tensor([-7.0, -6.0])
    rc = torch.tensor([-6.0, -6.0])
    rr = torch.tensor([-6.0, -6.0])
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # logits 0.1*(1 - -1) = 0.2 and 0.1*(-2 - 0) = -0.2
    expected = (math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.698139, abs=1e-6)
    assert stats["reward_accuracy"] == pytest.approx(0.5)
    assert stats["chosen_reward"] == pytest.approx((0.1 - 0.2) / 2)
    assert stats["rejected_reward"] == pytest.approx((-0.1 + 0.0) / 2)
    assert stats["reward_margin"] == pytest.approx(0.0, abs=1e-7)


def test_dpo_equal_logratios_give_log2():
    z = torch.zeros(3)
    loss, stats = dpo_loss(z, z, z, z)
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["reward_accuracy"] == 0.0  # ties are not counted as correct


# --- weights and total -----------------------------------------------------------------------


def test_loss_weights_defaults_and_help():
    w = LossWeights()
    assert (w.pg, w.kl, w.sft, w.kto, w.dpo) == (0.0, 0.0, 0.0, 1.0, 0.0)   # chosen on the learning bench
    for f in dataclasses.fields(LossWeights):
        assert f.metadata.get("help"), f"{f.name} has no help"
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.pg = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_loss_weights_reject_bad_values_naming_field_and_value(bad):
    with pytest.raises(ValueError, match=r"LossWeights\.kl .*" + repr(bad).replace("(", r"\(")):
        LossWeights(kl=bad)


def test_loss_weights_reject_all_zero_and_non_numbers():
    with pytest.raises(ValueError, match="all 0"):
        LossWeights(kto=0)
    with pytest.raises(TypeError, match="sft"):
        LossWeights(sft="0.1")  # type: ignore[arg-type]


def test_total_loss_hand_sum_and_skips_zero_weights():
    parts = {
        "pg": torch.tensor(2.0),
        "kl": torch.tensor(4.0),
        "sft": torch.tensor(1.0),
        "dpo": torch.tensor(float("nan")),  # weight 0: must not poison the sum
    }
    total = total_loss(parts, LossWeights(pg=1.0, kl=0.5, sft=0.1, kto=0.0, dpo=0.0))
    assert total.item() == pytest.approx(2.0 + 2.0 + 0.1)


def test_total_loss_rejects_unknown_missing_and_non_scalar_parts():
    with pytest.raises(KeyError, match="ppo"):
        total_loss({"ppo": torch.tensor(1.0)}, LossWeights())
    pg_mix = LossWeights(pg=1.0, kl=0.05, sft=0.1, kto=0.0)
    with pytest.raises(KeyError, match="kl"):
        total_loss({"pg": torch.tensor(1.0), "sft": torch.tensor(1.0)}, pg_mix)
    with pytest.raises(ValueError, match="pg"):
        total_loss({"pg": torch.ones(2)}, LossWeights(pg=1.0, kto=0.0))


def test_total_loss_backpropagates_to_every_weighted_part():
    x = torch.tensor(1.0, requires_grad=True)
    total = total_loss({"pg": 3 * x, "kl": x * x, "sft": x}, LossWeights(pg=1.0, kl=0.05, sft=0.1, kto=0.0))
    total.backward()
    assert x.grad.item() == pytest.approx(3.0 + 0.05 * 2.0 + 0.1)
