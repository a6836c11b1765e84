"""Sampling that records the behavior log-prob: greedy, temperature, top-p, seeds, validation."""

import math

import pytest
import torch

from core.sampling import SamplingParams, behavior_logprobs, processed_logprobs, sample_token

LOGITS = torch.tensor([1.0, 3.0, 0.5, 2.0, -1.0])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_is_a_point_mass_at_argmax():
    lp = processed_logprobs(LOGITS, SamplingParams(temperature=0))
    assert lp[1].item() == 0.0
    assert torch.isinf(lp[[0, 2, 3, 4]]).all() and (lp[[0, 2, 3, 4]] < 0).all()
    tok, logp = sample_token(LOGITS, SamplingParams(temperature=0), None)
    assert (tok, logp) == (1, 0.0)


def test_greedy_batched_rows():
    logits = torch.tensor([[0.0, 5.0, 1.0], [9.0, 1.0, 2.0]])
    lp = processed_logprobs(logits, SamplingParams(temperature=0))
    assert lp.exp().tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_temperature_scales_logits():
    for t in (0.5, 1.0, 2.0):
        lp = processed_logprobs(LOGITS, SamplingParams(temperature=t, top_p=1.0))
        assert torch.allclose(lp, torch.log_softmax(LOGITS / t, -1), atol=1e-6)
    sharp = processed_logprobs(LOGITS, SamplingParams(temperature=0.5, top_p=1.0)).exp()
    flat = processed_logprobs(LOGITS, SamplingParams(temperature=2.0, top_p=1.0)).exp()
    assert sharp[1] > flat[1] and sharp[4] < flat[4]


def test_top_p_keeps_smallest_nucleus_hand_example():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    probs = processed_logprobs(logits, SamplingParams(temperature=1.0, top_p=0.8)).exp()
    assert torch.allclose(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=1e-6)


def test_top_p_order_does_not_matter_and_first_is_always_kept():
    logits = torch.tensor([0.05, 0.3, 0.5, 0.15]).log()  # same example, shuffled
    probs = processed_logprobs(logits, SamplingParams(temperature=1.0, top_p=0.8)).exp()
    assert torch.allclose(probs, torch.tensor([0.0, 0.375, 0.625, 0.0]), atol=1e-6)
    tiny = processed_logprobs(logits, SamplingParams(temperature=1.0, top_p=0.01)).exp()
    assert torch.allclose(tiny, torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_top_p_just_above_boundary_adds_next_token():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    probs = processed_logprobs(logits, SamplingParams(temperature=1.0, top_p=0.85)).exp()
    assert (probs > 0).tolist() == [True, True, True, False]
    assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-6)
    assert math.isclose(probs[0].item(), 0.5 / 0.95, rel_tol=1e-5)


def test_sample_token_returns_logprob_under_processed_distribution():
    params = SamplingParams(temperature=0.8, top_p=0.7)
    lp = processed_logprobs(LOGITS, params)
    g = gen(123)
    for _ in range(50):
        tok, logp = sample_token(LOGITS, params, g)
        assert math.isfinite(logp)  # never a token outside the nucleus
        assert logp == pytest.approx(lp[tok].item())
        # and it differs from the raw softmax: the recorded prob is the processed one
        assert logp != pytest.approx(torch.log_softmax(LOGITS, -1)[tok].item(), abs=1e-3)


def test_same_seed_same_tokens_different_seed_differs():
    params = SamplingParams(temperature=1.5, top_p=1.0)
    logits = torch.zeros(50)  # uniform over 50: sequences of 30 draws collide only by chance

    def draw(seed):
        g = gen(seed)
        return [sample_token(logits, params, g) for _ in range(30)]

    assert draw(7) == draw(7)
    assert [t for t, _ in draw(7)] != [t for t, _ in draw(8)]


def test_behavior_logprobs_matches_per_position():
    torch.manual_seed(0)
    logits = torch.randn(6, 11)
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=3)
    g = gen(params.seed)
    toks, recorded = zip(*(sample_token(logits[i], params, g) for i in range(6)))
    again = behavior_logprobs(logits, torch.tensor(toks), params)
    assert again.shape == (6,)
    assert torch.allclose(again, torch.tensor(recorded), atol=1e-6)
    for i, t in enumerate(toks):
        assert again[i].item() == pytest.approx(processed_logprobs(logits[i], params)[t].item())


def test_behavior_logprobs_greedy_and_outside_nucleus():
    logits = torch.tensor([[0.0, 4.0, 1.0], [2.0, 0.0, 0.0]])
    greedy = behavior_logprobs(logits, torch.tensor([1, 1]), SamplingParams(temperature=0))
    assert greedy[0].item() == 0.0 and greedy[1].item() == float("-inf")


def test_bf16_logits_are_processed_in_float32():
    lp = processed_logprobs(LOGITS.bfloat16(), SamplingParams(temperature=1.0, top_p=1.0))
    assert lp.dtype == torch.float32


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_params_validation_names_field_and_value(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        SamplingParams(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_nan_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=float("nan"))


def test_params_greedy_and_to_dict():
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy
    assert SamplingParams(seed=5).to_dict() == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256, "seed": 5}
