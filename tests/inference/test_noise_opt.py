import math

import pytest
import torch
from scipy import stats

from diffalign.inference import NoiseOptConfig, optimize_noise, sample_images, shell_ratio
from diffalign.inference.noise_opt import chi2_regularizer, norm_regularizer

from .conftest import mean_red, toy_reward

PROMPTS = ["cat", "dog", "car", "cat"]
SEEDS = [10, 11, 12, 13]


def test_chi2_regularizer_is_the_shifted_chi2_negative_log_likelihood():
    d = 40
    scales = torch.tensor([0.5, 0.9, 1.0, 1.3, 2.0], dtype=torch.float64)[:, None, None]
    x = torch.randn(5, 4, 10, dtype=torch.float64) * scales
    r2 = x.reshape(5, -1).pow(2).sum(1).numpy()
    expected = -stats.chi2.logpdf(r2, d) + stats.chi2.logpdf(d - 2, d)  # 0 at the mode d - 2
    assert torch.allclose(chi2_regularizer(x), torch.from_numpy(expected), rtol=1e-9, atol=1e-9)
    on_mode = torch.full((1, d), math.sqrt((d - 2) / d), dtype=torch.float64)
    assert chi2_regularizer(on_mode).abs().item() < 1e-9
    assert torch.allclose(norm_regularizer(x), (torch.from_numpy(r2).sqrt() - math.sqrt(d)) ** 2)
    assert torch.allclose(shell_ratio(x), torch.from_numpy(r2).sqrt() / math.sqrt(d))


@pytest.mark.parametrize("regularizer", ["chi2", "norm"])
def test_noise_opt_raises_the_toy_reward_and_stays_on_the_shell(toy, regularizer):
    cfg = NoiseOptConfig(iterations=15, lr=0.1, regularizer=regularizer, keep_best=False)
    res = optimize_noise(toy, PROMPTS, SEEDS, toy_reward, cfg, progress=False)
    plain = toy_reward(sample_images(toy, PROMPTS, SEEDS).decoded, PROMPTS)
    assert torch.allclose(res.plain_rewards, plain, atol=1e-5)         # iterate 0 is plain sampling
    assert res.rewards.mean() > plain.mean() + 2.0                     # the last iterate climbed
    assert torch.allclose(toy_reward(res.decoded, PROMPTS), res.rewards, atol=1e-4)
    # stated tolerance: ||x_T|| / sqrt(d) within 3 standard deviations (1/sqrt(2d) each) of 1
    d = 16
    assert ((res.shell_ratio - 1).abs() < 3 / math.sqrt(2 * d)).all(), res.shell_ratio
    # the regulariser is what keeps it there: without it the same ascent leaves the shell
    free = optimize_noise(toy, PROMPTS, SEEDS, toy_reward, NoiseOptConfig(iterations=15, lr=0.1, regularizer="none",
                                                                           keep_best=False), progress=False)
    assert (free.shell_ratio - 1).abs().mean() > 2 * (res.shell_ratio - 1).abs().mean()
    assert free.regularizer.mean() > 3 * chi2_regularizer(res.x_T).mean()
    # compute: each iteration = forward with grad + checkpoint recomputation; the last iterate is only scored
    per_chain = toy.rule.num_steps * 2 * len(PROMPTS)
    assert res.evaluations == per_chain * (2 * cfg.iterations + 1) and res.grad_evaluations == per_chain * 2 * 15


def test_keep_best_never_returns_worse_than_plain(toy):
    res = optimize_noise(toy, PROMPTS, SEEDS, toy_reward, NoiseOptConfig(iterations=3, lr=2.0, regularizer="norm"),
                         progress=False)
    best_obj = res.objective.max(dim=0).values
    assert torch.allclose(res.rewards - norm_regularizer(res.x_T), best_obj, atol=1e-4)
    assert (best_obj >= res.objective[0] - 1e-6).all()


def test_noise_opt_on_the_tiny_image_model(image):
    prompts, seeds = ["a cat", "a dog"], [1, 2]
    res = optimize_noise(image, prompts, seeds, mean_red, NoiseOptConfig(iterations=4, lr=0.05, keep_best=False),
                         progress=False)
    assert res.history[-1].mean() > res.history[0].mean()
    assert res.x_T.shape == (2, 4, 16, 16) and ((res.shell_ratio - 1).abs() < 3 / math.sqrt(2 * 1024)).all()


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="regularizer"):
        NoiseOptConfig(regularizer="l2")
    with pytest.raises(ValueError, match="d >= 3"):
        chi2_regularizer(torch.zeros(1, 2))
