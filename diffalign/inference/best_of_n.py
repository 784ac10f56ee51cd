"""Best-of-N and rejection sampling: draw candidates, keep the one the reward ranks highest.

The oldest inference-time alignment: no gradient, any reward (a learned model, a detector, a
weighted mix). Candidate 0 of each prompt uses the prompt's own seed, i.e. it IS the plain sample,
so best-of-N never scores below plain sampling at the same seeds; candidate k >= 1 uses a seed
derived from (seed, k). Compute is N x (steps x rows per step) model evaluations per prompt
(see diffalign.inference.sampler for the unit); rejection sampling stops early per prompt.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from diffalign.inference.sampler import EvalCounter, sample_images
from diffalign.mdp import DiffusionPolicy

__all__ = ["candidate_seed", "best_of_n", "rejection_sample", "SelectionResult"]


def candidate_seed(seed: int, k: int) -> int:
    """Seed of candidate k for a prompt whose own seed is ``seed`` (k = 0: the seed itself)."""
    if k == 0:
        return int(seed)
    from diffalign.seeding import derive_seed
    return derive_seed("candidate", int(seed), int(k))


@dataclasses.dataclass
class SelectionResult:
    """The chosen sample per prompt and what choosing it cost."""

    x0: torch.Tensor                 # (B, ...) chosen final states
    decoded: object                  # what rewards see, chosen per prompt
    prompts: List[str]
    seeds: List[int]                 # the chosen candidate's seed per prompt (reproduces it by plain sampling)
    rewards: torch.Tensor            # (B,) reward of the chosen sample
    plain_rewards: torch.Tensor      # (B,) reward of candidate 0 (the plain sample at the given seed)
    candidates: torch.Tensor         # (B,) candidates drawn per prompt
    accepted: Optional[torch.Tensor]  # (B,) bool, rejection sampling only: the threshold was reached
    evaluations: int                 # model evaluations spent (denoiser rows)


def _select(policy: DiffusionPolicy, prompts: Sequence[str], seeds: Sequence[int], reward_fn, max_candidates: int,
            threshold: Optional[float], batch_size: int, progress: bool) -> SelectionResult:
    from diffalign.rewards import call_reward
    prompts, seeds = [p if isinstance(p, dict) else str(p) for p in prompts], [int(s) for s in seeds]  # items stay mappings
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    if int(max_candidates) < 1:
        raise ValueError(f"the number of candidates (budget) must be >= 1, got {max_candidates}")
    B = len(prompts)
    best_r = torch.full((B,), -float("inf"))
    best_x: List[Optional[torch.Tensor]] = [None] * B
    best_d: List[object] = [None] * B
    best_seed = list(seeds)
    plain = torch.zeros(B)
    drawn = torch.zeros(B, dtype=torch.long)
    accepted = torch.zeros(B, dtype=torch.bool)
    counter = EvalCounter()
    bar = tqdm(total=B * max_candidates, desc="best-of-N" if threshold is None else "rejection sampling",
               disable=not progress, leave=False)
    # best-of-N draws every (prompt, candidate) pair in full batches in one round; rejection sampling
    # draws candidate k of the prompts not yet accepted in round k, so it stops per prompt
    rounds = [[(b, k) for k in range(max_candidates) for b in range(B)]] if threshold is None else \
        [None] * max_candidates
    for k, pairs in enumerate(rounds):
        if pairs is None:
            pairs = [(b, k) for b in range(B) if not accepted[b]]
        if not pairs:
            break
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            row_prompts = [prompts[b] for b, _ in chunk]
            row_seeds = [candidate_seed(seeds[b], c) for b, c in chunk]
            # sample_images counts the denoiser rows into ``counter``
            batch = sample_images(policy, row_prompts, row_seeds, batch_size=len(chunk), counter=counter)
            r = call_reward(reward_fn, batch.decoded, row_prompts, torch.device("cpu"))
            for j, (b, c) in enumerate(chunk):
                drawn[b] += 1
                if c == 0:
                    plain[b] = r[j]
                if r[j] > best_r[b]:
                    best_r[b], best_x[b], best_d[b], best_seed[b] = r[j], batch.x0[j], batch.decoded[j], row_seeds[j]
                if threshold is not None and r[j] >= threshold:
                    accepted[b] = True
            bar.update(len(chunk))
    bar.close()
    decoded = torch.stack(best_d) if all(isinstance(d, torch.Tensor) for d in best_d) else best_d
    return SelectionResult(torch.stack(best_x), decoded, prompts, best_seed, best_r, plain, drawn,
                           accepted if threshold is not None else None, counter.evaluations)


def best_of_n(policy: DiffusionPolicy, prompts: Sequence[str], seeds: Sequence[int], reward_fn, n: int,
              batch_size: int = 16, progress: bool = True) -> SelectionResult:
    """For each prompt draw ``n`` samples (candidate 0 = the plain sample at its seed) and keep the
    one with the highest ``reward_fn(decoded, prompts)``."""
    return _select(policy, prompts, seeds, reward_fn, n, None, batch_size, progress)


def rejection_sample(policy: DiffusionPolicy, prompts: Sequence[str], seeds: Sequence[int], reward_fn,
                     threshold: float, max_samples: int, batch_size: int = 16,
                     progress: bool = True) -> SelectionResult:
    """For each prompt draw candidates until one scores ``>= threshold`` (accepted) or ``max_samples``
    were drawn; an unaccepted prompt returns its best candidate (``accepted`` says which)."""
    return _select(policy, prompts, seeds, reward_fn, max_samples, float(threshold), batch_size, progress)
