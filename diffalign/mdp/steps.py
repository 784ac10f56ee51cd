"""Step rules: one reverse-diffusion transition x_t -> x_{t-1} as a Gaussian, with its log-prob.

A step rule reads its coefficients from a diffusers scheduler once (``set_timesteps`` is called on a
private copy, so the caller's scheduler is not mutated) and then works purely on *step indices*
``i = 0 .. T-1`` (i = 0 is the noisiest step). Indices may be an int or a (B,) tensor, so one batch
can hold transitions from different steps (DDPO trains on per-sample permuted timesteps).

Every rule returns :class:`diffalign.ops.StepOutput` (prev_sample, log_prob, mean, std) computed by
the fused ops, so the rollout and the training-time recomputation share one formula.

Conventions per rule (tested in tests/mdp/test_steps.py and tests/mdp/test_schedules.py):
- "ddim": prev timestep = t - num_train_timesteps // T, as diffusers' ``DDIMScheduler.step``. When it
  is negative (the last step) we follow the DDPO reference trainer and use ``alphas_cumprod[0]``
  rather than ``final_alpha_cumprod``: the last step keeps a non-zero std, so its log-prob exists.
  For the Stable Diffusion schedulers (``set_alpha_to_one=False``) the two are identical.
- "ddpm": the previous timestep is the next entry of ``scheduler.timesteps`` and 1.0 after the last
  (``DDPMScheduler.previous_timestep``); beta_t = 1 - a_t / a_prev (the strided step's beta, as
  diffusers' ``current_beta_t``). The scheduler's ``variance_type`` picks the std:
  "fixed_small" (also "fixed_small_log"): the posterior std, which is DDIM with eta = 1, so the DDIM op
  computes it; the last step is deterministic (std 0, log-prob 0).
  "fixed_large": std sqrt(beta_t) around the same posterior mean; as in diffusers' ``step``, noise is
  added only where the timestep is > 0, so the step at timestep 0 is deterministic (a schedule with
  ``steps_offset`` > 0 keeps a noisy last step, as diffusers does).
- "flow_sde" / "flow_ode": sigma = ``scheduler.sigmas[i]``, sigma_next = ``scheduler.sigmas[i + 1]`` (the
  schedule's shift is already in them); the model timestep is ``scheduler.timesteps[i]``.
- "vp": over a :class:`~diffalign.schedules.VPSchedule` (no diffusers scheduler). Steps visit the
  training indices ``schedule.sampling_indices(T)`` (N-1 down to 0, evenly spaced; all of them when
  T = N); the previous index is the next one, and ``final_alpha_cumprod`` after the last. DDIM(eta)
  over them (eta = 1: ancestral DDPM with the posterior, "fixed_small", variance, as Diffuser and E(3)
  diffusion sample), or variance "fixed_large" (std sqrt(beta_t), the last step deterministic as in DDPM's
  Algorithm 2). Model timesteps: ``schedule.model_times`` at those indices. No x0 clipping.
- "edm" / "edm_euler": over an :class:`~diffalign.schedules.EDMSchedule` (x = x0 + sigma eps). The
  model outputs the denoised D(x; sigma) (prediction_type "sample"; an adapter of a preconditioned EDM
  network returns D, preconditioning applied) or epsilon. Euler-ancestral step (k-diffusion's):
  sigma_up = min(sigma', eta sigma' sqrt(sigma^2 - sigma'^2) / sigma), sigma_down = sqrt(sigma'^2 - sigma_up^2),
  x' = x + (sigma_down - sigma) (x - D) / sigma + sigma_up z: Gaussian with std sigma_up. eta = 1 is
  exactly the posterior q(x_{sigma'} | x_sigma, x0 = D); eta = 0 ("edm_euler") is the deterministic Euler
  step of the probability-flow ODE. The last step (sigma' = 0) lands on D, deterministically. (Karras'
  stochastic Heun sampler is not a Gaussian transition, so it has no per-step log-prob here.)

Every ``step`` takes ``mask`` (per-element weights of the log-prob, see the ops) and forwards it to the ops
only when given. The rules whose step is not one fused op (fixed_large, edm) score their draw with
``ops.gaussian_logprob``; a zero std there also gives log-prob 0.
"""
from __future__ import annotations

import copy
from typing import Optional, Union

import torch

from diffalign import ops
from diffalign.schedules import EDMSchedule, VPSchedule
from diffalign.ops import StepOutput

Index = Union[int, torch.Tensor]

__all__ = ["StepRule", "DDIMRule", "DDPMRule", "FlowSDERule", "FlowODERule", "VPRule", "EDMRule", "EDMEulerRule",
           "make_step_rule", "STEP_RULES"]

VARIANCES = ("fixed_small", "fixed_large")


def _check_num_steps(num_steps) -> int:
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return int(num_steps)


def _mask_kwargs(mask: Optional[torch.Tensor]) -> dict:
    # only pass mask= when given, so the rules also run against ops that predate the keyword
    return {} if mask is None else {"mask": mask}


class StepRule:
    """Base class. Subclasses fill ``timesteps`` (T,) and implement ``step`` and the forward process."""

    #: what the denoiser predicts, as the ops name it ("epsilon", "v_prediction", "sample", "flow")
    prediction_type: str = "epsilon"
    #: whether step() draws noise (False for deterministic samplers such as DDIM eta=0 or the flow ODE)
    stochastic: bool = True
    #: the std of x_T (1 for the VP and flow rules, sigma_max for EDM): what ``initial_noise`` should draw
    init_noise_sigma: float = 1.0

    def __init__(self, scheduler, num_steps: int):
        self.num_steps = _check_num_steps(num_steps)
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
             generator: Optional[torch.Generator] = None, mask: Optional[torch.Tensor] = None) -> StepOutput:
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: Index) -> torch.Tensor:
        """Forward process q(x_t | x0) at step i (for denoising losses such as RWR's)."""
        raise NotImplementedError

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor, i: Index) -> torch.Tensor:
        """What the denoiser should output for x_t = add_noise(x0, noise, i)."""
        raise NotImplementedError


def _acc(like: torch.Tensor) -> torch.dtype:
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def _per_sample(values: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values[idx].to(device=like.device, dtype=_acc(like))


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against like."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def _gaussian_step(mean: torch.Tensor, std: torch.Tensor, sample: torch.Tensor, prev_sample, noise, generator,
                   mask, draw: bool = True) -> StepOutput:
    """x' ~ N(mean, std^2) scored with ops.gaussian_logprob. mean: accumulation dtype, differentiable;
    std: (B, 1, .., 1) >= 0, rows with std 0 are deterministic (log-prob 0, as the fused step ops)."""
    if prev_sample is not None and noise is not None:
        raise ValueError("give prev_sample (to score it) or noise (to draw it), not both")
    if prev_sample is None:
        if noise is None:
            noise = (torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
                     if draw else torch.zeros_like(sample))
        if tuple(noise.shape) != tuple(sample.shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)} but sample has {tuple(sample.shape)}")
        prev_sample = (mean + std * noise.to(mean.dtype)).to(sample.dtype)  # reparameterised: differentiable
    elif tuple(prev_sample.shape) != tuple(sample.shape):
        raise ValueError(f"prev_sample has shape {tuple(prev_sample.shape)} but sample has {tuple(sample.shape)}")
    positive = std > 0
    safe = torch.where(positive, std, torch.ones_like(std))
    log_prob = ops.gaussian_logprob(prev_sample.to(mean.dtype), mean, safe, **_mask_kwargs(mask))
    log_prob = torch.where(positive.reshape(-1), log_prob, torch.zeros_like(log_prob))
    return StepOutput(prev_sample, log_prob, mean.to(sample.dtype), std)


def _x0_from_output(model_output, sample, a, prediction_type):
    """x0_hat from epsilon / v / sample predictions of a VP model (all in the accumulation dtype)."""
    x, m = sample.to(a.dtype), model_output.to(a.dtype)
    if prediction_type == "epsilon":
        return (x - (1 - a).sqrt() * m) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * m
    return m


def _posterior_mean(model_output, sample, a_t, a_prev, prediction_type):
    """Mean of q(x_prev | x_t, x0_hat) (Ho et al. 2020, eq. 7) with beta = 1 - a_t / a_prev (strided steps)."""
    a_t, a_prev = _rows(a_t, sample), _rows(a_prev, sample)
    x0 = _x0_from_output(model_output, sample, a_t, prediction_type)
    beta = 1 - a_t / a_prev
    return (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * sample.to(a_t.dtype)) / (1 - a_t)


class _AlphaRule(StepRule):
    """Shared by DDIM, DDPM and VP: alphas_cumprod schedules over epsilon/v/x0 predictions.

    Subclasses set ``alpha_t`` and ``alpha_prev`` (T,) float64 and ``prediction_type``."""

    def _coefficients(self, i: Index, like: torch.Tensor):
        idx = self._index(i, like)
        return idx, _per_sample(self.alpha_t, idx, like), _per_sample(self.alpha_prev, idx, like)

    def add_noise(self, x0, noise, i):
        _, a, _ = self._coefficients(i, x0)
        a = _rows(a, x0)
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(x0.dtype)

    def training_target(self, x0, noise, x_t, i):
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        _, a, _ = self._coefficients(i, x0)
        a = _rows(a, x0)
        return (a.sqrt() * noise - (1 - a).sqrt() * x0).to(x0.dtype)  # v = sqrt(a) eps - sqrt(1-a) x0

    def _ddim(self, i, model_output, sample, eta, prev_sample, noise, generator, mask):
        _, a_t, a_prev = self._coefficients(i, sample)
        if eta == 0 and prev_sample is None and noise is None:
            noise = torch.zeros_like(sample)  # nothing to draw: keep generators untouched
        return ops.ddim_step_with_logprob(model_output, sample, a_t, a_prev, eta=eta, prev_sample=prev_sample,
                                          noise=noise, generator=generator, prediction_type=self.prediction_type,
                                          **_mask_kwargs(mask))

    def _fixed_large(self, i, model_output, sample, prev_sample, noise, generator, mask):
        idx, a_t, a_prev = self._coefficients(i, sample)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has "
                             f"{tuple(sample.shape)}")
        mean = _posterior_mean(model_output, sample, a_t, a_prev, self.prediction_type)
        std = _rows(_per_sample(self.large_std, idx, sample), sample)
        return _gaussian_step(mean, std, sample, prev_sample, noise, generator, mask)


class _DiffusersAlphaRule(_AlphaRule):
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


class DDIMRule(_DiffusersAlphaRule):
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

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None, mask=None):
        return self._ddim(i, model_output, sample, self.eta, prev_sample, noise, generator, mask)


class DDPMRule(_DiffusersAlphaRule):
    """Ancestral DDPM with the scheduler's variance_type: "fixed_small" (the posterior variance, = DDIM
    with eta = 1) or "fixed_large" (beta_t = 1 - a_t / a_prev, around the same posterior mean)."""

    def __init__(self, scheduler, num_steps: int):
        variance = getattr(scheduler.config, "variance_type", "fixed_small")
        if variance not in ("fixed_small", "fixed_small_log", "fixed_large"):
            raise ValueError(f"DDPMRule supports variance_type 'fixed_small', 'fixed_small_log' or 'fixed_large', "
                             f"got {variance!r}")
        self.variance = "fixed_large" if variance == "fixed_large" else "fixed_small"
        super().__init__(scheduler, num_steps)
        if self.variance == "fixed_large":
            beta = 1 - self.alpha_t / self.alpha_prev  # diffusers' current_beta_t
            # diffusers' step adds noise only where t > 0
            self.large_std = torch.where(self.timesteps.long() > 0, beta.sqrt(), torch.zeros_like(beta))

    def _alpha_prev(self, ac, t):
        prev = torch.cat([t[1:], t.new_tensor([-1])])
        return torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.ones((), dtype=ac.dtype))

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None, mask=None):
        if self.variance == "fixed_large":
            return self._fixed_large(i, model_output, sample, prev_sample, noise, generator, mask)
        return self._ddim(i, model_output, sample, 1.0, prev_sample, noise, generator, mask)


class VPRule(_AlphaRule):
    """Ancestral sampling over a :class:`VPSchedule`: DDIM(eta) (eta = 1: DDPM with the posterior variance)
    or, with ``variance="fixed_large"``, DDPM with std sqrt(beta_t) (which needs eta = 1)."""

    def __init__(self, schedule: VPSchedule, num_steps: int, eta: float = 1.0, variance: str = "fixed_small"):
        if not isinstance(schedule, VPSchedule):
            raise ValueError(f"the 'vp' step rule needs a VPSchedule, got {type(schedule).__name__}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if variance == "fixed_large" and eta != 1:
            raise ValueError(f"variance 'fixed_large' is ancestral DDPM: eta must be 1, got {eta}")
        self.num_steps = _check_num_steps(num_steps)
        self.schedule = self.scheduler = schedule
        self.eta, self.variance = float(eta), variance
        self.stochastic = self.eta > 0
        self.prediction_type = schedule.prediction_type
        self.indices = schedule.sampling_indices(self.num_steps)
        ac = schedule.alphas_cumprod
        self.alpha_t = ac[self.indices]
        self.alpha_prev = torch.cat([self.alpha_t[1:], ac.new_tensor([schedule.final_alpha_cumprod])])
        self.timesteps = schedule.model_times[self.indices].clone()
        if variance == "fixed_large":
            std = (1 - self.alpha_t / self.alpha_prev).sqrt()
            self.large_std = torch.cat([std[:-1], std.new_zeros(1)])  # DDPM's Algorithm 2: no noise at the end

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None, mask=None):
        if self.variance == "fixed_large":
            return self._fixed_large(i, model_output, sample, prev_sample, noise, generator, mask)
        return self._ddim(i, model_output, sample, self.eta, prev_sample, noise, generator, mask)


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

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None, mask=None):
        s, s_next = self._sigmas(i, sample)
        if not self.stochastic and prev_sample is None and noise is None:
            noise = torch.zeros_like(sample)
        return ops.flow_sde_step_with_logprob(model_output, sample, s, s_next, noise_level=self.noise_level,
                                              prev_sample=prev_sample, noise=noise, generator=generator,
                                              **_mask_kwargs(mask))

    def add_noise(self, x0, noise, i):
        s, _ = self._sigmas(i, x0)
        s = _rows(s, x0)
        return ((1 - s) * x0 + s * noise).to(x0.dtype)  # rectified-flow interpolation

    def training_target(self, x0, noise, x_t, i):
        return noise - x0  # velocity d x_s / d s


class FlowODERule(FlowSDERule):
    """The deterministic Euler ODE of the same flow (for evaluation): the SDE with noise_level 0."""

    def __init__(self, scheduler, num_steps: int):
        super().__init__(scheduler, num_steps, noise_level=0.0)


class EDMRule(StepRule):
    """Euler-ancestral steps over an :class:`EDMSchedule` (x = x0 + sigma eps); eta = 0 is the Euler ODE.

    Per step, with sigma' the next noise level: sigma_up = min(sigma', eta sigma' sqrt(sigma^2 - sigma'^2) / sigma),
    sigma_down = sqrt(sigma'^2 - sigma_up^2), mean = x + (sigma_down - sigma) (x - D) / sigma, std = sigma_up.
    """

    def __init__(self, schedule: EDMSchedule, num_steps: int, eta: float = 1.0):
        if not isinstance(schedule, EDMSchedule):
            raise ValueError(f"the 'edm' step rules need an EDMSchedule, got {type(schedule).__name__}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.num_steps = _check_num_steps(num_steps)
        self.schedule = self.scheduler = schedule
        self.eta = float(eta)
        self.stochastic = self.eta > 0
        self.prediction_type = schedule.prediction_type
        sigmas = schedule.sampling_sigmas(self.num_steps)
        self.sigma, self.sigma_next = sigmas[:-1], sigmas[1:]
        s, s2 = self.sigma, self.sigma_next
        self.sigma_up = torch.minimum(s2, self.eta * s2 * (s**2 - s2**2).clamp_min(0).sqrt() / s)
        self.sigma_down = (s2**2 - self.sigma_up**2).clamp_min(0).sqrt()
        self.timesteps = schedule.model_timesteps(self.sigma)
        self.init_noise_sigma = float(self.sigma[0])

    def step(self, i, model_output, sample, prev_sample=None, noise=None, generator=None, mask=None):
        idx = self._index(i, sample)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has "
                             f"{tuple(sample.shape)}")
        s = _rows(_per_sample(self.sigma, idx, sample), sample)
        down = _rows(_per_sample(self.sigma_down, idx, sample), sample)
        up = _rows(_per_sample(self.sigma_up, idx, sample), sample)
        x, m = sample.to(s.dtype), model_output.to(s.dtype)
        eps = (x - m) / s if self.prediction_type == "sample" else m  # d = (x - D) / sigma
        mean = x + (down - s) * eps
        return _gaussian_step(mean, up, sample, prev_sample, noise, generator, mask, draw=self.stochastic)

    def add_noise(self, x0, noise, i):
        s = _rows(_per_sample(self.sigma, self._index(i, x0), x0), x0)
        return (x0 + s * noise).to(x0.dtype)

    def training_target(self, x0, noise, x_t, i):
        return x0 if self.prediction_type == "sample" else noise


class EDMEulerRule(EDMRule):
    """The deterministic Euler step of EDM's probability-flow ODE (for evaluation): EDMRule with eta 0."""

    def __init__(self, schedule: EDMSchedule, num_steps: int):
        super().__init__(schedule, num_steps, eta=0.0)


STEP_RULES = {"ddim": DDIMRule, "ddpm": DDPMRule, "flow_sde": FlowSDERule, "flow_ode": FlowODERule,
              "vp": VPRule, "edm": EDMRule, "edm_euler": EDMEulerRule}


def make_step_rule(name: str, scheduler, num_steps: int, **kwargs) -> StepRule:
    """Build a step rule by name over a diffusers scheduler ("ddim", "ddpm", "flow_sde", "flow_ode"), a
    VPSchedule ("vp") or an EDMSchedule ("edm", "edm_euler")."""
    if name not in STEP_RULES:
        raise ValueError(f"unknown step rule {name!r}; choose one of {sorted(STEP_RULES)}")
    return STEP_RULES[name](scheduler, num_steps, **kwargs)
