"""The differentiable-sampling loop (data path ``differentiable_sampling``: ReFL, DRaFT-K, DRaFT-LV, AlignProp).

Each epoch: ``eval_reward`` of fixed-seed samples (LoRA scaled by ``algorithm.lora_scale``), then
sampling.num_batches_per_epoch batches of sampling.batch_size prompts per process, split into minibatches of
train.batch_size samples; each minibatch is one ``algorithm.loss`` (a chain sampled with the reward's
gradient) and the optimiser steps every train.gradient_accumulation_steps minibatches. As in the online loop,
every draw comes from a generator seeded by (seed, epoch, batch, global sample index), so a resumed run or a
different process count draws the same x_T and step noise.

``algorithm.partial_chain.source: data`` (InstructVideo's partial chains from given clips): every prompt item is a
mapping whose ``"sample"`` names a stored sample (a video file, a frame folder, an image: whatever the adapter's
``load_sample`` reads); the batch's clean samples x0 are those, encoded by the adapter.
"""
from __future__ import annotations

import time
from typing import Dict

import torch

from diffalign.algorithms.direct_reward import SamplingBatch
from diffalign.rewards import call_reward
from diffalign.trainer.common import SampledTrainer, draw_noise
from diffalign.trainer.distributed import derive_seed, generator

__all__ = ["DifferentiableTrainer"]


class DifferentiableTrainer(SampledTrainer):
    def __init__(self, cfg, accelerator=None):
        super().__init__(cfg, accelerator)
        self.algorithm.check_steps(self.policy.rule.num_steps)
        pc = getattr(self.algorithm.config, "partial_chain", None)
        self.given_samples = pc is not None and pc["source"] == "data"
        if self.given_samples:
            for i, item in enumerate(self.prompts):
                if not isinstance(item, dict) or not item.get("sample"):
                    raise ValueError(f"algorithm.partial_chain.source 'data' needs every prompt item to be a mapping "
                                     f"with a 'sample' (a stored sample to start from); prompt item {i} is {item!r}")

    def _given_x0(self, items) -> torch.Tensor:
        """The clean samples the items name, encoded by the adapter (partial chains from data)."""
        x0, _ = self.adapter.encode([self.adapter.load_sample(item["sample"]) for item in items], items)
        return x0

    def _reward(self, cond, prompts):
        def reward(x0: torch.Tensor) -> torch.Tensor:
            return call_reward(self.reward_fn, self.adapter.decode_with_grad(x0, cond), prompts, self.acc.device)
        return reward

    def run_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, s, t = self.cfg, self.cfg.sampling, self.cfg.train
        torch.manual_seed(derive_seed(cfg.seed, epoch, self.rank, "torch"))
        eval_reward, self._last_decoded = self.evaluate(self.algorithm.config.lora_scale)
        start = time.perf_counter()
        self.adapter.denoiser.train()
        reference = self.policy.reference() if self.algorithm.needs_reference else None
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        count, minibatch = 0, 0
        for n in range(s.num_batches_per_epoch):
            prompts = self.batch_prompts(epoch, n, s.batch_size * self.world)
            first = self.rank * s.batch_size
            for m0 in range(0, s.batch_size, t.batch_size):
                g0 = first + m0
                mine = prompts[g0:g0 + t.batch_size]
                cond = self.adapter.encode_conditions(
                    mine, [generator(cfg.seed, epoch, n, g, "conditions") for g in range(g0, g0 + len(mine))])
                gens = [generator(cfg.seed, epoch, n, g, "noise") for g in range(g0, g0 + len(mine))]
                x_T, noise = draw_noise(self.adapter, cond, gens, s.num_steps)
                batch = SamplingBatch(cond, mine, x_T, noise, self._reward(cond, mine),
                                      generator(cfg.seed, epoch, n, g0, "method"),
                                      x0=self._given_x0(mine) if self.given_samples else None)
                minibatch += 1
                last = minibatch % t.gradient_accumulation_steps == 0
                with self.acc.autocast():
                    loss, metrics = self.algorithm.loss(batch, self.policy, reference)
                self.accumulate(loss, metrics, sums, 1.0 / t.gradient_accumulation_steps, sync=last)
                count += 1
                if last:
                    self.step_optimizer(sums, weight=t.gradient_accumulation_steps)
                    if self.out_of_time():  # train.max_minutes: end the epoch after this optimiser step
                        break
            if self.out_of_time():
                break
        out = {"epoch": epoch, "eval_reward": eval_reward, **self.reduce_metrics(sums, count),
               "train_s": time.perf_counter() - start, **self.run_info()}
        return out
