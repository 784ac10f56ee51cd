"""Rewards of the planning modality that execute the decoded plans in the environment.

They take the decoded trajectories (B, T, S + A) (``PlanningAdapter.decode``) and the prompt items, execute each
plan open loop from its first state with its own actions (execute.execute_plans), and score what the
environment did, so a plan that promises progress it cannot deliver is not rewarded for it.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from diffalign.modalities.planning.env import env_spec

__all__ = ["forward_velocity", "env_return", "executed_match", "within_tolerance", "PLANNING_REWARDS"]


def forward_velocity(samples, prompts=None, env: str = "Hopper-v5") -> torch.Tensor:
    """(B,) the torso's mean forward velocity (m/s) while the plan executes: x displacement / (T dt)."""
    from diffalign.modalities.planning.execute import execute_plans
    run = execute_plans(samples, env)
    return run.progress / (samples.shape[1] * env_spec(env).dt)


def env_return(samples, prompts=None, env: str = "Hopper-v5") -> torch.Tensor:
    """(B,) the sum of the environment's own rewards over the executed plan (Hopper: forward velocity + 1 per
    healthy step - 1e-3 |a|^2), 0 from the step it terminates."""
    from diffalign.modalities.planning.execute import execute_plans
    return execute_plans(samples, env).returns


_STRENGTH_MODELS: Dict[str, Any] = {}  # folder -> loaded strength model (a reward is called every epoch)
_INVERSE_DYNAMICS: Dict[str, Any] = {}  # folder -> loaded inverse dynamics


def _inverse_dynamics(folder: str):
    from diffalign.modalities.planning.execute import INVERSE_DYNAMICS_FILE, load_inverse_dynamics
    if folder not in _INVERSE_DYNAMICS:
        model = load_inverse_dynamics(folder)
        if model is None:
            raise FileNotFoundError(f"planning_executed_match: inverse_dynamics {folder!r} holds no "
                                    f"{INVERSE_DYNAMICS_FILE}")
        _INVERSE_DYNAMICS[folder] = model
    return _INVERSE_DYNAMICS[folder]


def executed_match(samples, prompts=None, strength_model: str = "", env: str = "Hopper-v5",
                   tolerance: float = 0.1, match_bonus: float = 0.0, inverse_dynamics: str = "") -> torch.Tensor:
    """(B,) -mean |achieved - requested| attribute strength of each plan executed in the environment (its own
    actions open loop, or with ``inverse_dynamics``, a folder holding one, closed loop toward its planned states:
    execute.execute_plans), achieved strengths from AlignDiff's strength model in the folder ``strength_model``
    (items carry the requested ``targets``; diffalign/rewards/attribute_strength.py), plus ``match_bonus`` for a
    plan whose every requested strength lies within ``tolerance`` (the match-rate criterion,
    diffalign.rewards.strength_metrics: the error term alone lets a policy trade a few matches for a lower mean
    error)."""
    from diffalign.modalities.planning.execute import execute_plans
    from diffalign.rewards.attribute_strength import load_attribute_strength
    from diffalign.rewards.behaviour import requested_targets
    if tolerance < 0 or match_bonus < 0:
        raise ValueError(f"planning_executed_match: tolerance and match_bonus must be >= 0, got {tolerance!r}, "
                         f"{match_bonus!r}")
    if strength_model not in _STRENGTH_MODELS:
        _STRENGTH_MODELS[strength_model] = load_attribute_strength(strength_model)
    model = _STRENGTH_MODELS[strength_model]
    idm = _inverse_dynamics(inverse_dynamics) if inverse_dynamics else None
    executed = execute_plans(samples, env, idm).trajectories
    with torch.no_grad():
        reward = model(executed, prompts).float()
        if match_bonus:
            reward = reward + match_bonus * within_tolerance(model.strengths(executed), model.aspects,
                                                             requested_targets(prompts, len(executed)),
                                                             tolerance).float()
    return reward


def within_tolerance(achieved: torch.Tensor, aspects, targets, tolerance: float) -> torch.Tensor:
    """(B,) bool: every requested strength of item b within ``tolerance`` of ``achieved`` (B, len(aspects))."""
    names = list(aspects)
    return torch.tensor([all(abs(float(achieved[b, names.index(k)]) - v) <= tolerance
                             for k, v in t.items() if k in names) for b, t in enumerate(targets)], dtype=torch.bool)


PLANNING_REWARDS = {"planning_forward_velocity": forward_velocity, "planning_env_return": env_return,
                    "planning_executed_match": executed_match}
