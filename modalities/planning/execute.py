"""Running plans in the real environment: open-loop execution, receding-horizon control, inverse dynamics.

Every function returns an :class:`Execution` whose ``trajectories`` share the planner's layout (B, N, S + A):
row t is the observation the environment produced at step t and the action then taken. Environments are
seeded (``reset(seed=...)``) or put in the state a plan starts from, so runs are reproducible.

A planner is any callable ``(observations (B, S) raw, step) -> plans (B, horizon, S + A) raw``; the sampling
chain lives above this layer (diffalign.mdp), so whoever holds a policy wraps it (tests and the demo do).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from diffalign.modalities.planning.env import env_spec, make_env, set_state_from_observation, x_position

__all__ = ["Execution", "execute_plans", "receding_horizon", "InverseDynamics", "train_inverse_dynamics"]

Planner = Callable[[torch.Tensor, int], torch.Tensor]


@dataclasses.dataclass
class Execution:
    """trajectories (B, N, S + A); rewards (B, N) the env's reward per step (0 after termination); alive (B, N)
    whether step t ran (False once the episode terminated); progress (B,) x displacement of the torso;
    positions (B, N) the torso's x at each row (the observation omits it; render_states takes it)."""
    trajectories: torch.Tensor
    rewards: torch.Tensor
    alive: torch.Tensor
    progress: torch.Tensor
    positions: torch.Tensor

    @property
    def returns(self) -> torch.Tensor:
        return self.rewards.sum(1)


class InverseDynamics(nn.Module):
    """a_t = f(s_t, s_{t+1}): an MLP on normalised state pairs (the statistics are buffers, saved with it)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, action_dim))
        self.register_buffer("mean", torch.zeros(2 * state_dim))
        self.register_buffer("std", torch.ones(2 * state_dim))

    def forward(self, state: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([state, next_state], dim=-1)
        return self.net((pair - self.mean) / self.std)


def train_inverse_dynamics(states: torch.Tensor, next_states: torch.Tensor, actions: torch.Tensor, steps: int = 500,
                           batch_size: int = 256, learning_rate: float = 3e-3, hidden: int = 64,
                           seed: int = 0) -> InverseDynamics:
    """Fit :class:`InverseDynamics` to transitions (N, S), (N, S), (N, A) by mean squared error (Adam)."""
    states, next_states, actions = (torch.as_tensor(v, dtype=torch.float32) for v in (states, next_states, actions))
    if not states.shape == next_states.shape or states.shape[0] != actions.shape[0]:
        raise ValueError(f"inverse dynamics needs (N, S), (N, S), (N, A); got {tuple(states.shape)}, "
                         f"{tuple(next_states.shape)}, {tuple(actions.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InverseDynamics(states.shape[1], actions.shape[1], hidden)
    pair = torch.cat([states, next_states], dim=-1)
    model.mean.copy_(pair.mean(0))
    model.std.copy_(pair.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    n = states.shape[0]
    for _ in range(int(steps)):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen)
        loss = ((model(states[idx], next_states[idx]) - actions[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _start(env, observation: Optional[np.ndarray], seed: Optional[int]) -> np.ndarray:
    """Reset (seeded) and, given an observation, put the simulator in that state; returns the observation."""
    obs, _ = env.reset(seed=None if seed is None else int(seed))
    if observation is not None:
        set_state_from_observation(env, observation)
        obs = env.unwrapped._get_obs()  # what the env reports from that state (velocities clipped as it clips)
    return np.asarray(obs, dtype=np.float64)


def _run(env_name: str, batch: int, steps: int, starts, seeds, choose_action) -> Execution:
    """Step ``batch`` environments for ``steps`` steps; ``choose_action(b, t, obs)`` gives each action."""
    spec = env_spec(env_name)
    s, a = spec.state_dim, spec.action_dim
    traj = torch.zeros(batch, steps, s + a)
    rewards, alive, progress = torch.zeros(batch, steps), torch.zeros(batch, steps, dtype=torch.bool), torch.zeros(batch)
    positions = torch.zeros(batch, steps, dtype=torch.float64)
    env = make_env(env_name)
    low, high = env.action_space.low, env.action_space.high
    try:
        for b in range(batch):
            obs = _start(env, None if starts is None else starts[b], None if seeds is None else seeds[b])
            x0, done = x_position(env), False
            for t in range(steps):
                positions[b, t] = x_position(env)
                if done:  # the episode ended: hold the last state, no action
                    traj[b, t, :s] = traj[b, t - 1, :s]
                    continue
                action = np.clip(np.asarray(choose_action(b, t, obs), dtype=np.float64), low, high)
                traj[b, t, :s] = torch.as_tensor(obs, dtype=torch.float32)
                traj[b, t, s:] = torch.as_tensor(action, dtype=torch.float32)
                alive[b, t] = True
                obs, r, terminated, truncated, _ = env.step(action)
                rewards[b, t] = float(r)
                done = bool(terminated)
            progress[b] = x_position(env) - x0
    finally:
        env.close()
    return Execution(traj, rewards, alive, progress, positions)


def execute_plans(plans: torch.Tensor, env_name: str, inverse_dynamics: Optional[InverseDynamics] = None) -> Execution:
    """Execute each plan (B, T, S + A) open loop from its first state: the plan's actions, or the inverse
    dynamics' action between consecutive planned states (T - 1 steps then)."""
    spec = env_spec(env_name)
    plans = torch.as_tensor(plans, dtype=torch.float32).detach().cpu()
    if plans.ndim != 3 or plans.shape[2] != spec.state_dim + spec.action_dim:
        raise ValueError(f"plans for {env_name} must be (B, T, {spec.state_dim + spec.action_dim}), "
                         f"got {tuple(plans.shape)}")
    s = spec.state_dim
    steps = plans.shape[1] - (1 if inverse_dynamics is not None else 0)

    def choose(b, t, obs):
        if inverse_dynamics is None:
            return plans[b, t, s:].numpy()
        with torch.no_grad():
            return inverse_dynamics(torch.as_tensor(obs, dtype=torch.float32)[None], plans[b, t + 1, None, :s])[0].numpy()

    return _run(env_name, plans.shape[0], steps, plans[:, 0, :s].double().numpy(), None, choose)


def receding_horizon(planner: Planner, env_name: str, seeds: Sequence[int], steps: int, replan_every: int = 1,
                     inverse_dynamics: Optional[InverseDynamics] = None) -> Execution:
    """Receding-horizon control from seeded resets: plan from the current observations, act ``replan_every``
    steps of the plan (its actions, or inverse dynamics towards its next planned state), re-plan.

    All episodes plan together (one planner call of B rows per re-plan), so a batched sampler serves them;
    ended episodes keep their last observation in that call and take no action."""
    spec = env_spec(env_name)
    s = spec.state_dim
    batch, k = len(seeds), int(replan_every)
    if k < 1:
        raise ValueError(f"replan_every must be >= 1, got {replan_every}")
    envs = [make_env(env_name) for _ in range(batch)]
    low, high = envs[0].action_space.low, envs[0].action_space.high
    traj = torch.zeros(batch, steps, s + spec.action_dim)
    rewards, alive, progress = torch.zeros(batch, steps), torch.zeros(batch, steps, dtype=torch.bool), torch.zeros(batch)
    positions = torch.zeros(batch, steps, dtype=torch.float64)
    try:
        obs = [_start(env, None, seed) for env, seed in zip(envs, seeds)]
        x0 = [x_position(env) for env in envs]
        done = [False] * batch
        plans = None
        for t in range(steps):
            j = t % k
            if j == 0:
                plans = torch.as_tensor(planner(torch.as_tensor(np.stack(obs), dtype=torch.float32), t)).detach().cpu()
                need = k + (1 if inverse_dynamics is not None else 0)  # rows the next k actions read
                if plans.ndim != 3 or plans.shape[0] != batch or plans.shape[1] < need:
                    raise ValueError(f"the planner returned {tuple(plans.shape)}; expected ({batch}, horizon >= "
                                     f"{need}, {s + spec.action_dim})")
            for b, env in enumerate(envs):
                positions[b, t] = x_position(env)
                if done[b]:
                    traj[b, t, :s] = traj[b, t - 1, :s]
                    continue
                if inverse_dynamics is None:
                    action = plans[b, j, s:]
                else:
                    with torch.no_grad():
                        action = inverse_dynamics(torch.as_tensor(obs[b], dtype=torch.float32)[None],
                                                  plans[b, j + 1, None, :s])[0]
                action = np.clip(action.double().numpy(), low, high)
                traj[b, t, :s] = torch.as_tensor(obs[b], dtype=torch.float32)
                traj[b, t, s:] = torch.as_tensor(action, dtype=torch.float32)
                alive[b, t] = True
                o, r, terminated, _, _ = env.step(action)
                obs[b], rewards[b, t], done[b] = np.asarray(o, dtype=np.float64), float(r), bool(terminated)
        for b, env in enumerate(envs):
            progress[b] = x_position(env) - x0[b]
    finally:
        for env in envs:
            env.close()
    return Execution(traj, rewards, alive, progress, positions)
