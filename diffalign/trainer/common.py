"""What the differentiable-sampling and step-pair loops share: setup, per-sample noise, evaluation, the epoch loop.

Setup follows the online loop (trainer/online.py): accelerate, adapter, policy, algorithm, reward, AdamW with
linear warm-up, resume, metrics logger. The reward table adds the differentiable rewards
(rewards/differentiable.py) to the modality's own, so ``reward.name: differentiable_color_target`` resolves.

``lora_scale`` is DRaFT's over-optimisation control (survey section 4.1): sampling with the LoRA update
scaled by s in [0, 1] interpolates between the base model (s = 0) and the trained one (s = 1).
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Sequence, Tuple

import torch

from diffalign.modalities.base import index_conditions, unwrap
from diffalign.rewards import bind_reward_kwargs, call_reward, load_prompts, resolve_reward
from diffalign.rewards.differentiable import DIFFERENTIABLE_REWARDS
from diffalign.trainer import checkpoint as ckpt
from diffalign.trainer.builders import MODALITIES, build_adapter, build_algorithm, build_optimizer, build_policy
from diffalign.trainer.distributed import generator, make_accelerator
from diffalign.trainer.logging import MetricsLogger

__all__ = ["reward_table", "lora_scale", "draw_noise", "SampledTrainer"]


def reward_table(modality: str) -> Dict[str, object]:
    """Rewards by name for a run of these loops: the modality's own plus the differentiable ones."""
    return {**DIFFERENTIABLE_REWARDS, **MODALITIES[modality].rewards()}


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
    """x_T (B, ...) and step noise (B, T, ...), sample b drawn from gens[b] alone (split-independent)."""
    xs, noises = [], []
    for b, g in enumerate(gens):
        x = adapter.initial_noise(index_conditions(cond, slice(b, b + 1)), g)
        xs.append(x)
        noises.append(torch.randn((num_steps,) + tuple(x.shape[1:]), generator=g, device=g.device,
                                  dtype=x.dtype).to(x.device))
    return torch.cat(xs), torch.stack(noises)


class SampledTrainer(ckpt.CheckpointedTrainer):
    """Setup and the epoch loop; subclasses implement ``run_epoch(epoch) -> metrics``."""

    def __init__(self, cfg, accelerator=None):
        self.cfg = cfg
        self.acc = accelerator or make_accelerator(cfg.train.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.prompts = load_prompts(cfg.prompts.list, cfg.prompts.file)
        self.adapter = build_adapter(cfg, self.prompts, self.acc.device)
        self.policy = build_policy(cfg, self.adapter)
        self.algorithm = build_algorithm(cfg)
        self.reward_fn = bind_reward_kwargs(resolve_reward(cfg.reward.name, {**DIFFERENTIABLE_REWARDS,
                                                                             **self.adapter.rewards()}),
                                            cfg.reward.name, cfg.reward.kwargs)
        t = cfg.train
        optimizer, scheduler = build_optimizer(t, self.adapter.trainable_parameters())
        self.adapter.denoiser, self.optimizer, self.lr_scheduler = self.acc.prepare(
            self.adapter.denoiser, optimizer, scheduler)
        self.start_epoch = 0
        resume = ckpt.resolve_resume(cfg.output_dir, cfg.resume_from)
        if resume is not None:
            self.load(resume)
        self.logger = MetricsLogger(cfg.output_dir, cfg.logging.tensorboard, self.start_epoch) \
            if self.acc.is_main_process else None
        self._last_decoded = None

    # ---- shared pieces -------------------------------------------------------------------------------
    def batch_prompts(self, epoch: int, n: int, total: int) -> List[str]:
        picks = torch.randint(len(self.prompts), (total,), generator=generator(self.cfg.seed, epoch, n, "prompts"))
        return [self.prompts[i] for i in picks.tolist()]

    def step_optimizer(self) -> float:
        grad_norm = self.acc.clip_grad_norm_(self.adapter.trainable_parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def reduce_metrics(self, sums: Dict[str, float], count: int) -> Dict[str, float]:
        keys = sorted(sums)
        local = torch.tensor([sums[k] / max(count, 1) for k in keys], device=self.acc.device, dtype=torch.float64)
        mean = self.acc.reduce(local, reduction="mean")
        return {k: float(v) for k, v in zip(keys, mean.tolist())}

    @torch.no_grad()
    def evaluate(self, scale: float = 1.0) -> Tuple[float, torch.Tensor]:
        """Mean reward of sampling.batch_size samples with fixed prompts and seeds (the same every epoch),
        LoRA scaled by ``scale``: the run's target, free of the training draws' noise."""
        n = self.cfg.sampling.batch_size
        prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        cond = self.adapter.encode_conditions(prompts)
        gens = [generator(self.cfg.seed, "eval", g) for g in range(n)]
        self.adapter.denoiser.eval()
        with lora_scale(self.adapter, scale), self.acc.autocast():
            traj = self.policy.sample(cond, generator=gens)
        decoded = self.adapter.decode(traj.x0, cond)
        return float(call_reward(self.reward_fn, decoded, prompts, self.acc.device).mean()), decoded

    def run_epoch(self, epoch: int) -> Dict[str, float]:
        raise NotImplementedError

    def train(self) -> List[Dict[str, float]]:
        from tqdm.auto import tqdm
        cfg = self.cfg
        history = []
        bar = tqdm(range(self.start_epoch, cfg.epochs), initial=self.start_epoch, total=cfg.epochs, desc="epochs",
                   disable=not (cfg.logging.progress_bar and self.acc.is_main_process))
        for epoch in bar:
            metrics = self.run_epoch(epoch)
            history.append(metrics)
            if self.logger is not None:
                image = None
                if cfg.logging.tensorboard and epoch % cfg.logging.image_every == 0 and self._last_decoded is not None:
                    image = self.adapter.sample_grid(self._last_decoded)
                self.logger.log(metrics, image)
            bar.set_postfix(eval_reward=f"{metrics['eval_reward']:.4g}", loss=f"{metrics['loss']:.3g}")
            if (epoch + 1) % cfg.checkpoint.every == 0 or epoch + 1 == cfg.epochs:
                self.save(epoch)
            self.acc.wait_for_everyone()
        if self.logger is not None:
            self.logger.close()
            self.adapter.save_pretrained(os.path.join(cfg.output_dir, "final"))
        return history
