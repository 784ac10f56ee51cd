"""The generator loop (data path ``generator``: SDS): train a generator the algorithm owns against the frozen model.

An epoch is sampling.num_batches_per_epoch optimiser steps; each step is train.gradient_accumulation_steps loss
evaluations of train.batch_size renders per process. Every render draws its prompt, its view (the generator's own
randomness), its timestep (among ``algorithm.allowed_steps`` of the step rule at the global optimiser step, which
timestep annealing narrows) and its noise from one generator
seeded by (seed, epoch, step, global render index), so a resumed run or another process count draws the same.
The render is noised with the step rule's forward process and scored by the critic: the policy's frozen reference
view with the algorithm's guidance scale (no gradient through the denoiser, which is frozen here: only the
algorithm's modules are optimised; see trainer/base.py). sampling.batch_size and sampling.guidance_scale are not
used on this path; sampling.num_steps sets the timestep grid.
"""
from __future__ import annotations

import time
from typing import Dict, List

import torch

from diffalign.algorithms.score_distillation import GeneratorAlgorithm, GeneratorBatch
from diffalign.mdp import DiffusionPolicy
from diffalign.rewards import bind_reward_kwargs, call_reward, resolve_reward
from diffalign.trainer.base import Trainer
from diffalign.trainer.common import reward_table_of
from diffalign.trainer.distributed import derive_seed, generator

__all__ = ["GeneratorTrainer"]


class GeneratorTrainer(Trainer):
    def __init__(self, cfg, accelerator=None):
        super().__init__(cfg, accelerator)
        if not isinstance(self.algorithm, GeneratorAlgorithm):
            raise TypeError(f"the generator loop needs a GeneratorAlgorithm; {self.algorithm.name!r} is a "
                            f"{type(self.algorithm).__name__}")
        self.allowed_steps = self.algorithm.allowed_steps(self.policy.rule, 0)  # checked at set-up
        # the critic: the frozen base model (reference mode, no grad) with the algorithm's guidance
        self.critic = DiffusionPolicy(self.adapter, self.policy.rule, self.algorithm.guidance_scale,
                                      self.policy.logprob_reduction).reference()

    def build_reward_fn(self):
        if not self.algorithm.uses_reward:  # DreamFL's reward term or RewardSDS's sample weights
            return None
        return bind_reward_kwargs(resolve_reward(self.cfg.reward.name, reward_table_of(self.adapter)),
                                  self.cfg.reward.name, self.cfg.reward.kwargs)

    def progress_postfix(self, metrics: Dict[str, float]) -> Dict[str, str]:
        return {"loss": f"{metrics['loss']:.3g}", "sds_grad": f"{metrics.get('sds_grad_norm', float('nan')):.3g}"}

    def _reward(self, cond, prompts):
        if self.reward_fn is None:
            return None

        def reward(x: torch.Tensor) -> torch.Tensor:
            return call_reward(self.reward_fn, self.adapter.decode_with_grad(x, cond), prompts, self.acc.device)
        return reward

    def draw(self, gens: List[torch.Generator], step: int = 0):
        """Prompts, conditions, renders, step indices and noise of one loss evaluation (render b from gens[b]) at
        global optimiser step ``step``."""
        prompts = [self.prompts[int(torch.randint(len(self.prompts), (1,), generator=g))] for g in gens]
        cond = self.adapter.encode_conditions(prompts, gens)
        x = self.algorithm.render(self.modules, cond, gens, adapter=self.adapter)
        allowed = self.algorithm.allowed_steps(self.policy.rule, step)
        picks = torch.cat([torch.randint(len(allowed), (1,), generator=g) for g in gens])
        steps = allowed[picks]
        noise = torch.stack([torch.randn(tuple(x.shape[1:]), generator=g, dtype=torch.float32) for g in gens])
        return prompts, cond, x, steps, self.adapter.project_noise(noise.to(x.device, x.dtype), cond)

    def run_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, s, t = self.cfg, self.cfg.sampling, self.cfg.train
        torch.manual_seed(derive_seed(cfg.seed, epoch, self.rank, "torch"))
        start = time.perf_counter()
        for m in self.modules.values():
            m.train()
        self.adapter.denoiser.eval()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        count, renders = 0, 0
        accum, b = t.gradient_accumulation_steps, t.batch_size
        for n in range(s.num_batches_per_epoch):
            for a in range(accum):
                first = (a * self.world + self.rank) * b  # global index of this process's first render
                gens = [generator(cfg.seed, epoch, n, g, "render") for g in range(first, first + b)]
                with self.acc.autocast():
                    prompts, cond, x, steps, noise = self.draw(gens, epoch * s.num_batches_per_epoch + n)
                    batch = GeneratorBatch(x, steps, noise, cond, prompts, self._reward(cond, prompts))
                    loss, metrics = self.algorithm.loss(batch, self.policy, self.critic)
                self.accumulate(loss, metrics, sums, 1.0 / accum, sync=a == accum - 1)
                count += 1
                renders += b
            self.step_optimizer(sums, weight=accum)
            if self.out_of_time():  # train.max_minutes: end the epoch after this optimiser step
                break
        train_s = time.perf_counter() - start
        return {"epoch": epoch, **self.reduce_metrics(sums, count), "samples_per_s": renders / max(train_s, 1e-9),
                "train_s": train_s, **self.run_info()}
