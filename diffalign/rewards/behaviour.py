"""Behaviour attributes of MuJoCo locomotion trajectories (AlignDiff's "how fast, how high, how smooth").

A trajectory batch is a float tensor (B, T, S + A): T steps of the environment's observation (S values)
followed by the action taken (A values in [-1, 1]). Where each quantity sits in the observation, and the
control period dt, is one row of :data:`ENV_SPECS` (gymnasium's v5 documentation of each environment's
observation space with the default ``exclude_current_positions_from_observation=True``); adding an
environment is adding a row.

Attributes (all batched, torch, (B, T, S + A) -> (B,) float32; units in :data:`ATTRIBUTES`):

- ``speed``: mean forward (x) velocity of the torso, m/s;
- ``torso_height``: mean torso height z, m;
- ``jump_height``: max z - min z over the window, m;
- ``step_frequency``: the dominant frequency of the torso height's oscillation (the peak of its spectrum,
  mean removed), Hz; its resolution is one spectral bin, 1 / (T dt);
- ``energy``: sum_t |a_t . qdot_t| dt, the actuators' work in action-units x rad (multiply by the gear, 200
  on Hopper, for joules);
- ``effort``: mean_t ||a_t||^2, squared action per step;
- ``smoothness``: -mean_t ||a_{t+1} - a_t||^2 (0 for constant actions; higher is smoother).

Rewards by name (``behaviour_<attribute>``; registry): ``(samples, prompts, env="hopper", ranges=None) ->
Tensor[B]``. Without requested targets the reward is the attribute itself (maximise it). A prompt item
``{"text": ..., "targets": {"speed": 0.8, ...}}`` requests strengths in [0, 1]; the reward is then
``-|normalised achieved - requested|``, normalised by the attribute's range (:func:`normalise`).
``behaviour_match`` scores all of an item's targets at once (minus their mean absolute error).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Where a locomotion environment's quantities sit in a (T, S + A) trajectory row."""
    name: str                       # gymnasium id
    obs_dim: int                    # S
    act_dim: int                    # A
    dt: float                       # seconds per environment step (frame_skip x the model's timestep)
    height: int                     # torso (root) z
    x_velocity: int                 # torso forward velocity
    joint_velocities: Tuple[int, int]   # [start, stop) of the actuated joints' velocities (one per action)
    ranges: Mapping[str, Tuple[float, float]]   # attribute -> (lo, hi) that normalise() maps to (0, 1)

    @property
    def dim(self) -> int:
        return self.obs_dim + self.act_dim


# Normalisation ranges are rough spans of each environment's behaviours (standing still to running), so a
# requested strength of 0 / 1 means "the low / high end"; override them with the rewards' ``ranges`` kwarg.
# energy's range is per second of the window (scaled by its duration, so it does not depend on T).
_LOCOMOTION_RANGES = {"speed": (0.0, 3.0), "torso_height": (0.8, 1.4), "jump_height": (0.0, 0.4),
                      "step_frequency": (0.0, 4.0), "energy": (0.0, 4.0), "effort": (0.0, 1.0),
                      "smoothness": (-1.0, 0.0)}
ENV_SPECS: Dict[str, EnvSpec] = {
    # Hopper-v5: obs[0] z, [1] torso angle, [2:5] joint angles, [5] x vel, [6] z vel, [7] torso angular vel,
    # [8:11] joint vels; 3 actions; dt = 4 frames x 0.002 s
    "hopper": EnvSpec("Hopper-v5", 11, 3, 0.008, height=0, x_velocity=5, joint_velocities=(8, 11),
                      ranges=_LOCOMOTION_RANGES),
    # Walker2d-v5: obs[0] z, [1] angle, [2:8] joint angles, [8] x vel, [9] z vel, [10] angular vel, [11:17] joint
    # vels; 6 actions; dt = 4 x 0.002 s
    "walker2d": EnvSpec("Walker2d-v5", 17, 6, 0.008, height=0, x_velocity=8, joint_velocities=(11, 17),
                        ranges={**_LOCOMOTION_RANGES, "energy": (0.0, 8.0)}),
    # HalfCheetah-v5: obs[0] root z, [1] angle, [2:8] joint angles, [8] x vel, [9] z vel, [10] angular vel,
    # [11:17] joint vels; 6 actions; dt = 5 x 0.01 s. Its z is relative to the start (about 0), so its height
    # range differs
    "halfcheetah": EnvSpec("HalfCheetah-v5", 17, 6, 0.05, height=0, x_velocity=8, joint_velocities=(11, 17),
                           ranges={**_LOCOMOTION_RANGES, "speed": (0.0, 8.0), "torso_height": (-0.3, 0.3),
                                   "energy": (0.0, 20.0)}),
}


def env_spec(env: Any) -> EnvSpec:
    """``env`` as an :class:`EnvSpec`: a spec, a key of ENV_SPECS, or a gymnasium id ("Hopper-v5")."""
    if isinstance(env, EnvSpec):
        return env
    key = str(env).lower()
    for name, spec in ENV_SPECS.items():
        if key in (name, spec.name.lower()):
            return spec
    raise ValueError(f"unknown environment {env!r}: behaviour attributes know {sorted(ENV_SPECS)} "
                     f"(gymnasium ids {[s.name for s in ENV_SPECS.values()]}); add a row to ENV_SPECS")


def check_trajectories(x: Any, spec: EnvSpec, what: str = "trajectories") -> torch.Tensor:
    """(B, T, S + A) float tensor (a single (T, S + A) gets a batch axis), else a ValueError naming the layout."""
    x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != spec.dim or x.shape[1] < 2:
        raise ValueError(f"{what}: expected (B, T >= 2, {spec.dim}) = {spec.obs_dim} {spec.name} observation values "
                         f"+ {spec.act_dim} actions per step, got shape {tuple(x.shape)}")
    return x.float() if not x.is_floating_point() else x


def _actions(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    return x[..., spec.obs_dim:]


def speed(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    return x[..., spec.x_velocity].mean(dim=1)


def torso_height(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    return x[..., spec.height].mean(dim=1)


def jump_height(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    z = x[..., spec.height]
    return z.amax(dim=1) - z.amin(dim=1)


def step_frequency(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    z = x[..., spec.height]
    power = torch.fft.rfft(z - z.mean(dim=1, keepdim=True), dim=1).abs()
    power[:, 0] = 0  # the mean (removed) must not win for a flat signal's rounding noise
    peak = power.argmax(dim=1).to(x.dtype)
    # a flat signal has no hop: its spectrum is rounding noise, far below the signal's own scale
    noise = 1e-5 * z.shape[1] * (z.abs().amax(dim=1) + 1)
    return torch.where(power.amax(dim=1) > noise, peak / (x.shape[1] * spec.dt), torch.zeros_like(peak))


def energy(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    lo, hi = spec.joint_velocities
    work = (_actions(x, spec) * x[..., lo:hi]).sum(dim=-1).abs()
    return work.sum(dim=1) * spec.dt


def effort(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    return _actions(x, spec).pow(2).sum(dim=-1).mean(dim=1)


def smoothness(x: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    return -_actions(x, spec).diff(dim=1).pow(2).sum(dim=-1).mean(dim=1)


@dataclasses.dataclass(frozen=True)
class Attribute:
    fn: Callable[[torch.Tensor, EnvSpec], torch.Tensor]
    unit: str
    per_second: bool = False   # the normalisation range is per second of the window (energy)


ATTRIBUTES: Dict[str, Attribute] = {
    "speed": Attribute(speed, "m/s"),
    "torso_height": Attribute(torso_height, "m"),
    "jump_height": Attribute(jump_height, "m"),
    "step_frequency": Attribute(step_frequency, "Hz"),
    "energy": Attribute(energy, "action x rad", per_second=True),
    "effort": Attribute(effort, "action^2 per step"),
    "smoothness": Attribute(smoothness, "-action^2 per step"),
}


def _attribute(name: str) -> Attribute:
    if name not in ATTRIBUTES:
        raise ValueError(f"unknown behaviour attribute {name!r}; known: {sorted(ATTRIBUTES)}")
    return ATTRIBUTES[name]


def attribute_values(trajectories: Any, names: Sequence[str], env: Any = "hopper") -> torch.Tensor:
    """(B, len(names)) float32: each named attribute of each trajectory, in its units."""
    spec = env_spec(env)
    x = check_trajectories(trajectories, spec).detach().float()
    return torch.stack([_attribute(n).fn(x, spec) for n in names], dim=1)


def _range(name: str, spec: EnvSpec, ranges: Optional[Mapping[str, Sequence[float]]]) -> Tuple[float, float]:
    value = (ranges or {}).get(name, spec.ranges.get(name))
    if value is None or len(value) != 2 or not float(value[1]) > float(value[0]):
        raise ValueError(f"behaviour attribute {name!r}: its normalisation range must be [lo, hi] with hi > lo, "
                         f"got {value!r}")
    return float(value[0]), float(value[1])


def normalise(values: torch.Tensor, names: Sequence[str], env: Any = "hopper", horizon: Optional[int] = None,
              ranges: Optional[Mapping[str, Sequence[float]]] = None) -> torch.Tensor:
    """(B, len(names)) attribute values mapped by (v - lo) / (hi - lo) (not clipped: beyond the range is > 1).

    ``horizon`` (T) is needed for per-second attributes (energy): their range is scaled by T dt."""
    spec = env_spec(env)
    out = []
    for i, n in enumerate(names):
        lo, hi = _range(n, spec, ranges)
        if _attribute(n).per_second:
            if horizon is None:
                raise ValueError(f"normalising {n!r} needs the window's horizon (its range is per second)")
            lo, hi = lo * horizon * spec.dt, hi * horizon * spec.dt
        out.append((values[:, i] - lo) / (hi - lo))
    return torch.stack(out, dim=1)


def normalised_attributes(trajectories: Any, names: Sequence[str], env: Any = "hopper",
                          ranges: Optional[Mapping[str, Sequence[float]]] = None) -> torch.Tensor:
    """(B, len(names)) attributes in normalised units (:func:`normalise`)."""
    values = attribute_values(trajectories, names, env)
    return normalise(values, names, env, torch.as_tensor(trajectories).shape[-2], ranges)


# ---- requested targets in prompt items ----------------------------------------------------------------
TARGETS_KEY = "targets"


def requested_targets(prompts: Optional[Sequence[Any]], n: int) -> List[Dict[str, float]]:
    """Each item's requested strengths ``{attribute: value in [0, 1]}`` ({} for a text or an item without any);
    a ValueError names the item and the value that is not a number in [0, 1] or not an attribute."""
    items = [None] * n if prompts is None else list(prompts)
    if len(items) != n:
        raise ValueError(f"behaviour rewards: {n} trajectories but {len(items)} prompt items")
    out = []
    for i, item in enumerate(items):
        t = item.get(TARGETS_KEY) if isinstance(item, Mapping) else None
        if t is None:
            out.append({})
            continue
        if not isinstance(t, Mapping):
            raise ValueError(f"prompt item {i}: {TARGETS_KEY!r} must map attribute -> strength, got {t!r}")
        for k, v in t.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"prompt item {i}: {TARGETS_KEY}.{k} must be a number in [0, 1], got {v!r}")
        out.append({str(k): float(v) for k, v in t.items()})
    return out


def target_error(achieved: torch.Tensor, names: Sequence[str], targets: Sequence[Mapping[str, float]]) -> torch.Tensor:
    """(B,) mean |achieved - requested| over each item's requested attributes among ``names``; NaN where an item
    requests none of them. ``achieved``: (B, len(names)) in the targets' units."""
    requested = torch.full_like(achieved, math.nan)
    for b, t in enumerate(targets):
        for k, v in t.items():
            if k in names:
                requested[b, list(names).index(k)] = v
    mask = ~torch.isnan(requested)
    err = torch.where(mask, (achieved - torch.nan_to_num(requested)).abs(), torch.zeros_like(achieved))
    count = mask.sum(dim=1)
    return torch.where(count > 0, err.sum(dim=1) / count.clamp_min(1), torch.full_like(err[:, 0], math.nan))


def attribute_reward(name: str) -> Callable:
    """The reward ``behaviour_<name>`` (module docstring)."""
    _attribute(name)

    def reward(samples, prompts=None, env: str = "hopper", ranges: Optional[Dict[str, List[float]]] = None):
        x = torch.as_tensor(samples)
        targets = requested_targets(prompts, x.shape[0] if x.ndim == 3 else 1)
        asked = [name in t for t in targets]
        if not any(asked):
            return attribute_values(x, [name], env)[:, 0]
        if not all(asked):
            missing = [i for i, a in enumerate(asked) if not a]
            raise ValueError(f"behaviour_{name}: prompt items {missing[:5]} request no {name!r} target while others "
                             "do; give every item a target or none")
        achieved = normalised_attributes(x, [name], env, ranges)
        return -target_error(achieved, [name], targets)

    reward.__name__ = f"behaviour_{name}"
    reward.__doc__ = f"The {name} attribute ({ATTRIBUTES[name].unit}), or -|normalised {name} - requested|."
    return reward


def behaviour_match(samples, prompts=None, env: str = "hopper", ranges: Optional[Dict[str, List[float]]] = None):
    """-(mean |normalised achieved - requested|) over each item's requested attributes (every item needs one)."""
    x = torch.as_tensor(samples)
    targets = requested_targets(prompts, x.shape[0] if x.ndim == 3 else 1)
    names = sorted({k for t in targets for k in t})
    empty = [i for i, t in enumerate(targets) if not t]
    if empty:
        raise ValueError(f"behaviour_match: prompt items {empty[:5]} request no attribute (give "
                         f"{{{TARGETS_KEY!r}: {{attribute: strength in [0, 1]}}}})")
    for n in names:
        _attribute(n)
    return -target_error(normalised_attributes(x, names, env, ranges), names, targets)


behaviour_speed = attribute_reward("speed")
behaviour_torso_height = attribute_reward("torso_height")
behaviour_jump_height = attribute_reward("jump_height")
behaviour_step_frequency = attribute_reward("step_frequency")
behaviour_energy = attribute_reward("energy")
behaviour_effort = attribute_reward("effort")
behaviour_smoothness = attribute_reward("smoothness")
