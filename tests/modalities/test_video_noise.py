"""PYoCo's mixed frame noise on x_T (modalities/video/noise.py, VideoOptions.frame_noise_alpha)."""
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.mdp import DiffusionPolicy, make_step_rule  # noqa: E402
from diffalign.modalities.video import VideoAdapter, VideoOptions  # noqa: E402
from diffalign.modalities.video.noise import mixed_frame_noise, mixed_noise_weights  # noqa: E402


@pytest.mark.parametrize("alpha", [0.0, 1.0, 19.0])
def test_weights_are_pyocos_and_keep_unit_variance(alpha):
    shared, own = mixed_noise_weights(alpha)
    assert shared == pytest.approx(math.sqrt(alpha / (1 + alpha)), abs=0, rel=1e-15)
    assert own == pytest.approx(math.sqrt(1 / (1 + alpha)), abs=0, rel=1e-15)
    assert shared ** 2 + own ** 2 == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("alpha", [-1.0, float("inf"), float("nan"), True, "19"])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        mixed_noise_weights(alpha)


def test_noise_is_the_stated_mix_of_the_generators_draws():
    shape = (2, 3, 5, 4, 4)
    noise = mixed_frame_noise(shape, 3.0, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the documented order: own frames, then the shared frame
    own = torch.randn(shape, generator=g).double()
    shared = torch.randn((2, 3, 1, 4, 4), generator=g).double()  # float32 draws, mixed in float64
    expected = math.sqrt(3 / 4) * shared + math.sqrt(1 / 4) * own
    assert noise.shape == shape
    assert torch.allclose(noise.double(), expected, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 19.0])
def test_frame_covariance_matches_the_closed_form(alpha):
    frames = 4
    x = mixed_frame_noise((20000, 1, frames, 1, 1), alpha, torch.Generator().manual_seed(0)).double()
    x = x.reshape(-1, frames)
    empirical = x.T @ x / x.shape[0]  # zero mean by construction
    rho = alpha / (1 + alpha)
    closed = torch.full((frames, frames), rho, dtype=torch.float64).fill_diagonal_(1.0)
    # 20000 draws: the standard error of a (co)variance entry is at most sqrt(2 / 20000) = 0.01
    assert (empirical - closed).abs().max().item() < 0.04


def test_alpha_zero_is_independent_noise():
    a = mixed_frame_noise((2, 3, 4, 2, 2), 0.0, torch.Generator().manual_seed(3))
    b = torch.randn((2, 3, 4, 2, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_adapter_initial_noise_default_off_and_reproducible():
    plain = VideoAdapter.from_options(VideoOptions(num_frames=4))
    mixed = VideoAdapter.from_options(VideoOptions(num_frames=4, frame_noise_alpha=19.0))
    cond = plain.encode_conditions(["a red cat", "a dog"])
    x_plain = plain.initial_noise(cond, torch.Generator().manual_seed(1))
    # default off: the very draws of torch.randn, as before the option existed
    assert torch.equal(x_plain, torch.randn(x_plain.shape, generator=torch.Generator().manual_seed(1)))
    x1 = mixed.initial_noise(cond, torch.Generator().manual_seed(1))
    x2 = mixed.initial_noise(cond, torch.Generator().manual_seed(1))
    x3 = mixed.initial_noise(cond, torch.Generator().manual_seed(2))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    # frames far closer than independent frames: E(x_f - x_g)^2 = 2 (1 - rho) = 0.1 vs 2
    assert (x1[:, :, 1:] - x1[:, :, :-1]).pow(2).mean() < 0.3 < (x_plain[:, :, 1:] - x_plain[:, :, :-1]).pow(2).mean()
    # step noise stays independent, so step log-probs need no whitening
    noise = torch.randn(x1.shape)
    assert mixed.project_noise(noise, cond) is noise


@pytest.mark.parametrize("batch", [1, 3])
def test_ratio_is_one_on_policy_with_correlated_initial_noise(batch):
    adapter = VideoAdapter.from_options(VideoOptions(num_frames=4, frame_noise_alpha=19.0))
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 3, eta=1.0), guidance_scale=4.0)
    cond = adapter.encode_conditions((["a red cat", "a dog", "blue"] * 3)[:batch])
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    x_T = traj.latents[:, 0]
    assert (x_T[:, :, 1:] - x_T[:, :, :-1]).pow(2).mean() < 0.3  # the rollout started from correlated frames
    steps = torch.randint(3, (batch,), generator=torch.Generator().manual_seed(1))
    x_t, x_prev, old = traj.states_at(steps)
    new = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
    assert (new - old).abs().max().item() <= 1e-5


@pytest.mark.parametrize("value", [-0.5, float("inf"), True, "high"])
def test_bad_option_names_the_key(value):
    with pytest.raises(ValueError, match="frame_noise_alpha"):
        VideoOptions(frame_noise_alpha=value)
