"""Reward-model training: Bradley-Terry / Plackett-Luce losses with ties, multi-aspect heads, a CLIP-like
model with a frozen, LoRA or fully tuned backbone, and the trainer behind ``diffalign reward train``."""
from diffalign.rewards.training.losses import (TIE_POLICIES, bradley_terry_loss, multi_aspect_loss, pair_nll,
                                               plackett_luce_loss, ranked_pairwise_loss)

__all__ = ["TIE_POLICIES", "bradley_terry_loss", "multi_aspect_loss", "pair_nll", "plackett_luce_loss",
           "ranked_pairwise_loss"]
