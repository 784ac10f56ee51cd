"""Initial-noise optimisation: gradient ascent on a differentiable reward with respect to x_T.

The sampler is a fixed, differentiable map x_T -> x_0 once its per-step noise is fixed (survey 4.3,
"Noise Optimization": the reverse process is highly sensitive to the initial noise). We climb
r(decode(sample(x_T)), prompt) by backpropagating through every step, each step under gradient
checkpointing (memory of one step instead of T; one extra forward per step in the backward pass).
This is the approach of DOODL (Wallace et al., 2023) and ReNO (Eyring et al., 2024).

Unregularised ascent walks x_T off the region the model was trained on: a d-dimensional standard
normal concentrates on the shell ||x|| ~ sqrt(d) (||x||^2 ~ chi^2_d), and noises far from it decode
to saturated or degenerate samples that a reward can still like (reward hacking). The regulariser
keeps the noise on that shell:

- ``"chi2"`` (as ReNO): the negative log-likelihood of ||x||^2 under chi^2_d,
  ``-(d/2 - 1) log ||x||^2 + ||x||^2 / 2``, shifted to 0 at its mode ||x||^2 = d - 2;
- ``"norm"``: ``(||x|| - sqrt(d))^2``, its Gaussian approximation near the shell (||x|| is about
  N(sqrt(d), 1/2) for large d, so the chi^2 NLL is about (||x|| - sqrt(d))^2 there too).

Both are in nats per sample whatever d, and their gradient per element is O(distance from the
shell), the same order as a reward's, so ``reg_weight`` ~ 1 balances them at any dimension.
- ``"none"``: no regulariser (for comparison).

Works for any modality: x_T comes from ``adapter.initial_noise`` and the reward sees
``adapter.decode`` (toy vectors, image latents -> pixels, ...).
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Sequence

import torch
from tqdm.auto import tqdm

from diffalign.inference.sampler import (EvalCounter, concat_decoded, count_evaluations, decode_with_grad, draw_noise,
                                         encode_items, sample_chain)
from diffalign.mdp import DiffusionPolicy

__all__ = ["NoiseOptConfig", "NoiseOptResult", "optimize_noise", "shell_ratio", "chi2_regularizer",
           "norm_regularizer", "REGULARIZERS"]


def _flat_sq(x: torch.Tensor) -> torch.Tensor:
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp16/bf16 noise: accumulate in fp32
    return x.to(acc).reshape(x.shape[0], -1).pow(2).sum(dim=1)


def shell_ratio(x: torch.Tensor) -> torch.Tensor:
    """||x|| / sqrt(d) per sample: about 1 +- 1/sqrt(2d) for standard normal noise."""
    d = x[0].numel()
    return _flat_sq(x).sqrt() / math.sqrt(d)


def chi2_regularizer(x: torch.Tensor) -> torch.Tensor:
    """Per-sample negative chi^2_d log-likelihood of ||x||^2, minus its minimum (>= 0, nats)."""
    d = x[0].numel()
    if d < 3:
        raise ValueError(f"the chi2 regulariser needs d >= 3 dimensions per sample (its mode is at d - 2), got {d}")
    r2 = _flat_sq(x)
    k = d / 2 - 1
    nll = -k * torch.log(r2) + r2 / 2
    nll_min = -k * math.log(d - 2) + (d - 2) / 2
    return nll - nll_min


def norm_regularizer(x: torch.Tensor) -> torch.Tensor:
    """Per-sample (||x|| - sqrt(d))^2."""
    return (_flat_sq(x).sqrt() - math.sqrt(x[0].numel())).pow(2)


REGULARIZERS = {"chi2": chi2_regularizer, "norm": norm_regularizer, "none": lambda x: x.new_zeros(x.shape[0])}


@dataclasses.dataclass
class NoiseOptConfig:
    iterations: int = 10            # gradient steps on x_T (each: one sample with grad + its backward)
    lr: float = 0.05                # Adam step size on x_T
    regularizer: str = "chi2"       # "chi2" | "norm" | "none"
    reg_weight: float = 1.0         # weight of the regulariser against the reward (per sample)
    checkpoint: bool = True         # gradient checkpointing over sampling steps
    keep_best: bool = True          # return each sample's best iterate (iterate 0 is the plain sample)
    batch_size: int = 8

    def __post_init__(self):
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"noise_opt regularizer must be one of {sorted(REGULARIZERS)}, got {self.regularizer!r}")
        if self.iterations < 0:
            raise ValueError(f"noise_opt iterations must be >= 0, got {self.iterations}")
        if not self.lr > 0 or self.reg_weight < 0 or self.batch_size < 1:
            raise ValueError(f"noise_opt needs lr > 0, reg_weight >= 0 and batch_size >= 1, got lr={self.lr}, "
                             f"reg_weight={self.reg_weight}, batch_size={self.batch_size}")


@dataclasses.dataclass
class NoiseOptResult:
    x_T: torch.Tensor               # (B, ...) the returned noise
    x0: torch.Tensor                # (B, ...) its sample
    decoded: object                 # what the reward saw for it
    prompts: List[str]
    seeds: List[int]
    rewards: torch.Tensor           # (B,) reward of the returned sample
    plain_rewards: torch.Tensor     # (B,) reward of plain sampling at the same seeds (iterate 0)
    history: torch.Tensor           # (iterations + 1, B) reward of every iterate
    objective: torch.Tensor         # (iterations + 1, B) reward - reg_weight * regulariser of every iterate
    shell_ratio: torch.Tensor       # (B,) ||x_T|| / sqrt(d) of the returned noise
    regularizer: torch.Tensor       # (B,) the chosen regulariser's value at the returned noise
    evaluations: int                # model evaluations (denoiser rows), checkpoint recomputation included
    grad_evaluations: int           # of which ran with autograd on (each also paid a backward)


def optimize_noise(policy: DiffusionPolicy, prompts: Sequence[str], seeds: Sequence[int], reward_fn,
                   config: NoiseOptConfig = NoiseOptConfig(), progress: bool = True) -> NoiseOptResult:
    """Optimise x_T per sample for ``reward_fn(decoded, prompts)`` (differentiable in ``decoded``),
    starting from the seeds' own noise, with the per-step noise held fixed at the seeds' draws."""
    prompts, seeds = [p if isinstance(p, dict) else str(p) for p in prompts], [int(s) for s in seeds]  # items stay mappings
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    counter = EvalCounter()
    parts = []
    bar = tqdm(total=len(prompts) * (config.iterations + 1), desc="noise optimisation", disable=not progress,
               leave=False)
    with count_evaluations(policy.adapter, counter):
        for start in range(0, len(prompts), config.batch_size):
            parts.append(_optimize_batch(policy, prompts[start:start + config.batch_size],
                                         seeds[start:start + config.batch_size], reward_fn, config, bar))
    bar.close()
    x_T, x0, decoded, rewards, history, objective = zip(*parts)  # per batch -> per field
    x_T = torch.cat(x_T)
    history = torch.cat(history, dim=1)
    reg = REGULARIZERS[config.regularizer](x_T) if config.regularizer != "none" else chi2_or_zero(x_T)
    return NoiseOptResult(x_T, torch.cat(x0), concat_decoded(decoded), prompts, seeds, torch.cat(rewards),
                          history[0].clone(), history, torch.cat(objective, dim=1), shell_ratio(x_T), reg,
                          counter.evaluations, counter.grad_evaluations)


def chi2_or_zero(x: torch.Tensor) -> torch.Tensor:
    """The chi2 regulariser where it is defined (d >= 3), else zeros: reported for "none" too."""
    return chi2_regularizer(x) if x[0].numel() >= 3 else x.new_zeros(x.shape[0])


def _optimize_batch(policy, prompts, seeds, reward_fn, config: NoiseOptConfig, bar):
    adapter = policy.adapter
    cond = encode_items(adapter, prompts, seeds)
    x_init, noises = draw_noise(policy, cond, seeds)
    x = x_init.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=config.lr)
    regularize = REGULARIZERS[config.regularizer]
    B = len(prompts)
    best_r = torch.full((B,), -float("inf"))
    best_obj = torch.full((B,), -float("inf"))
    best_x, best_x0 = x.detach().clone(), None
    best_dec = None
    history, objective = [], []
    for it in range(config.iterations + 1):
        last = it == config.iterations
        with torch.set_grad_enabled(not last):  # the last iterate is only scored
            x0 = sample_chain(policy, cond, x.to(x_init.dtype), noises, checkpoint=config.checkpoint)
            decoded = decode_with_grad(adapter, x0, cond)
            r = torch.as_tensor(reward_fn(decoded, prompts)).float()
            if r.shape != (B,):
                raise ValueError(f"the reward returned shape {tuple(r.shape)}; expected ({B},)")
            obj = r - config.reg_weight * regularize(x).to(r.device)
            if not last:
                opt.zero_grad(set_to_none=True)
                (-obj.sum()).backward()  # samples are independent: the sum gives each its own gradient
        r_cpu, obj_cpu = r.detach().cpu(), obj.detach().cpu()
        history.append(r_cpu)
        objective.append(obj_cpu)
        # keep the best iterate by the regularised objective (so keep_best never trades the shell
        # away for reward); without keep_best the last iterate is returned
        better = obj_cpu > best_obj if config.keep_best else torch.ones(B, dtype=torch.bool)
        if best_x0 is None:
            best_x0 = x0.detach().clone()
            best_dec = _detach(decoded)
        best_obj = torch.where(better, obj_cpu, best_obj)
        best_r = torch.where(better, r_cpu, best_r)
        mask = better.to(x.device)
        best_x = torch.where(_expand(mask, x), x.detach(), best_x)
        best_x0 = torch.where(_expand(mask.to(x0.device), x0), x0.detach(), best_x0)
        best_dec = _choose(better, _detach(decoded), best_dec)
        if not last:
            opt.step()
        bar.update(B)
    return (best_x.to(x_init.dtype).cpu(), best_x0.cpu(), _cpu(best_dec), best_r, torch.stack(history),
            torch.stack(objective))


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))


def _detach(d):
    return d.detach() if isinstance(d, torch.Tensor) else d


def _cpu(d):
    return d.cpu() if isinstance(d, torch.Tensor) else d


def _choose(mask: torch.Tensor, new, old):
    if isinstance(new, torch.Tensor):
        return torch.where(_expand(mask.to(new.device), new), new, old)
    return [n if m else o for m, n, o in zip(mask.tolist(), new, old)]
