"""Toy modality: an MLP denoiser over R^d with closed-form rewards (fast tests, CPU demos)."""
from diffalign.modalities.toy.adapter import MLPDenoiser, ToyAdapter, make_scheduler, timestep_embedding
from diffalign.modalities.toy.rewards import TOY_REWARDS, first_coordinate, prompt_target, target_distance

__all__ = ["ToyAdapter", "MLPDenoiser", "make_scheduler", "timestep_embedding", "TOY_REWARDS", "target_distance",
           "first_coordinate", "prompt_target"]
