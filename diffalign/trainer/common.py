"""What the differentiable-sampling and step-pair loops share beyond :class:`diffalign.trainer.base.Trainer`:
the reward table, per-sample noise, prompt draws, fixed-seed evaluation and LoRA scaling.

The reward table adds the differentiable rewards (rewards/differentiable.py) to the modality's own, so
``reward.name: differentiable_color_target`` resolves.

``lora_scale`` is DRaFT's over-optimisation control (survey section 4.1): sampling with the LoRA update
scaled by s in [0, 1] interpolates between the base model (s = 0) and the trained one (s = 1).
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Sequence, Tuple

import torch

from diffalign import registry
from diffalign.mdp import draw_noise as mdp_draw_noise
from diffalign.modalities.base import unwrap
from diffalign.rewards import bind_reward_kwargs, call_reward, resolve_reward
from diffalign.rewards.differentiable import DIFFERENTIABLE_REWARDS
from diffalign.trainer.base import Trainer
from diffalign.trainer.distributed import generator

__all__ = ["reward_table", "lora_scale", "draw_noise", "SampledTrainer"]


def reward_table(modality: str) -> Dict[str, object]:
    """Rewards by name for a run of these loops: the modality's own plus the differentiable ones."""
    return {**DIFFERENTIABLE_REWARDS, **registry.modalities[modality].rewards()}


def reward_table_of(adapter) -> Dict[str, object]:
    """The same table for a built adapter (its rewards may depend on its options)."""
    return {**DIFFERENTIABLE_REWARDS, **adapter.rewards()}


@contextlib.contextmanager
def lora_scale(adapter, scale: float):
    """Run the adapter's denoiser with every LoRA update multiplied by ``scale`` (restored on exit)."""
    scale = float(scale)
    if scale == 1.0:
        yield
        return
    if not scale >= 0:
        raise ValueError(f"lora_scale must be >= 0, got {scale}")
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        LoraLayer = ()
    layers = [m for m in unwrap(adapter.denoiser).modules() if LoraLayer and isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError(f"lora_scale = {scale} needs LoRA adapters on the denoiser (modality.options.lora_rank > 0); "
                         f"{type(adapter).__name__} has none")
    saved = [(m, dict(m.scaling)) for m in layers]
    try:
        for m, s in saved:
            for name, value in s.items():
                m.scaling[name] = value * scale
        yield
    finally:
        for m, s in saved:
            m.scaling.update(s)


def draw_noise(adapter, cond, gens: Sequence[torch.Generator], num_steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """x_T (B, ...) and step noise (B, T, ...), sample b drawn from gens[b] alone (split-independent), in
    the rollouts' order and through the adapter's ``project_noise`` (diffalign.mdp.draw_noise)."""
    return mdp_draw_noise(adapter, cond, gens, num_steps)


class SampledTrainer(Trainer):
    """The base of the differentiable-sampling and step-pair loops; subclasses implement ``run_epoch``."""

    def build_reward_fn(self):
        return bind_reward_kwargs(resolve_reward(self.cfg.reward.name, reward_table_of(self.adapter)),
                                  self.cfg.reward.name, self.cfg.reward.kwargs)

    def progress_postfix(self, metrics: Dict[str, float]) -> Dict[str, str]:
        return {"eval_reward": f"{metrics['eval_reward']:.4g}", "loss": f"{metrics['loss']:.3g}"}

    # ---- shared pieces -------------------------------------------------------------------------------
    def batch_prompts(self, epoch: int, n: int, total: int) -> List[str]:
        picks = torch.randint(len(self.prompts), (total,), generator=generator(self.cfg.seed, epoch, n, "prompts"))
        return [self.prompts[i] for i in picks.tolist()]

    @torch.no_grad()
    def evaluate(self, scale: float = 1.0) -> Tuple[float, torch.Tensor]:
        """Mean reward of sampling.batch_size samples with fixed prompts and seeds (the same every epoch),
        LoRA scaled by ``scale``: the run's target, free of the training draws' noise."""
        n = self.cfg.sampling.batch_size
        prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        cond = self.adapter.encode_conditions(prompts, [generator(self.cfg.seed, "eval", g, "conditions") for g in range(n)])
        gens = [generator(self.cfg.seed, "eval", g) for g in range(n)]
        self.adapter.denoiser.eval()
        with lora_scale(self.adapter, scale), self.acc.autocast():
            traj = self.policy.sample(cond, generator=gens)
        decoded = self.adapter.decode(traj.x0, cond)
        return float(call_reward(self.reward_fn, decoded, prompts, self.acc.device).mean()), decoded
