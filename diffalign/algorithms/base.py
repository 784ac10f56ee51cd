"""What every algorithm is: hyper-parameters, a declared data path, advantages and a loss.

The trainer owns loops, devices, accumulation, logging and checkpoints; an algorithm only turns a
batch of recorded transitions into a scalar loss (and keeps whatever statistics its advantages need,
which it exposes through state_dict for exact resume).
"""
from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from diffalign.modalities.base import Conditions

Metrics = Dict[str, torch.Tensor]


class DataPath(str, enum.Enum):
    """Which loop feeds the algorithm."""

    ONLINE_ROLLOUT = "online_rollout"  # sample trajectories with per-step log-probs, score, optimise
    OFFLINE_PAIRS = "offline_pairs"    # stored preference pairs, forward-noised (DPO family; trainer/offline.py)
    OFFLINE_LABELS = "offline_labels"  # stored binary feedback (KTO); pairs are split into 2n labels
    DIFFERENTIABLE_SAMPLING = "differentiable_sampling"  # reward gradients through the chain (trainer/differentiable.py)
    STEP_PAIRS = "step_pairs"          # per-step preference pairs from shared states (D3PO, SPO; trainer/step_pairs.py)
    GENERATOR = "generator"            # a generator the algorithm owns, trained against the frozen diffusion model as
                                       # a critic (score distillation; trainer/generator.py)


@dataclasses.dataclass
class TransitionBatch:
    """One training step's worth of recorded transitions: sample b moves x_t[b] -> x_prev[b] at steps[b]."""

    x_t: torch.Tensor             # (B, ...)
    x_prev: torch.Tensor          # (B, ...)
    steps: torch.Tensor           # (B,) long, step-rule indices
    old_log_prob: torch.Tensor    # (B,) float32, log-prob under the policy that sampled it
    advantages: torch.Tensor      # (B,) float32 (weights for RWR)
    cond: Conditions
    x0: torch.Tensor              # (B, ...) the final sample of each trajectory
    num_steps: int                # T, the trajectory length


class Algorithm(abc.ABC):
    """Base class. Subclasses set ``name``, ``config_class`` and implement ``loss``."""

    name: str = ""
    config_class: type = object
    data_path: DataPath = DataPath.ONLINE_ROLLOUT

    def __init__(self, config: Optional[Any] = None):
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{type(self).__name__} wants a {self.config_class.__name__}, got {type(config).__name__}")

    @property
    def needs_reference(self) -> bool:
        """Whether loss() reads the reference policy (the trainer skips its forward otherwise)."""
        return False

    @property
    def minibatch_group_size(self) -> int:
        """Samples per prompt group that the online trainer keeps together: each minibatch then holds whole
        groups (consecutive in the batch) trained at the same steps. 1: samples are shuffled one by one."""
        return 1

    @abc.abstractmethod
    def advantages(self, rewards: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-sample advantages (B,) from the rewards of the WHOLE rollout batch (all processes)."""

    @abc.abstractmethod
    def loss(self, batch: TransitionBatch, policy, reference) -> Tuple[torch.Tensor, Metrics]:
        """Scalar loss on one transition batch and detached metrics (policy: DiffusionPolicy;
        reference: its frozen view, or None when ``needs_reference`` is False)."""

    def trainable_modules(self, adapter, sample_shape: Tuple[int, ...]) -> Dict[str, nn.Module]:
        """Trainable modules the algorithm owns outside ``adapter.denoiser``, by name (the generator data path:
        the trainer asks for them once, with the shape of one sample without its batch dim, then prepares,
        optimises, checkpoints and saves them in ``final``; the denoiser stays frozen). Default: none."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state but the checkpoint has {sorted(state)}")
