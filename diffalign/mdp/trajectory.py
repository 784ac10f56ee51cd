"""The denoising MDP as a policy: classifier-free-guided transitions and recorded rollouts.

:class:`DiffusionPolicy` joins a modality adapter and a step rule. ``sample`` records a
:class:`Trajectory`; ``transition`` recomputes (or draws) one step. Both go through the same
``predict`` -> ``rule.step`` path, so scoring a recorded step at training time reproduces the
rollout's log-prob (tests/mdp/test_trajectory.py checks this at batch sizes 1, 3 and 8).

Layout choice: trajectories are batch-first, ``latents`` is (B, T+1, ...) and ``log_probs`` (B, T),
so that selecting samples (minibatches, gathering across processes, groups) is one indexing op on
every field; a time-first layout would need a transpose at each of those (docs/design.md, section 3).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional, Sequence, Union

import torch

from diffalign.mdp.steps import StepRule
from diffalign.modalities.base import Conditions, ModalityAdapter, batch_size_of, cat_conditions, index_conditions
from diffalign.ops import StepOutput

__all__ = ["DiffusionPolicy", "Trajectory"]

LOGPROB_REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass
class Trajectory:
    """One rollout batch. B samples, T steps."""

    latents: torch.Tensor        # (B, T+1, ...): x_T (index 0) ... x_0 (index T)
    log_probs: torch.Tensor      # (B, T) float32, log p(x_{i+1 slot} | x_{i slot}) under the sampling policy
    cond: Conditions             # batch-first tensors
    step_indices: torch.Tensor   # (T,) long: the step rule's indices 0..T-1

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    @property
    def x0(self) -> torch.Tensor:
        return self.latents[:, -1]

    def select(self, index) -> "Trajectory":
        """The sub-batch of samples at ``index`` (tensor of indices, slice or bool mask)."""
        return Trajectory(self.latents[index], self.log_probs[index], index_conditions(self.cond, index),
                          self.step_indices)

    def states_at(self, steps: torch.Tensor):
        """(x_t, x_prev, old_log_prob) for per-sample step indices ``steps`` (B,)."""
        rows = torch.arange(self.batch_size, device=self.latents.device)
        steps = steps.to(self.latents.device)
        return self.latents[rows, steps], self.latents[rows, steps + 1], self.log_probs[rows, steps]


class DiffusionPolicy:
    """p_theta(x_{t-1} | x_t, c) for an adapter and a step rule, with classifier-free guidance.

    logprob_reduction: "mean" (the public trainers' convention: log-probs are averaged over the
    non-batch dims, so log-ratios are ~1/D of the true ones and PPO clip ranges are ~1e-4) or "sum"
    (the true log-density; ratios then need clip ranges of ordinary PPO size and are much larger).
    """

    def __init__(self, adapter: ModalityAdapter, rule: StepRule, guidance_scale: float = 1.0,
                 logprob_reduction: str = "mean"):
        if logprob_reduction not in LOGPROB_REDUCTIONS:
            raise ValueError(f"logprob_reduction must be one of {LOGPROB_REDUCTIONS}, got {logprob_reduction!r}")
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        self.adapter = adapter
        self.rule = rule
        self.guidance_scale = float(guidance_scale)
        self.logprob_reduction = logprob_reduction
        self._reference = False

    # ---- views ------------------------------------------------------------------------------------
    def reference(self) -> "DiffusionPolicy":
        """The frozen reference policy: same rule and guidance, adapter in reference mode, no grad."""
        ref = DiffusionPolicy(self.adapter, self.rule, self.guidance_scale, self.logprob_reduction)
        ref._reference = True
        return ref

    def _context(self):
        if not self._reference:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(self.adapter.reference_mode())
        return stack

    # ---- one step ---------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, steps, cond: Conditions, guided: bool = True) -> torch.Tensor:
        """Guided model output at step indices ``steps`` (int or (B,)); ``guided=False`` gives the
        plain conditional output (what denoising losses train).

        With guidance the unconditional and conditional branches run as ONE batch of 2B rows,
        [uncond; cond], in rollouts and at training time alike (same batch layout, same numerics).
        """
        t = self.rule.model_timesteps(steps, x)
        with self._context():
            if self.guidance_scale == 1.0 or not guided:
                return self.adapter.denoise(x, t, cond)
            both = cat_conditions([self.adapter.unconditional(cond), cond])
            out = self.adapter.denoise(torch.cat([x, x]), torch.cat([t, t]), both)
            uncond, text = out.chunk(2)
            return uncond + self.guidance_scale * (text - uncond)

    def transition(self, x_t: torch.Tensor, steps, cond: Conditions, prev_sample: Optional[torch.Tensor] = None,
                   noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> StepOutput:
        """Score ``prev_sample`` (or draw one) from x_t at step indices ``steps``; log_prob is (B,) float32."""
        out = self.rule.step(steps, self.predict(x_t, steps, cond), x_t, prev_sample=prev_sample, noise=noise,
                             generator=generator)
        return self._reduce(out, x_t)

    def _reduce(self, out: StepOutput, x_t: torch.Tensor) -> StepOutput:
        # the ops return the mean over non-batch dims; the sum is exactly D times it
        if self.logprob_reduction == "sum":
            out = out._replace(log_prob=out.log_prob * math.prod(x_t.shape[1:]))
        return out

    # ---- a rollout ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cond: Conditions, generator: Union[None, torch.Generator, Sequence[torch.Generator]] = None,
               x_T: Optional[torch.Tensor] = None) -> Trajectory:
        """Run the whole chain from x_T, recording every state and per-step log-prob.

        ``generator`` may be one generator for the batch or one per sample: per-sample generators
        make each trajectory independent of how samples are split into batches or processes (the
        trainer uses them so that 2 processes x B/2 samples reproduce 1 process x B).
        """
        per_sample = isinstance(generator, (list, tuple))
        if per_sample and len(generator) != batch_size_of(cond):
            raise ValueError(f"{len(generator)} generators for {batch_size_of(cond)} samples")
        if x_T is not None:
            x = x_T
        elif per_sample:
            x = torch.cat([self.adapter.initial_noise(index_conditions(cond, slice(b, b + 1)), g)
                           for b, g in enumerate(generator)])
        else:
            x = self.adapter.initial_noise(cond, generator)
        states, log_probs = [x], []
        for i in range(self.rule.num_steps):
            model_output = self.predict(x, i, cond)
            if per_sample and self.rule.stochastic:
                noise = torch.stack([_randn(x.shape[1:], g, x) for g in generator])
                out = self.rule.step(i, model_output, x, noise=noise)
            else:
                out = self.rule.step(i, model_output, x, generator=None if per_sample else generator)
            kept = self.adapter.project(out.prev_sample, cond)
            if kept is not out.prev_sample:  # a constraint moved the sample: score what is actually kept
                out = self.rule.step(i, model_output, x, prev_sample=kept)
            log_probs.append(self._reduce(out, x).log_prob)
            x = kept
            states.append(x)
        steps = torch.arange(self.rule.num_steps)
        return Trajectory(torch.stack(states, dim=1), torch.stack(log_probs, dim=1), cond, steps)


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, moved to like's device and dtype."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
