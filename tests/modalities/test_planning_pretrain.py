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
    collect.main(["--candidates", "200", "--bins", "6", "--refine", "5", "--episodes-per-controller", "4", "--max-steps", "100",
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
    print("held-out denoising loss before / after fitting:", float(before), float(after))
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
    print("planned x_dot for speed requests -1.5 / +1.5:", planned)
    assert planned[1] > planned[0] + 0.3, planned


def test_fit_checks_shapes():
    planner = PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture="dit", attributes=["speed"])
    with pytest.raises(ValueError, match=r"windows must be \(N, 8, 14\)"):
        fit_planner(planner, torch.zeros(4, 6, 14), steps=1)
    with pytest.raises(ValueError, match=r"attributes must be \(N, K\) = \(4, 1\)"):
        fit_planner(planner, torch.zeros(4, 8, 14), steps=1, attributes=torch.zeros(4, 2))


class Linear(torch.nn.Module):
    """V(x, t) = <w, x>: its gradient is w everywhere, so the guided output has a closed form."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, t):
        return (x * self.w).flatten(1).sum(1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_value_guidance_shifts_the_prediction_by_the_closed_form(prediction_type):
    planner = PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture="dit", prediction_type=prediction_type)
    cond = planner.encode_conditions([{"start_seed": 0}, {"start_seed": 1}])
    x, t = torch.randn(2, 8, 14), torch.tensor([3, 70])
    w = torch.randn(8, 14)
    with torch.no_grad():
        base = planner.denoise(x, t, cond).double()
        planner.value_guidance = (Linear(w), 0.7)
        guided = planner.denoise(x, t, cond).double()
    planner.value_guidance = None
    a = planner.scheduler.alphas_cumprod.double()[t].view(-1, 1, 1)
    g = w.double().expand(2, -1, -1).clone()
    g[:, 0, :11] = 0  # the pinned state is not pushed
    shift = -0.7 * (1 - a).sqrt() * g if prediction_type == "epsilon" else 0.7 * (1 - a) / a.sqrt() * g
    assert torch.allclose(guided, base + shift, atol=1e-5)


def test_a_trained_value_guides_plans_towards_higher_returns(windows):
    """V fitted to windows' mean forward velocity; guiding a planner by it raises the planned velocity, and the
    guided chain stays on policy (ratio 1)."""
    from diffalign.modalities.planning import train_value_function
    torch.set_num_threads(1)
    data, norm = windows
    planner = PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture="dit", normalizer=norm)
    fit_planner(planner, data, steps=150, learning_rate=3e-3)
    value = train_value_function(planner, data, data[:, :, 5].mean(1), steps=300, learning_rate=3e-3)
    policy = DiffusionPolicy(planner, make_step_rule("ddpm", planner.scheduler, 8))
    cond = planner.encode_conditions([{"start_seed": i} for i in range(32)])
    planned = []
    for scale in (0.0, 2.0):
        planner.value_guidance = (value, scale) if scale else None
        traj = policy.sample(cond, generator=[torch.Generator().manual_seed(i) for i in range(32)])
        planned.append(planner.decode(traj.x0, cond)[:, 1:, 5].mean().item())
    x_t, x_prev, old = traj.states_at(torch.full((32,), 3))
    assert torch.allclose(policy.transition(x_t, 3, cond, prev_sample=x_prev).log_prob, old, atol=1e-5)
    planner.value_guidance = None
    print("planned x_dot without / with value guidance (scale 2):", planned)
    assert planned[1] > planned[0] + 0.2, planned
