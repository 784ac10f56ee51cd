"""Fitting a planner to collected windows: the denoising loss falls, and requested attributes steer the plans."""
import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.planning import (Normalizer, PlanningAdapter, SegmentSampler, denoising_loss, episode_rows,
                                           fit_planner, read_episodes)


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "collect", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "collect_planning_data.py"))
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    out = tmp_path_factory.mktemp("data") / "hopper.npz"
    collect.main(["--candidates", "200", "--bins", "6", "--episodes-per-controller", "4", "--max-steps", "100",
                  "--out", str(out)])
    eps = read_episodes(str(out), 11, 3)
    sampler = SegmentSampler(eps, 8)
    return torch.stack([sampler[k] for k in range(len(sampler))]), Normalizer.fit(episode_rows(eps))


def test_fitting_lowers_the_held_out_denoising_loss_and_the_request_steers_the_plan(windows):
    torch.set_num_threads(1)
    data, norm = windows
    speed = data[:, :, 5].mean(1, keepdim=True)  # the window's mean forward velocity (obs[5] = x_dot)
    z = (speed - speed.mean()) / speed.std()
    planner = PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture="dit", attributes=["speed"], normalizer=norm)
    held = torch.Generator().manual_seed(99)
    idx = torch.randperm(data.shape[0], generator=held)[:256]
    with torch.no_grad():
        before = denoising_loss(planner, data[idx], torch.Generator().manual_seed(1))
    losses = fit_planner(planner, data, steps=300, learning_rate=3e-3, attributes=z, seed=0)
    with torch.no_grad():
        after = denoising_loss(planner, data[idx], torch.Generator().manual_seed(1))
    assert after < 0.5 * before, (float(before), float(after))
    assert len(losses) == 300
    # the reference is the fitted model (training from here starts on policy)
    x, t = torch.randn(2, 8, 14), torch.tensor([5, 50])
    cond = planner.encode_conditions([{"start_seed": 0}, {"start_seed": 1}])
    with torch.no_grad(), planner.reference_mode():
        ref = planner.denoise(x, t, cond)
    with torch.no_grad():
        assert torch.allclose(ref, planner.denoise(x, t, cond), atol=1e-5)  # eval-mode attention: another kernel
    # requesting a high speed plans a faster forward velocity than requesting a low one (guidance 2)
    policy = DiffusionPolicy(planner, make_step_rule("ddpm", planner.scheduler, 8), guidance_scale=2.0)
    planned = []
    for request in (-1.5, 1.5):
        cond = planner.encode_conditions([{"start_seed": i, "attributes": {"speed": request}} for i in range(32)])
        with torch.no_grad():
            plans = planner.decode(policy.sample(cond, generator=[torch.Generator().manual_seed(i) for i in range(32)]).x0, cond)
        planned.append(plans[:, 1:, 5].mean().item())
    assert planned[1] > planned[0] + 0.3, planned


def test_fit_checks_shapes():
    planner = PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture="dit", attributes=["speed"])
    with pytest.raises(ValueError, match=r"windows must be \(N, 8, 14\)"):
        fit_planner(planner, torch.zeros(4, 6, 14), steps=1)
    with pytest.raises(ValueError, match=r"attributes must be \(N, K\) = \(4, 1\)"):
        fit_planner(planner, torch.zeros(4, 8, 14), steps=1, attributes=torch.zeros(4, 2))
