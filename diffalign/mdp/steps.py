"""Step rules: one reverse-diffusion transition x_t -> x_{t-1} as a Gaussian, with its log-prob.

A step rule reads its coefficients from a diffusers scheduler once (``set_timesteps`` is called on a
private copy, so the caller's scheduler is not mutated) and then works purely on *step indices*
``i = 0 .. T-1`` (i = 0 is the noisiest step). Indices may be an int or a (B,) tensor, so one batch
can hold transitions from different steps (DDPO trains on per-sample permuted timesteps).

Every rule returns :class:`diffalign.ops.StepOutput` (prev_sample, log_prob, mean, std) computed by
the fused ops, so the rollout and the training-time recomputation share one formula.

Prev-timestep conventions (tested in tests/mdp/test_steps.py):
- DDIM: prev timestep = t - num_train_timesteps // T, as diffusers' ``DDIMScheduler.step``. When it
  is negative (the last step) we follow the DDPO reference trainer and use ``alphas_cumprod[0]``
  rather than ``final_alpha_cumprod``: the last step keeps a non-zero std, so its log-prob exists.
  For the Stable Diffusion schedulers (``set_alpha_to_one=False``) the two are identical.
- DDPM: the previous timestep is the next entry of ``scheduler.timesteps`` and 1.0 after the last
  (``DDPMScheduler.previous_timestep``); variance "fixed_small" (the posterior variance), which is
  DDIM with eta = 1, so the DDIM op computes it. The last step is deterministic (std 0, log-prob 0).
- Flow matching: sigma = ``scheduler.sigmas[i]``, sigma_next = ``scheduler.sigmas[i + 1]`` (the
  schedule's shift is already in them); the model timestep is ``scheduler.timesteps[i]``.
"""
from __future__ import annotations

import copy
from typing import Optional, Union

import torch

from diffalign import ops
from diffalign.ops import StepOutput

Index = Union[int, torch.Tensor]

__all__ = ["StepRule", "DDIMRule", "DDPMRule", "FlowSDERule", "FlowODERule", "make_step_rule", "STEP_RULES"]


class StepRule:
    """Base class. Subclasses fill ``timesteps`` (T,) and implement ``step`` and the forward process."""

    #: what the denoiser predicts, as the ops name it ("epsilon", "v_prediction", "sample", "flow")
    prediction_type: str = "epsilon"
    #: whether step() draws noise (False for deterministic samplers such as DDIM eta=0 or the flow ODE)
    stochastic: bool = True

    def __init__(self, scheduler, num_steps: int):
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = int(num_steps)
        # a private copy: set_timesteps mutates the scheduler, and the adapter may share its own
        self.scheduler = copy.deepcopy(scheduler)
        self.scheduler.set_timesteps(self.num_steps)
        self.timesteps = self.scheduler.timesteps.clone()

    def _index(self, i: Index, like: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(i, dtype=torch.long)
        if idx.ndim == 0:
            idx = idx.expand(like.shape[0])
        if idx.shape != (like.shape[0],):
            raise ValueError(f"step index has shape {tuple(idx.shape)}; expected an int or ({like.shape[0]},)")
        if bool(((idx < 0) | (idx >= self.num_steps)).any()):
            raise ValueError(f"step index out of range [0, {self.num_steps}): {idx.tolist()}")
        return idx.cpu()

    def model_timesteps(self, i: Index, like: torch.Tensor) -> torch.Tensor:
        """The timestep the denoiser is conditioned on at step i, (B,) on like's device."""
        return self.timesteps[self._index(i, like)].to(like.device)

    def step(self, i: Index, model_output: torch.Tensor, sample: torch.Tensor,
             prev_sample: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None) -> StepOutput:
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: Index) -> torch.Tensor:
        """Forward process q(x_t | x0) at step i (for denoising losses such as RWR's)."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor, i: Index) -> torch.Tensor:
        """What the denoiser should output for x_t = add_noise(x0, noise, i)."""
        raise NotImplementedError


def _per_sample(values: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values[idx].to(device=like.device, dtype=torch.float32 if like.dtype != torch.float64 else torch.float64)


class _AlphaRule(StepRule):
    """Shared by DDIM and DDPM: both are alphas_cumprod schedules over epsilon/v/x0 predictions."""

    def __init__(self, scheduler, num_steps: int):
        super().__init__(scheduler, num_steps)
        config = self.scheduler.config
        self.prediction_type = config.prediction_type
        if self.prediction_type not in ops.reference.PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type {self.prediction_type!r} is not one of "
                             f"{ops.reference.PREDICTION_TYPES}")
        ac = self.scheduler.alphas_cumprod.to(torch.float64)
        t = self.timesteps.long()
        self.alpha_t = ac[t]
        self.alpha_prev = self._alpha_prev(ac, t)

    def _alpha_prev(self, ac: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _coefficients(self, i: Index, like: torch.Tensor):
        idx = self._index(i, like)
        return idx, _per_sample(self.alpha_t, idx, like), _per_sample(self.alpha_prev, idx, like)

    def add_noise(self, x0, noise, i):
        _, a, _ = self._coefficients(i, x0)
        a = a.reshape((-1,) + (1,) * (x0.ndim - 1))
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(x0.dtype)

    def training_target(self, x0, noise, x_t, i):
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        _, a, _ = self._coefficients(i, x0)
        a = a.reshape((-1,) + (1,) * (x0.ndim - 1))
        return (a.sqrt() * noise - (1 - a).sqrt() * x0).to(x0.dtype)  # v = sqrt(a) eps - sqrt(1-a) x0


class DDIMRule(_AlphaRule):
    """DDIM(eta) (Song et al.), as in DDPO's ``ddim_step_with_logprob``; eta = 0 is deterministic."""

    def __init__(self, scheduler, num_steps: int, eta: float = 1.0):
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0
        super().__init__(scheduler, num_steps)

    def _alpha_prev(self, ac, t):
        prev = t - self.scheduler.config.num_train_timesteps // self.num_steps
        return ac[prev.clamp_min(0)]  # DDPO's clamp; equals final_alpha_cumprod when set_alpha_to_one=False

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None):
        _, a_t, a_prev = self._coefficients(i, sample)
        if not self.stochastic and prev_sample is None and noise is None:
            noise = torch.zeros_like(sample)  # nothing to draw: keep generators untouched
        return ops.ddim_step_with_logprob(model_output, sample, a_t, a_prev, eta=self.eta, prev_sample=prev_sample,
                                          noise=noise, generator=generator, prediction_type=self.prediction_type)


class DDPMRule(_AlphaRule):
    """Ancestral DDPM with the "fixed_small" posterior variance (= DDIM with eta = 1)."""

    def __init__(self, scheduler, num_steps: int):
        variance = getattr(scheduler.config, "variance_type", "fixed_small")
        if variance not in ("fixed_small", "fixed_small_log"):
            raise ValueError(f"DDPMRule supports variance_type 'fixed_small', got {variance!r}")
        super().__init__(scheduler, num_steps)

    def _alpha_prev(self, ac, t):
        prev = torch.cat([t[1:], t.new_tensor([-1])])
        return torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.ones((), dtype=ac.dtype))

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None):
        _, a_t, a_prev = self._coefficients(i, sample)
        return ops.ddim_step_with_logprob(model_output, sample, a_t, a_prev, eta=1.0, prev_sample=prev_sample,
                                          noise=noise, generator=generator, prediction_type=self.prediction_type)


class FlowSDERule(StepRule):
    """Flow-matching SDE (Flow-GRPO) over a FlowMatchEulerDiscreteScheduler's sigmas; model predicts velocity."""

    prediction_type = "flow"

    def __init__(self, scheduler, num_steps: int, noise_level: float = 0.7):
        if not noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        self.noise_level = float(noise_level)
        self.stochastic = self.noise_level > 0
        super().__init__(scheduler, num_steps)
        sigmas = self.scheduler.sigmas.to(torch.float64)
        self.sigma, self.sigma_next = sigmas[:-1], sigmas[1:]

    def _sigmas(self, i, like):
        idx = self._index(i, like)
        return _per_sample(self.sigma, idx, like), _per_sample(self.sigma_next, idx, like)

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None):
        s, s_next = self._sigmas(i, sample)
        if not self.stochastic and prev_sample is None and noise is None:
            noise = torch.zeros_like(sample)
        return ops.flow_sde_step_with_logprob(model_output, sample, s, s_next, noise_level=self.noise_level,
                                              prev_sample=prev_sample, noise=noise, generator=generator)

    def add_noise(self, x0, noise, i):
        s, _ = self._sigmas(i, x0)
        s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
        return ((1 - s) * x0 + s * noise).to(x0.dtype)  # rectified-flow interpolation

    def training_target(self, x0, noise, x_t, i):
        return noise - x0  # velocity d x_s / d s


class FlowODERule(FlowSDERule):
    """The deterministic Euler ODE of the same flow (for evaluation): the SDE with noise_level 0."""

    def __init__(self, scheduler, num_steps: int):
        super().__init__(scheduler, num_steps, noise_level=0.0)


STEP_RULES = {"ddim": DDIMRule, "ddpm": DDPMRule, "flow_sde": FlowSDERule, "flow_ode": FlowODERule}


def make_step_rule(name: str, scheduler, num_steps: int, **kwargs) -> StepRule:
    """Build a step rule by name ("ddim", "ddpm", "flow_sde", "flow_ode") over a diffusers scheduler."""
    if name not in STEP_RULES:
        raise ValueError(f"unknown step rule {name!r}; choose one of {sorted(STEP_RULES)}")
    return STEP_RULES[name](scheduler, num_steps, **kwargs)
