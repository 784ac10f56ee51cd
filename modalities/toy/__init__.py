"""Toy modality: an MLP denoiser over R^d with closed-form rewards (fast tests, CPU demos), and two variants
that exercise the rest of the adapter contract: point sets (masks, projected noise, drawn conditions;
points.py) and a dual-condition model with three-branch guidance (dual.py)."""
from diffalign.modalities.toy.adapter import MLPDenoiser, ToyAdapter, make_scheduler, timestep_embedding
from diffalign.modalities.toy.dual import DualDenoiser, ToyDualAdapter
from diffalign.modalities.toy.points import SetDenoiser, ToyPointsAdapter, center
from diffalign.modalities.toy.rewards import (POINT_REWARDS, TOY_REWARDS, first_coordinate, points_radius,
                                              prompt_target, target_distance)

__all__ = ["ToyAdapter", "MLPDenoiser", "make_scheduler", "timestep_embedding", "TOY_REWARDS", "target_distance",
           "first_coordinate", "prompt_target", "ToyDualAdapter", "DualDenoiser", "ToyPointsAdapter", "SetDenoiser",
           "center", "POINT_REWARDS", "points_radius"]
