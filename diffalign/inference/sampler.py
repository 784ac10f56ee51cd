"""What every training-free method shares: seeded noise, a (differentiable) sampling chain, and a
count of model evaluations.

Model evaluations: the unit of compute in this package is ONE DENOISER FORWARD ON ONE SAMPLE (one
row of the batch the denoiser sees). A guided step therefore costs 2 per sample (the unconditional
and conditional rows), a T-step guided sample 2T. :func:`count_evaluations` counts what the adapter's
``denoise`` actually receives, so nothing is estimated; forwards recomputed by gradient checkpointing
during a backward pass are counted too (they are real compute), and ``grad_evaluations`` says how many
of the evaluations ran with autograd on (each of those also pays a backward, about two forwards).

Seeds: sample ``b`` of a batch draws x_T and then its per-step noise from its own generator, seeded
with ``seeds[b]``, in exactly the order :meth:`DiffusionPolicy.sample` draws them from per-sample
generators. So ``sample_chain(policy, cond, *draw_noise(policy, cond, seeds))`` gives the same samples
as ``policy.sample(cond, generator=seeded_generators(seeds))``: every method here is compared with
plain sampling at the same seeds.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from diffalign.mdp import DiffusionPolicy, run_chain
from diffalign.mdp import draw_noise as mdp_draw_noise
from diffalign.modalities.base import Conditions, ModalityAdapter
from diffalign.seeding import generator

__all__ = ["EvalCounter", "count_evaluations", "seeded_generators", "encode_items", "draw_noise", "sample_chain", "decode_with_grad",
           "sample_images", "SampleBatch"]


@dataclasses.dataclass
class EvalCounter:
    """Model evaluations (denoiser rows) seen so far; see the module doc for the unit."""

    evaluations: int = 0
    grad_evaluations: int = 0
    calls: int = 0

    def add(self, rows: int) -> None:
        self.evaluations += int(rows)
        self.calls += 1
        if torch.is_grad_enabled():
            self.grad_evaluations += int(rows)


@contextlib.contextmanager
def count_evaluations(adapter: ModalityAdapter, counter: Optional[EvalCounter] = None) -> Iterator[EvalCounter]:
    """Count every row the adapter's ``denoise`` is called on inside the block (nests: inner blocks
    add to their own counter and to every enclosing one)."""
    counter = counter if counter is not None else EvalCounter()
    had_own = "denoise" in vars(adapter)
    inner = adapter.denoise  # the bound method, or an enclosing block's counting wrapper

    def counted(x, timesteps, cond):
        counter.add(x.shape[0])
        return inner(x, timesteps, cond)

    adapter.denoise = counted
    try:
        yield counter
    finally:
        if had_own:
            adapter.denoise = inner
        else:
            del adapter.denoise


def seeded_generators(seeds: Sequence[int], device="cpu") -> List[torch.Generator]:
    """One generator per sample, seeded with that sample's integer seed."""
    out = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        out.append(g)
    return out


def encode_items(adapter: ModalityAdapter, items: Sequence, seeds: Sequence[int]) -> Conditions:
    """The items' conditions, whatever a condition leaves random drawn per sample from (seed, "conditions"): a
    sample depends only on its item and seed, not on its batch (and not on the noise's stream)."""
    return adapter.encode_conditions(list(items), [generator(int(s), "conditions") for s in seeds])


def draw_noise(policy: DiffusionPolicy, cond: Conditions, seeds: Sequence[int]
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(x_T, per-step noise (B, T, ...) or None for a deterministic rule), drawn per sample from ``seeds``
    in the order :meth:`DiffusionPolicy.sample` uses (x_T first, then one draw per step), through the
    adapter's ``project_noise`` (diffalign.mdp.draw_noise)."""
    return mdp_draw_noise(policy.adapter, cond, seeded_generators(seeds), policy.rule.num_steps,
                          policy.rule.stochastic)


StepCallback = Callable[[int, torch.Tensor], torch.Tensor]


def sample_chain(policy: DiffusionPolicy, cond: Conditions, x_T: torch.Tensor,
                 noises: Optional[torch.Tensor] = None, checkpoint: bool = True,
                 before_step: Optional[StepCallback] = None) -> torch.Tensor:
    """x_0 from x_T through the policy's guided chain (diffalign.mdp.run_chain), differentiable with respect
    to x_T (and the weights) whenever autograd is on.

    The per-step noise is an input (from :func:`draw_noise`), not drawn inside, so the map x_T -> x_0 is a
    fixed function that gradient ascent can climb, and recomputing a step in the backward pass reproduces
    it. With ``checkpoint`` each step runs under ``torch.utils.checkpoint`` (when autograd is on): memory
    holds one step's activations at a time instead of T, for one extra forward per step in the backward
    pass. ``before_step(i, x)`` may replace the state before step i (Attend-and-Excite does).
    """
    rule = policy.rule
    if rule.stochastic and noises is None:
        raise ValueError(f"a stochastic step rule needs {rule.num_steps} per-step noises (draw_noise gives them)")
    return run_chain(policy, cond, x_T, noise=noises, checkpoint=checkpoint, before_step=before_step).x


def decode_with_grad(adapter: ModalityAdapter, x0: torch.Tensor, cond: Conditions):
    """``adapter.decode`` keeping the graph (the adapter's ``decode_with_grad``)."""
    return adapter.decode_with_grad(x0, cond)


@dataclasses.dataclass
class SampleBatch:
    """Samples of a method: final states, what rewards see, and the compute spent."""

    x0: torch.Tensor
    decoded: object
    prompts: List[str]
    seeds: List[int]
    rewards: Optional[torch.Tensor] = None
    evaluations: int = 0


@torch.no_grad()
def sample_images(policy: DiffusionPolicy, prompts: Sequence[str], seeds: Sequence[int], batch_size: int = 16,
                  counter: Optional[EvalCounter] = None) -> SampleBatch:
    """Plain sampling of ``prompts`` with per-sample ``seeds`` (the baseline every method is measured
    against), in batches; decoded outputs are concatenated on the CPU."""
    prompts, seeds = [p if isinstance(p, dict) else str(p) for p in prompts], [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    adapter = policy.adapter
    xs, decoded = [], []
    with count_evaluations(adapter, counter) as c:
        start_count = c.evaluations
        for start in range(0, len(prompts), batch_size):
            cond = encode_items(adapter, prompts[start:start + batch_size], seeds[start:start + batch_size])
            x_T, noises = draw_noise(policy, cond, seeds[start:start + batch_size])
            x0 = sample_chain(policy, cond, x_T, noises, checkpoint=False)
            xs.append(x0.cpu())
            decoded.append(_to_cpu(adapter.decode(x0, cond)))
        spent = c.evaluations - start_count
    return SampleBatch(torch.cat(xs), concat_decoded(decoded), prompts, seeds, evaluations=spent)


def _to_cpu(d):
    return d.detach().cpu() if isinstance(d, torch.Tensor) else d


def concat_decoded(parts: Sequence[object]):
    """Concatenate decoded batches: tensors along dim 0, lists by extension."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(list(parts))
    out: list = []
    for p in parts:
        out.extend(list(p))
    return out
