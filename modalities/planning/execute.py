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

__all__ = ["Execution", "execute_plans", "receding_horizon", "InverseDynamics", "train_inverse_dynamics",
           "save_inverse_dynamics", "load_inverse_dynamics"]

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


class _Recorder:
    """Steps environments and writes what they produced into an :class:`Execution`'s tensors."""

    def __init__(self, env_name: str, batch: int, steps: int):
        spec = env_spec(env_name)
        self.s = spec.state_dim
        self.traj = torch.zeros(batch, steps, spec.state_dim + spec.action_dim)
        self.rewards, self.alive = torch.zeros(batch, steps), torch.zeros(batch, steps, dtype=torch.bool)
        self.positions = torch.zeros(batch, steps, dtype=torch.float64)
        self.x0, self.progress = torch.zeros(batch, dtype=torch.float64), torch.zeros(batch)
        self.done = [False] * batch

    def begin(self, b: int, env) -> None:
        self.x0[b] = x_position(env)

    def step(self, b: int, t: int, env, obs: np.ndarray, action) -> np.ndarray:
        """Row (b, t): the observation, then the action (clipped to the action box) stepped; returns the next
        observation. An ended episode holds its last state and takes no action."""
        self.positions[b, t] = x_position(env)
        if self.done[b]:
            self.traj[b, t, :self.s] = self.traj[b, t - 1, :self.s]
            return obs
        action = np.clip(np.asarray(action, dtype=np.float64), env.action_space.low, env.action_space.high)
        self.traj[b, t, :self.s] = torch.as_tensor(obs, dtype=torch.float32)
        self.traj[b, t, self.s:] = torch.as_tensor(action, dtype=torch.float32)
        self.alive[b, t] = True
        obs, r, terminated, _, _ = env.step(action)
        self.rewards[b, t], self.done[b] = float(r), bool(terminated)
        return np.asarray(obs, dtype=np.float64)

    def end(self, b: int, env) -> None:
        self.progress[b] = float(x_position(env) - self.x0[b])

    def result(self) -> Execution:
        return Execution(self.traj, self.rewards, self.alive, self.progress, self.positions)


INVERSE_DYNAMICS_FILE = "inverse_dynamics.safetensors"


def save_inverse_dynamics(model: InverseDynamics, directory: str) -> str:
    """``directory/inverse_dynamics.safetensors``: the weights and normalisation, the sizes in its metadata."""
    import os

    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, INVERSE_DYNAMICS_FILE)
    first, last = model.net[0], model.net[-1]
    meta = {"state_dim": str(first.in_features // 2), "action_dim": str(last.out_features),
            "hidden": str(first.out_features)}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path, metadata=meta)
    return path


def load_inverse_dynamics(directory: str) -> Optional[InverseDynamics]:
    """The model :func:`save_inverse_dynamics` wrote in ``directory``, or None when there is none."""
    import os

    from safetensors import safe_open
    from safetensors.torch import load_file
    path = os.path.join(directory, INVERSE_DYNAMICS_FILE)
    if not os.path.isfile(path):
        return None
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    try:
        model = InverseDynamics(int(meta["state_dim"]), int(meta["action_dim"]), int(meta["hidden"]))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: metadata must give state_dim, action_dim and hidden (save_inverse_dynamics)") from e
    model.load_state_dict(load_file(path))
    return model.eval()


def _action(plans: torch.Tensor, b: int, j: int, s: int, obs: np.ndarray,
            model: Optional[InverseDynamics]) -> np.ndarray:
    """The action at plan row j from observation ``obs``: the plan's own, or with ``model`` the inverse dynamics'
    toward the next planned state (closed loop: from where the episode is, not where the plan was); a plan's last
    row has no next state and takes its own action."""
    if model is None or j + 1 >= plans.shape[1]:
        return plans[b, j, s:].double().numpy()
    with torch.no_grad():
        return model(torch.as_tensor(obs, dtype=torch.float32)[None], plans[b, j + 1, :s][None])[0].double().numpy()


def execute_plans(plans: torch.Tensor, env_name: str, inverse_dynamics: Optional[InverseDynamics] = None) -> Execution:
    """Execute each plan (B, T, S + A) from its first state for T steps: the plan's actions (open loop), or the
    inverse dynamics' action toward each next planned state (the last row: the plan's own action)."""
    spec = env_spec(env_name)
    plans = torch.as_tensor(plans, dtype=torch.float32).detach().cpu()
    if plans.ndim != 3 or plans.shape[2] != spec.state_dim + spec.action_dim:
        raise ValueError(f"plans for {env_name} must be (B, T, {spec.state_dim + spec.action_dim}), "
                         f"got {tuple(plans.shape)}")
    s = spec.state_dim
    steps = plans.shape[1]
    rec = _Recorder(env_name, plans.shape[0], steps)
    env = make_env(env_name)
    try:
        for b in range(plans.shape[0]):
            obs = _start(env, plans[b, 0, :s].double().numpy(), None)
            rec.begin(b, env)
            for t in range(steps):
                obs = rec.step(b, t, env, obs, _action(plans, b, t, s, obs, inverse_dynamics))
            rec.end(b, env)
    finally:
        env.close()
    return rec.result()


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
    rec = _Recorder(env_name, batch, steps)
    need = k  # plan rows the next k actions read
    try:
        obs = [_start(env, None, seed) for env, seed in zip(envs, seeds)]
        for b, env in enumerate(envs):
            rec.begin(b, env)
        plans = None
        for t in range(steps):
            j = t % k
            if j == 0:
                plans = torch.as_tensor(planner(torch.as_tensor(np.stack(obs), dtype=torch.float32), t)).detach().cpu()
                if plans.ndim != 3 or plans.shape[0] != batch or plans.shape[1] < need:
                    raise ValueError(f"the planner returned {tuple(plans.shape)}; expected ({batch}, horizon >= "
                                     f"{need}, {s + spec.action_dim})")
            for b, env in enumerate(envs):
                obs[b] = rec.step(b, t, env, obs[b], _action(plans, b, j, s, obs[b], inverse_dynamics))
        for b, env in enumerate(envs):
            rec.end(b, env)
    finally:
        for env in envs:
            env.close()
    return rec.result()
