"""The gymnasium MuJoCo environments a planner runs in, and how a state vector maps onto the simulator.

A planning trajectory row is (observation (S,), action (A,)); S, A and the control period ``dt`` are known from
the environment's name (:data:`ENV_SPECS`), so shapes are checked before any simulator is built. Every
environment listed here observes ``qpos[1:]`` followed by ``qvel`` (gymnasium's v5 default,
``exclude_current_positions_from_observation=True``): the x position is left out, and the dynamics do not
depend on it, so :func:`set_state_from_observation` restores a state exactly from an observation.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict

import numpy as np

__all__ = ["EnvSpec", "ENV_SPECS", "env_spec", "make_env", "set_state_from_observation", "x_position"]


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Shapes and timing of one environment: S observation dims, A action dims, dt seconds per env step."""
    name: str
    state_dim: int
    action_dim: int
    dt: float           # model timestep x frame_skip (gymnasium's ``env.dt``)
    forward_velocity_index: int  # the observation entry holding x_dot


# gymnasium 1.x v5 specs: Hopper obs = qpos[1:6] (z, torso angle, thigh, leg, foot) + qvel (6, x_dot first),
# timestep 0.002 s x frame_skip 4; Walker2d 8 + 9 dims; HalfCheetah 8 + 9 dims, timestep 0.01 x 5.
ENV_SPECS: Dict[str, EnvSpec] = {
    "Hopper-v5": EnvSpec("Hopper-v5", 11, 3, 0.008, 5),
    "Walker2d-v5": EnvSpec("Walker2d-v5", 17, 6, 0.008, 8),
    "HalfCheetah-v5": EnvSpec("HalfCheetah-v5", 17, 6, 0.05, 8),
}


def env_spec(name: str) -> EnvSpec:
    if name not in ENV_SPECS:
        raise ValueError(f"planning environment must be one of {sorted(ENV_SPECS)}, got {name!r}")
    return ENV_SPECS[name]


def make_env(name: str, render_size: int = 0):
    """A gymnasium environment (``render_size`` > 0: rgb_array frames of that many pixels, offscreen).

    Headless rendering needs an offscreen GL: MuJoCo reads MUJOCO_GL, and EGL (Mesa's, libegl1 +
    libegl-mesa0) is what works on machines without a display, so it is the default here when unset."""
    env_spec(name)
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import gymnasium as gym
    except ImportError as e:  # the optional dependency of this modality
        raise ImportError("the planning modality needs gymnasium[mujoco]: pip install 'diffalign[planning]'") from e
    if render_size:
        return gym.make(name, render_mode="rgb_array", width=render_size, height=render_size)
    return gym.make(name)


def set_state_from_observation(env, observation: np.ndarray, x: float = 0.0) -> None:
    """Put the simulator in the state an observation describes (x position ``x``, which the dynamics ignore)."""
    u = env.unwrapped
    nq = u.model.nq
    obs = np.asarray(observation, dtype=np.float64)
    if obs.shape != (nq - 1 + u.model.nv,):
        raise ValueError(f"an observation of {env.spec.id} has {nq - 1 + u.model.nv} entries, got shape {obs.shape}")
    u.set_state(np.concatenate([[x], obs[:nq - 1]]), obs[nq - 1:])


def x_position(env) -> float:
    """The torso's x position (what forward progress is measured by)."""
    return float(env.unwrapped.data.qpos[0])
