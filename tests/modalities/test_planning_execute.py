"""Plans in the real environment: open-loop execution, receding-horizon control, inverse dynamics, rendering."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.planning import (PlanningAdapter, execute_plans, filmstrip, forward_velocity, receding_horizon,
                                           render_states, save_filmstrip, save_gif, set_state_from_observation,
                                           train_inverse_dynamics)

S, A = 11, 3


def reference_rollout(seed, actions):
    """gymnasium itself: reset(seed), then step the actions (clipped to the action box) until termination."""
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=seed)
    rows, x0 = [], env.unwrapped.data.qpos[0]
    for a in actions:
        a = np.clip(a, -1, 1)
        rows.append(np.concatenate([obs, a]))
        obs, _, terminated, _, _ = env.step(a)
        if terminated:
            break
    return np.asarray(rows, np.float32), env.unwrapped.data.qpos[0] - x0


def test_an_executed_plan_gives_the_states_the_env_produced():
    env = gym.make("Hopper-v5")
    start = env.reset(seed=4)[0]
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (12, A))  # some beyond the box: clipped
    plan = torch.zeros(1, 12, S + A)
    plan[0, 0, :S] = torch.as_tensor(start)
    plan[0, :, S:] = torch.as_tensor(actions)
    run = execute_plans(plan, "Hopper-v5")
    rows, progress = reference_rollout(4, actions)
    n = len(rows)
    assert torch.allclose(run.trajectories[0, :n], torch.as_tensor(rows), atol=1e-6)
    assert int(run.alive[0].sum()) == n and abs(float(run.progress[0]) - progress) < 1e-6
    assert float(run.positions[0, 0]) == 0.0 and float(run.positions[0, 1]) != 0.0  # the plan starts at x = 0
    again = execute_plans(plan, "Hopper-v5")
    assert torch.equal(again.trajectories, run.trajectories) and torch.equal(again.rewards, run.rewards)
    # the reward: mean forward velocity over the plan's duration (T dt)
    assert torch.allclose(forward_velocity(plan), run.progress / (12 * 0.008))
    with pytest.raises(ValueError, match=r"\(B, T, 14\)"):
        execute_plans(torch.zeros(1, 4, 9), "Hopper-v5")


def test_set_state_from_observation_reproduces_the_observation():
    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(np.array([0.5, -0.2, 0.3]))
    other = gym.make("Hopper-v5")
    other.reset(seed=9)
    set_state_from_observation(other, obs)
    assert np.allclose(other.unwrapped._get_obs(), obs)
    with pytest.raises(ValueError, match="has 11 entries"):
        set_state_from_observation(other, obs[:5])


@pytest.fixture(scope="module")
def planner_fn():
    adapter = PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture="dit", init_seed=0)
    policy = DiffusionPolicy(adapter, make_step_rule("ddpm", adapter.scheduler, 3))
    calls = []

    def plan(observations, step):
        calls.append(step)
        cond = adapter.encode_conditions([{"observation": o.tolist()} for o in observations])
        gens = [torch.Generator().manual_seed(1000 * step + b) for b in range(len(observations))]
        with torch.no_grad():
            return adapter.decode(policy.sample(cond, generator=gens).x0, cond)

    plan.calls = calls
    return plan


def test_receding_horizon_replans_and_is_deterministic(planner_fn):
    planner_fn.calls.clear()
    run = receding_horizon(planner_fn, "Hopper-v5", seeds=[0, 1], steps=10, replan_every=4)
    assert planner_fn.calls == [0, 4, 8]
    assert run.trajectories.shape == (2, 10, S + A)
    for b, seed in enumerate([0, 1]):  # the env's own states under the executed actions
        n = int(run.alive[b].sum())
        rows, progress = reference_rollout(seed, run.trajectories[b, :n, S:].double().numpy())
        assert torch.allclose(run.trajectories[b, :n], torch.as_tensor(rows), atol=1e-6)
        assert abs(float(run.progress[b]) - progress) < 1e-6
    again = receding_horizon(planner_fn, "Hopper-v5", seeds=[0, 1], steps=10, replan_every=4)
    assert torch.equal(again.trajectories, run.trajectories)
    with pytest.raises(ValueError, match="horizon >= 9"):
        receding_horizon(planner_fn, "Hopper-v5", seeds=[0], steps=2, replan_every=9)


def test_inverse_dynamics_learns_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    s, s2 = torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)
    w = torch.randn(8, 2, generator=g)
    a = torch.cat([s, s2], 1) @ w
    model = train_inverse_dynamics(s, s2, a, steps=400, hidden=32, seed=0)
    t, t2 = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    with torch.no_grad():
        err = (model(t, t2) - torch.cat([t, t2], 1) @ w).pow(2).mean()
    assert err < 0.05 * (torch.cat([t, t2], 1) @ w).var()
    with pytest.raises(ValueError, match="inverse dynamics needs"):
        train_inverse_dynamics(s, s2[:5], a)


def test_inverse_dynamics_actions_drive_the_plan(planner_fn):
    """With an inverse-dynamics model, execution reads the planned next state: a model that returns a constant
    action yields that action at every executed step."""
    class Constant(torch.nn.Module):
        def forward(self, state, next_state):
            return torch.full((state.shape[0], A), 0.25)
    run = receding_horizon(planner_fn, "Hopper-v5", seeds=[3], steps=6, replan_every=3, inverse_dynamics=Constant())
    n = int(run.alive[0].sum())
    assert torch.allclose(run.trajectories[0, :n, S:], torch.full((n, A), 0.25))
    plans = planner_fn(torch.as_tensor(gym.make("Hopper-v5").reset(seed=3)[0])[None].float(), 0)
    run = execute_plans(plans, "Hopper-v5", inverse_dynamics=Constant())
    assert run.trajectories.shape == (1, plans.shape[1], S + A)  # every plan row acts
    n = int(run.alive[0].sum())
    last = torch.clamp(plans[0, -1, S:], -1, 1)  # the last row has no next state: the plan's own action
    assert torch.allclose(run.trajectories[0, :min(n, plans.shape[1] - 1), S:], torch.tensor(0.25))
    if n == plans.shape[1]:
        assert torch.allclose(run.trajectories[0, -1, S:], last)
    # closed loop: the model is asked from the observation the episode reached, toward the planned next state
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, state, next_state):
            seen.append((state.clone(), next_state.clone()))
            return torch.zeros(state.shape[0], A)
    run = execute_plans(plans, "Hopper-v5", inverse_dynamics=Recording())
    for t, (state, target) in enumerate(seen):
        assert torch.allclose(state[0], run.trajectories[0, t, :S]) and torch.equal(target[0], plans[0, t + 1, :S])


def test_inverse_dynamics_round_trips_through_safetensors(tmp_path):
    from diffalign.modalities.planning import load_inverse_dynamics, save_inverse_dynamics
    g = torch.Generator().manual_seed(0)
    s, s2, a = torch.randn(300, S, generator=g), torch.randn(300, S, generator=g), torch.randn(300, A, generator=g)
    model = train_inverse_dynamics(s, s2, a, steps=5, hidden=16, seed=0)
    assert load_inverse_dynamics(str(tmp_path)) is None  # none saved there
    save_inverse_dynamics(model, str(tmp_path))
    again = load_inverse_dynamics(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(again(s[:7], s2[:7]), model(s[:7], s2[:7]))


def test_rendering_gives_frames_of_the_requested_size(tmp_path):
    """Offscreen MuJoCo through EGL (MUJOCO_GL=egl, the default make_env sets): what CI machines have."""
    env = gym.make("Hopper-v5")
    obs = [env.reset(seed=0)[0]]
    for _ in range(3):
        obs.append(env.step(np.array([1.0, -1.0, 1.0]))[0])
    frames = render_states(np.stack(obs), "Hopper-v5", size=48)
    assert frames.shape == (4, 48, 48, 3) and frames.dtype == np.uint8 and frames.std() > 5
    assert not np.array_equal(frames[0], frames[-1])  # the body moved
    assert filmstrip(frames, every=2).shape == (48, 96, 3)
    import imageio.v3 as iio
    assert iio.imread(save_filmstrip(str(tmp_path / "strip.png"), frames)).shape == (48, 192, 3)
    assert iio.imread(save_gif(str(tmp_path / "clip.gif"), frames, "Hopper-v5"), index=None).shape[:3] == (4, 48, 48)
    with pytest.raises(ValueError, match=r"\(T, 11\) observations"):
        render_states(np.zeros((2, 5)), "Hopper-v5")


@pytest.mark.parametrize("name", ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"])
def test_env_specs_match_gymnasium(name, tmp_path, monkeypatch):
    from diffalign.modalities.planning import ENV_SPECS
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT (a deprecation warning of these models) in the cwd
    spec = ENV_SPECS[name]
    env = gym.make(name)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (spec.state_dim,) and env.action_space.shape == (spec.action_dim,)
    assert env.unwrapped.dt == pytest.approx(spec.dt)
    assert obs[spec.forward_velocity_index] == pytest.approx(env.unwrapped.data.qvel[0])
    other = gym.make(name)
    other.reset(seed=5)
    set_state_from_observation(other, obs)
    assert np.allclose(other.unwrapped._get_obs(), obs)


def test_sample_grid_shows_the_plans_as_filmstrips():
    planner = PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture="dit")
    env = gym.make("Hopper-v5")
    plans = torch.zeros(2, 8, S + A)
    plans[:, :, :S] = torch.as_tensor(env.reset(seed=0)[0])
    grid = planner.sample_grid(plans)
    assert grid.shape == (3, 2 * 64, 2 * 64) and 0 <= float(grid.min()) and float(grid.max()) <= 1
