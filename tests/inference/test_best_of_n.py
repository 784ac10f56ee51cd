import pytest
import torch

from diffalign.inference import best_of_n, make_reward, rejection_sample, sample_images
from diffalign.inference.best_of_n import candidate_seed

from .conftest import mean_red, toy_reward

PROMPTS = ["cat", "dog", "car", "cat"]
SEEDS = [0, 1, 2, 3]


def test_best_of_n_beats_plain_sampling_at_the_same_seeds(toy):
    plain = sample_images(toy, PROMPTS, SEEDS)
    plain_r = toy_reward(plain.decoded, PROMPTS)
    res = best_of_n(toy, PROMPTS, SEEDS, toy_reward, n=6, batch_size=5, progress=False)
    assert torch.allclose(res.plain_rewards, plain_r)          # candidate 0 is the plain sample
    assert (res.rewards >= plain_r - 1e-6).all() and res.rewards.mean() > plain_r.mean() + 0.5
    # the chosen sample is what plain sampling gives at the chosen seed, and its reward is the stored one
    again = sample_images(toy, PROMPTS, res.seeds)
    assert torch.allclose(again.x0, res.x0, atol=1e-6)
    assert torch.allclose(toy_reward(res.decoded, PROMPTS), res.rewards, atol=1e-5)
    assert res.evaluations == 6 * plain.evaluations and (res.candidates == 6).all()
    # the reward is the max over the same candidates drawn one by one
    for b in range(len(PROMPTS)):
        cands = sample_images(toy, [PROMPTS[b]] * 6, [candidate_seed(SEEDS[b], k) for k in range(6)])
        assert torch.isclose(toy_reward(cands.decoded, [PROMPTS[b]] * 6).max(), res.rewards[b], atol=1e-5)


def test_rejection_sampling_stops_at_the_threshold(toy):
    plain_r = toy_reward(sample_images(toy, PROMPTS, SEEDS).decoded, PROMPTS)
    threshold = float(plain_r.median())
    res = rejection_sample(toy, PROMPTS, SEEDS, toy_reward, threshold, max_samples=20, progress=False)
    assert res.accepted.all() and (res.rewards >= threshold).all()
    per_sample = toy.rule.num_steps * 2
    assert res.evaluations == int(res.candidates.sum()) * per_sample < 20 * len(PROMPTS) * per_sample
    assert (res.candidates[plain_r >= threshold] == 1).all()   # already good: the plain sample is kept
    never = rejection_sample(toy, PROMPTS[:2], SEEDS[:2], toy_reward, 1e9, max_samples=3, progress=False)
    assert not never.accepted.any() and (never.candidates == 3).all()


def test_best_of_n_on_images_and_a_weighted_reward(image):
    prompts, seeds = ["a cat", "a dog"], [7, 8]
    reward = make_reward([{"name": "brightness", "weight": 2.0}, mean_red,
                          {"name": "brightness", "weight": 0.5, "normalize": "fixed", "mean": 0.5, "std": 0.1}],
                         image.adapter)
    plain = sample_images(image, prompts, seeds)
    bright = plain.decoded.mean(dim=(1, 2, 3))
    expected = 2 * bright + mean_red(plain.decoded, prompts) + 0.5 * (bright - 0.5) / 0.1
    assert torch.allclose(reward(plain.decoded, prompts), expected, atol=1e-6)
    res = best_of_n(image, prompts, seeds, reward, n=4, progress=False)
    assert (res.rewards >= res.plain_rewards).all() and res.rewards.sum() > res.plain_rewards.sum()


def test_bad_inputs_name_the_problem(toy):
    with pytest.raises(ValueError, match="budget"):
        best_of_n(toy, PROMPTS, SEEDS, toy_reward, n=0)
    with pytest.raises(ValueError, match="seeds"):
        best_of_n(toy, PROMPTS, SEEDS[:2], toy_reward, n=2)
    with pytest.raises(ValueError, match="unknown"):
        make_reward("no_such_reward")
