"""Frames of planned or executed trajectories through MuJoCo's offscreen renderer, as a filmstrip or a GIF.

A frame is the simulator put in the state an observation describes (env.set_state_from_observation), so a plan
renders without executing it. Headless: MUJOCO_GL=egl (the default make_env sets when unset)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffalign.modalities.planning.env import env_spec, make_env, set_state_from_observation

__all__ = ["render_states", "filmstrip", "save_filmstrip", "save_gif"]


def render_states(observations, env_name: str, size: int = 96,
                  x_positions: Sequence[float] | None = None) -> np.ndarray:
    """(T, S) observations (or (T, S + A) rows) -> (T, size, size, 3) uint8 frames. ``x_positions`` places the
    torso along x (the observation omits it; the tracking camera follows it, so it shows in the floor only)."""
    spec = env_spec(env_name)
    obs = torch.as_tensor(observations, dtype=torch.float64).cpu().numpy()
    if obs.ndim != 2 or obs.shape[1] not in (spec.state_dim, spec.state_dim + spec.action_dim):
        raise ValueError(f"render_states takes (T, {spec.state_dim}) observations of {env_name}, got {obs.shape}")
    if int(size) < 8:
        raise ValueError(f"render size must be >= 8 pixels, got {size}")
    env = make_env(env_name, render_size=int(size))
    try:
        env.reset(seed=0)
        frames = []
        for t, row in enumerate(obs):
            set_state_from_observation(env, row[:spec.state_dim], 0.0 if x_positions is None else float(x_positions[t]))
            frames.append(np.asarray(env.render(), dtype=np.uint8))
    finally:
        env.close()
    return np.stack(frames)


def filmstrip(frames: np.ndarray, every: int = 1) -> np.ndarray:
    """(T, H, W, 3) -> one (H, n W, 3) image of every ``every``-th frame, left to right."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"filmstrip takes (T, H, W, 3) frames, got {frames.shape}")
    return np.concatenate(list(frames[::max(1, int(every))]), axis=1)


def save_filmstrip(path: str, frames: np.ndarray, every: int = 1) -> str:
    import imageio.v3 as iio
    iio.imwrite(path, filmstrip(frames, every))
    return path


def save_gif(path: str, frames: np.ndarray, env_name: str, speed: float = 1.0) -> str:
    """A GIF playing at ``speed`` x real time (one frame per env step of dt seconds)."""
    import imageio.v3 as iio
    duration_ms = 1000.0 * env_spec(env_name).dt / float(speed)
    iio.imwrite(path, np.asarray(frames, dtype=np.uint8), duration=max(duration_ms, 20.0), loop=0)
    return path
