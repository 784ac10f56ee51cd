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

from diffalign.mdp.chain import draw_step_noise, run_chain
from diffalign.mdp.steps import StepRule
from diffalign.modalities.base import (Conditions, Generators, ModalityAdapter, batch_size_of, cat_conditions,
                                       index_conditions)
from diffalign.ops import StepOutput
from diffalign.ops.reference import per_sample_mse

__all__ = ["DiffusionPolicy", "Trajectory", "element_count"]

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

        With guidance the adapter's branches (default [unconditional; conditional]) run as ONE batch of
        k*B rows, in rollouts and at training time alike (same batch layout, same numerics), and the
        adapter combines them (default: classifier-free guidance at ``guidance_scale``).
        """
        t = self.rule.model_timesteps(steps, x)
        with self._context():
            if self.guidance_scale == 1.0 or not guided:
                return self.adapter.denoise(x, t, cond)
            branches = self.adapter.guidance_branches(cond)
            k = len(branches)
            out = self.adapter.denoise(torch.cat([x] * k), torch.cat([t] * k), cat_conditions(branches))
            return self.adapter.combine_guidance(out.chunk(k), self.guidance_scale)

    def step(self, steps, x_t: torch.Tensor, cond: Conditions, model_output: Optional[torch.Tensor] = None,
             prev_sample: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
             generator: Generators = None) -> StepOutput:
        """One transition from x_t: scores ``prev_sample``, or draws one with ``noise`` (or noise drawn from
        ``generator`` through the adapter's ``project_noise``). The log-prob is reduced over the adapter's
        ``logprob_mask`` and, where the adapter gives ``logprob_dims``, is the density in that subspace."""
        if model_output is None:
            model_output = self.predict(x_t, steps, cond)
        if prev_sample is None and noise is None and self.rule.stochastic:
            noise = draw_step_noise(self.adapter, cond, x_t, generator)
        mask = self.adapter.logprob_mask(cond, x_t)
        extra = {} if mask is None else {"mask": mask}
        out = self.rule.step(steps, model_output, x_t, prev_sample=prev_sample, noise=noise, **extra)
        return self._reduce(out, x_t, cond, mask)

    def transition(self, x_t: torch.Tensor, steps, cond: Conditions, prev_sample: Optional[torch.Tensor] = None,
                   noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> StepOutput:
        """Score ``prev_sample`` (or draw one) from x_t at step indices ``steps``; log_prob is (B,) float32."""
        return self.step(steps, x_t, cond, prev_sample=prev_sample, noise=noise, generator=generator)

    def _reduce(self, out: StepOutput, x_t: torch.Tensor, cond: Conditions, mask: Optional[torch.Tensor]) -> StepOutput:
        """The step ops give the (masked) mean of per-element log-densities; turn it into this policy's
        reduction, counting the subspace's dimensions when the adapter gives them."""
        dims = self.adapter.logprob_dims(cond, x_t)
        if mask is None and dims is None:
            if self.logprob_reduction == "sum":  # the sum is exactly D times the mean
                out = out._replace(log_prob=out.log_prob * math.prod(x_t.shape[1:]))
            return out
        lp = out.log_prob
        count = element_count(x_t, mask).to(lp)
        total = lp * count
        if dims is not None:
            # N(mean, s^2 I) restricted to a d-dimensional subspace holding x - mean: the quadratic term is
            # the same, the normaliser counts d dimensions instead of the `count` elements summed over
            d = dims.to(lp)
            var = out.std.reshape(out.std.shape[0], -1)[:, 0].to(lp) ** 2
            correction = torch.where(var > 0, 0.5 * (count - d) * torch.log(2 * math.pi * var.clamp_min(1e-30)),
                                     torch.zeros_like(var))
            total = total + correction
        else:
            d = count
        return out._replace(log_prob=self._per_dim(total, d))

    def _per_dim(self, total: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if self.logprob_reduction == "sum":
            return total
        return torch.where(d > 0, total / d.clamp_min(1e-12), torch.zeros_like(total))

    def reduce_sum(self, total: torch.Tensor, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """A per-sample sum over x's (masked) elements, e.g. a KL, in this policy's reduction: itself ("sum") or
        divided by the sample's dimensions (``logprob_dims``, else the masked element count), as log-probs are."""
        dims = self.adapter.logprob_dims(cond, x)
        d = dims.to(total) if dims is not None else element_count(x, self.adapter.logprob_mask(cond, x)).to(total)
        return self._per_dim(total, d)

    def sample_mse(self, pred: torch.Tensor, target: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """(B,) float32 mean of (pred - target)^2 over each sample's elements, weighted by the adapter's
        ``logprob_mask`` (padded or pinned elements count nowhere): what denoising losses average."""
        return per_sample_mse(pred, target, self.adapter.logprob_mask(cond, pred))

    def step_kl(self, out: StepOutput, ref: StepOutput, x_t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """(B,) KL(N(out.mean, std^2) || N(ref.mean, std^2)) of one step (DPOK's and GRPO's penalty, survey Eq.
        21-22), summed over the elements ``logprob_mask`` keeps and reduced as this policy's log-probs are; a
        deterministic row (std 0, e.g. DDPM's last step) is not a Gaussian step and adds none, as its log-prob."""
        from diffalign import ops
        mask = self.adapter.logprob_mask(cond, x_t)
        extra = {} if mask is None else {"mask": mask}
        positive = out.std > 0
        safe = torch.where(positive, out.std, torch.ones_like(out.std))
        kl = ops.gaussian_kl(out.mean, ref.mean.detach(), safe, reduction="sum", **extra)
        rows = positive.expand(out.mean.shape).flatten(1).all(1)
        return self.reduce_sum(torch.where(rows, kl, torch.zeros_like(kl)), x_t, cond)

    # ---- a rollout ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, cond: Conditions, generator: Generators = None, x_T: Optional[torch.Tensor] = None) -> Trajectory:
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
        result = run_chain(self, cond, x, generator=generator, record=True)
        steps = torch.arange(self.rule.num_steps)
        return Trajectory(torch.stack(result.states, dim=1), torch.stack(result.log_probs, dim=1), cond, steps)


def element_count(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B,) the number of elements of each sample of x that ``mask`` keeps (its weights' sum)."""
    if mask is None:
        return torch.full((x.shape[0],), float(math.prod(x.shape[1:])), device=x.device)
    return mask.to(torch.float32).expand(x.shape).flatten(1).sum(1)
