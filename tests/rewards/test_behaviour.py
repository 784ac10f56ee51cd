"""Behaviour attributes on hand-built trajectories with closed-form values, their normalisation, and the
rewards by name (raw attribute, requested targets)."""
import math

import pytest
import torch

from diffalign.rewards import behaviour as B

HOP = B.ENV_SPECS["hopper"]


def _traj(T=50, batch=1, spec=HOP):
    return torch.zeros(batch, T, spec.dim, dtype=torch.float64)


def test_env_spec_rows_and_lookup():
    assert (HOP.obs_dim, HOP.act_dim, HOP.dt, HOP.dim) == (11, 3, 0.008, 14)
    assert B.env_spec("Hopper-v5") is HOP and B.env_spec("hopper") is HOP and B.env_spec(HOP) is HOP
    for spec in B.ENV_SPECS.values():   # actuated joint velocities: one per action, inside the observation
        lo, hi = spec.joint_velocities
        assert hi - lo == spec.act_dim and hi <= spec.obs_dim
        assert max(spec.height, spec.x_velocity) < spec.obs_dim
        assert set(B.ATTRIBUTES) <= set(spec.ranges)
    with pytest.raises(ValueError, match="unknown environment 'Ant-v5'.*hopper"):
        B.env_spec("Ant-v5")


def test_speed_height_and_jump_closed_form():
    T = 50
    x = _traj(T)
    t = torch.arange(T, dtype=torch.float64)
    x[0, :, 5] = 0.5 + 0.02 * t                     # mean of 0.5 + 0.02 t over t = 0..49: 0.5 + 0.02 * 24.5
    x[0, :, 0] = 1.2 + 0.1 * torch.sin(2 * math.pi * t / T * 5)   # 5 whole periods
    vals = B.attribute_values(x, ["speed", "torso_height", "jump_height"])
    assert vals.dtype == torch.float32 and vals.shape == (1, 3)
    assert vals[0, 0].item() == pytest.approx(0.5 + 0.02 * 24.5, abs=1e-6)
    assert vals[0, 1].item() == pytest.approx(1.2, abs=1e-6)     # a sine over whole periods averages to 0
    z = 1.2 + 0.1 * torch.sin(2 * math.pi * t / T * 5)
    assert vals[0, 2].item() == pytest.approx(float(z.max() - z.min()), abs=1e-6)


def test_step_frequency_is_the_hop_frequency():
    T = 64
    t = torch.arange(T, dtype=torch.float64) * HOP.dt
    x = _traj(T, batch=3)
    duration = T * HOP.dt                              # 0.512 s; bin k is k / 0.512 Hz
    for b, k in enumerate((2, 5)):
        x[b, :, 0] = 1.0 + 0.05 * torch.sin(2 * math.pi * (k / duration) * t) + 0.01 * torch.cos(
            2 * math.pi * (1 / duration) * t)          # a weaker slower component must not win
    x[2, :, 0] = 1.1 + 1e-7 * torch.randn(T, dtype=torch.float64)   # flat up to rounding: no hop
    f = B.attribute_values(x, ["step_frequency"])[:, 0]
    assert f[0].item() == pytest.approx(2 / duration, rel=1e-5)
    assert f[1].item() == pytest.approx(5 / duration, rel=1e-5)
    assert f[2].item() == 0.0


def test_energy_effort_smoothness_closed_form():
    T = 10
    x = _traj(T)
    a = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    qdot = torch.tensor([2.0, 1.0, -4.0], dtype=torch.float64)
    x[0, :, 8:11] = qdot
    x[0, :, 11:14] = a
    x[0, 1::2, 11:14] = -a                              # alternate the action's sign every step
    vals = B.attribute_values(x, ["energy", "effort", "smoothness"])[0]
    # |a . qdot| = |1 - 1 - 1| = 1 per step, times dt, over T steps
    assert vals[0].item() == pytest.approx(T * 1.0 * HOP.dt, rel=1e-6)
    assert vals[1].item() == pytest.approx(float((a ** 2).sum()), rel=1e-6)
    assert vals[2].item() == pytest.approx(-float(((2 * a) ** 2).sum()), rel=1e-6)  # every step changes by 2a
    x[0, :, 11:14] = a                                  # constant actions are perfectly smooth
    assert B.attribute_values(x, ["smoothness"])[0, 0].item() == 0.0


def test_bad_inputs_name_the_layout_and_attribute():
    with pytest.raises(ValueError, match=r"expected \(B, T >= 2, 14\).*Hopper-v5.*got shape \(2, 5, 13\)"):
        B.attribute_values(torch.zeros(2, 5, 13), ["speed"])
    with pytest.raises(ValueError, match="unknown behaviour attribute 'height'"):
        B.attribute_values(torch.zeros(2, 5, 14), ["height"])
    with pytest.raises(ValueError, match="range must be"):
        B.normalise(torch.zeros(1, 1), ["speed"], ranges={"speed": [1.0, 1.0]})


def test_normalise_uses_the_range_and_scales_per_second_ones():
    vals = torch.tensor([[1.5, 0.08]])
    out = B.normalise(vals, ["speed", "energy"], horizon=10, ranges={"speed": [0.0, 3.0]})
    lo, hi = HOP.ranges["energy"]
    duration = 10 * HOP.dt
    assert out[0, 0].item() == pytest.approx(0.5)
    assert out[0, 1].item() == pytest.approx((0.08 - lo * duration) / ((hi - lo) * duration))
    with pytest.raises(ValueError, match="horizon"):
        B.normalise(vals, ["speed", "energy"])


def test_attribute_reward_raw_and_with_targets():
    x = _traj(20, batch=2).float()
    x[0, :, 5], x[1, :, 5] = 1.5, 3.0                  # normalised speeds 0.5 and 1.0 with the (0, 3) range
    raw = B.behaviour_speed(x, ["run", "run"])
    assert raw.tolist() == pytest.approx([1.5, 3.0])
    items = [{"text": "run", "targets": {"speed": 0.8}}, {"text": "run", "targets": {"speed": 0.8, "jump_height": 1}}]
    r = B.behaviour_speed(x, items)
    assert r.tolist() == pytest.approx([-0.3, -0.2], abs=1e-6)
    with pytest.raises(ValueError, match=r"items \[1\] request no 'speed'"):
        B.behaviour_speed(x, [items[0], "run"])
    with pytest.raises(ValueError, match=r"prompt item 0: targets.speed must be a number in \[0, 1\]"):
        B.behaviour_speed(x, [{"targets": {"speed": 2}}, items[0]])


def test_behaviour_match_averages_the_requested_attributes():
    x = _traj(20, batch=2).float()
    x[:, :, 5] = 1.5                                   # speed 0.5 normalised
    x[:, :, 0] = 1.1                                   # torso height (1.1 - 0.8) / 0.6 = 0.5 normalised
    items = [{"targets": {"speed": 0.5, "torso_height": 0.9}}, {"targets": {"torso_height": 0.0}}]
    r = B.behaviour_match(x, items)
    assert r.tolist() == pytest.approx([-(0.0 + 0.4) / 2, -0.5], abs=1e-5)
    with pytest.raises(ValueError, match=r"items \[1\] request no attribute"):
        B.behaviour_match(x, [items[0], "walk"])


def test_target_error_is_nan_without_a_request():
    err = B.target_error(torch.tensor([[0.2, 0.4], [0.1, 0.1]]), ["a", "b"], [{"b": 0.0}, {}])
    assert err[0].item() == pytest.approx(0.4) and math.isnan(err[1].item())


def test_rewards_resolve_by_name():
    from diffalign import registry
    for name in ("behaviour_speed", "behaviour_jump_height", "behaviour_energy", "behaviour_match"):
        assert callable(registry.rewards[name])
    assert registry.rewards["behaviour_effort"] is B.behaviour_effort
