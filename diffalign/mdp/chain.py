"""The one sampling chain: x_T -> x_0 through a policy's guided steps, and the one way noise is drawn.

Every place that runs the reverse chain uses :func:`run_chain`: recorded rollouts
(:meth:`DiffusionPolicy.sample`, the online loop), the differentiable chains of direct reward
fine-tuning (DRaFT / AlignProp / ReFL stop gradients with ``grad_from``), inference-time methods
(noise optimisation climbs x_T, Attend-and-Excite edits the state with ``before_step``) and the demo.
Every draw of noise goes through :func:`draw_step_noise` / :func:`draw_noise`, which pass it through
the adapter's ``project_noise`` (identity unless the modality constrains its samples, e.g. an E(3)
model's centre-of-mass-free subspace).

Noise for a step comes, in this order of preference, from ``noise`` (a (B, T, ...) tensor or a list of
T (B, ...) tensors, drawn beforehand so the chain is a fixed function), or from ``generator`` (one for
the batch, or one per sample: a sample's draws then do not depend on how samples are batched).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from diffalign.modalities.base import Conditions, Generators, batch_size_of, index_conditions

__all__ = ["ChainResult", "run_chain", "draw_step_noise", "draw_noise"]

StepCallback = Callable[[int, torch.Tensor], torch.Tensor]
Noise = Union[None, torch.Tensor, Sequence[torch.Tensor]]


def draw_step_noise(adapter, cond: Conditions, like: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape and dtype, projected by the adapter. One generator draws
    the batch at once on ``like``'s device; a list draws sample b from generator b (on its device)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != like.shape[0]:
            raise ValueError(f"{len(generator)} generators for {like.shape[0]} samples")
        noise = torch.stack([torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype)
                             for g in generator]).to(like.device)
    else:
        noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return adapter.project_noise(noise, cond)


def draw_noise(adapter, cond: Conditions, generators: Sequence[torch.Generator], num_steps: int,
               stochastic: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x_T (B, ...) and the step noise (B, T, ...) (None for a deterministic rule), sample b drawn from
    ``generators[b]`` alone, in the order a recorded rollout draws them (x_T, then one draw per step)."""
    n = batch_size_of(cond)
    if len(generators) != n:
        raise ValueError(f"{len(generators)} generators for {n} samples")
    x_T = torch.cat([adapter.initial_noise(index_conditions(cond, slice(b, b + 1)), g)
                     for b, g in enumerate(generators)])
    if not stochastic:
        return x_T, None
    if num_steps == 0:  # x_T alone (D3PO / SPO draw their step noise as they branch)
        return x_T, x_T.new_empty((n, 0) + tuple(x_T.shape[1:]))
    noise = torch.stack([draw_step_noise(adapter, cond, x_T, list(generators)) for _ in range(num_steps)], dim=1)
    return x_T, noise


@dataclasses.dataclass
class ChainResult:
    x: torch.Tensor                          # the last state (x_0 after a full chain)
    states: Optional[List[torch.Tensor]]     # x_T ... x_last when recorded
    log_probs: Optional[List[torch.Tensor]]  # per step (B,) log-probs of the kept states when recorded


def _noise_at(noise: Noise, i: int) -> Optional[torch.Tensor]:
    """Step i's noise: ``noise`` is indexed by the chain's step index, whatever step the chain starts at."""
    if noise is None:
        return None
    return noise[:, i] if isinstance(noise, torch.Tensor) else noise[i]


def run_chain(policy, cond: Conditions, x_T: torch.Tensor, *, noise: Noise = None, generator: Generators = None,
              record: bool = False, grad_from: Optional[int] = None, checkpoint: bool = False,
              start: int = 0, stop: Optional[int] = None, before_step: Optional[StepCallback] = None) -> ChainResult:
    """Run steps start .. stop-1 (default 0 .. T-1) of ``policy`` from x_T (the state before step ``start``).

    record: keep every state and each step's log-prob (of the state actually kept: when the adapter's
      ``project`` moves a sample, the kept sample is scored again under the same step).
    grad_from: steps before it run under no_grad (DRaFT's stop-gradient); None: autograd as the caller
      has it. checkpoint: each graph-keeping step runs under torch.utils.checkpoint (memory of one
      step instead of T, one extra forward per step in the backward pass).
    before_step(i, x): may replace the state before step i (Attend-and-Excite's latent update).
    """
    rule, adapter = policy.rule, policy.adapter
    T = rule.num_steps
    stop = T if stop is None else int(stop)
    if not 0 <= start <= stop <= T:
        raise ValueError(f"steps start = {start}, stop = {stop} are not 0 <= start <= stop <= {T}")
    if noise is not None and rule.stochastic:
        have = noise.shape[1] if isinstance(noise, torch.Tensor) else len(noise)
        if have < stop:
            raise ValueError(f"{have} steps of noise for a chain of {stop} steps")

    def one_step(i: int, x: torch.Tensor, step_noise: Optional[torch.Tensor]):
        model_output = policy.predict(x, i, cond)
        out = policy.step(i, x, cond, model_output=model_output, noise=step_noise)
        kept = adapter.project(out.prev_sample, cond)
        if record and kept is not out.prev_sample:
            out = policy.step(i, x, cond, model_output=model_output, prev_sample=kept)
        return kept, out.log_prob

    x = x_T
    states = [x] if record else None
    log_probs: Optional[List[torch.Tensor]] = [] if record else None
    for i in range(start, stop):
        if before_step is not None:
            x = before_step(i, x)
        step_noise = None
        if rule.stochastic:  # drawn outside the checkpointed step: its recomputation must reuse it
            step_noise = _noise_at(noise, i)
            if step_noise is None:
                step_noise = draw_step_noise(adapter, cond, x, generator)
        if grad_from is not None and i < grad_from:
            with torch.no_grad():
                x, lp = one_step(i, x, step_noise)
        elif checkpoint and torch.is_grad_enabled():
            x, lp = _checkpoint(one_step, i, x, step_noise, use_reentrant=False)
        else:
            x, lp = one_step(i, x, step_noise)
        if record:
            states.append(x)
            log_probs.append(lp)
    return ChainResult(x, states, log_probs)
