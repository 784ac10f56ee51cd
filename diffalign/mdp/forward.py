"""The forward process q(x_t | x0) on a scheduler's full training grid, for denoising losses on stored data.

The step rules (steps.py) index the *sampling* schedule (T inference steps). Offline preference losses
instead noise stored samples at a timestep drawn uniformly from the model's whole training grid, as
the Diffusion-DPO trainer does (``torch.randint(0, num_train_timesteps)``) — a T-step sampling grid
would only ever train T noise levels.

- alphas_cumprod schedulers (DDIM, DDPM; epsilon / v / sample prediction): index t in [0, N),
  x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, model timestep t, target eps / v = sqrt(a) eps - sqrt(1-a) x0 / x0.
- flow matching (FlowMatchEulerDiscreteScheduler): index i in [0, N) into the scheduler's training
  sigmas (its shift included), x_s = (1 - s) x0 + s eps, model timestep s N, target the velocity eps - x0.
  (SD3's own trainer draws s from a logit-normal density; uniform over the grid is the simple choice.)
- :class:`~diffalign.schedules.VPSchedule`: as the alphas_cumprod schedulers, over its N training
  indices; the model timestep is the schedule's ``model_times`` entry.
- :class:`~diffalign.schedules.EDMSchedule`: x = x0 + sigma eps on a grid of ``EDM_GRID`` Karras noise
  levels (or the schedule's explicit sigmas); target x0 ("sample") or eps. (EDM's trainer draws ln sigma from
  a normal density; a uniform index over the grid is the simple choice, as for flow matching.)
"""
from __future__ import annotations

import torch

from diffalign.schedules import EDMSchedule, VPSchedule

__all__ = ["ForwardProcess", "EDM_GRID"]

EDM_GRID = 1000  # noise levels of the offline grid of an EDM schedule without explicit sigmas


class ForwardProcess:
    def __init__(self, scheduler):
        self.flow = self.edm = False
        self.model_times = None
        if isinstance(scheduler, VPSchedule):
            self.num_train_timesteps = scheduler.num_train_timesteps
            self.prediction_type = scheduler.prediction_type
            self.alphas_cumprod = scheduler.alphas_cumprod.clone()
            self.model_times = scheduler.model_times
            return
        if isinstance(scheduler, EDMSchedule):
            self.edm, self.schedule = True, scheduler
            grid = scheduler.sigmas if scheduler.sigmas is not None else scheduler.sampling_sigmas(EDM_GRID)[:-1]
            self.sigmas = grid.to(torch.float64).clone()
            self.num_train_timesteps = self.sigmas.numel()
            self.prediction_type = scheduler.prediction_type
            return
        from diffusers import FlowMatchEulerDiscreteScheduler
        fresh = type(scheduler).from_config(scheduler.config)  # the training grid, whatever set_timesteps did
        self.num_train_timesteps = int(fresh.config.num_train_timesteps)
        self.flow = isinstance(fresh, FlowMatchEulerDiscreteScheduler)
        if self.flow:
            self.prediction_type = "flow"
            self.sigmas = fresh.sigmas[: self.num_train_timesteps].to(torch.float64).clone()
            self.timesteps = fresh.timesteps[: self.num_train_timesteps].to(torch.float64).clone()
        else:
            self.prediction_type = fresh.config.prediction_type
            if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
                raise ValueError(f"scheduler prediction_type {self.prediction_type!r} is not supported")
            self.alphas_cumprod = fresh.alphas_cumprod.to(torch.float64).clone()

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(self.num_train_timesteps, (n,), generator=generator)

    def _coef(self, values: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        dt = torch.float64 if like.dtype == torch.float64 else torch.float32
        return values[idx.cpu()].to(like.device, dt).reshape((-1,) + (1,) * (like.ndim - 1))

    def model_timesteps(self, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """What the denoiser is conditioned on, (B,) on like's device."""
        if self.flow:
            return self.timesteps[idx.cpu()].to(like.device, torch.float32)
        if self.edm:
            return self.schedule.model_timesteps(self.sigmas[idx.cpu()]).to(like.device)
        if self.model_times is not None:
            return torch.as_tensor(self.model_times)[idx.cpu()].to(like.device)
        return idx.to(like.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.edm:
            return (x0 + self._coef(self.sigmas, idx, x0) * noise).to(x0.dtype)
        if self.flow:
            s = self._coef(self.sigmas, idx, x0)
            return ((1 - s) * x0 + s * noise).to(x0.dtype)
        a = self._coef(self.alphas_cumprod, idx, x0)
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.edm:
            return x0 if self.prediction_type == "sample" else noise
        if self.flow:
            return noise - x0
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        a = self._coef(self.alphas_cumprod, idx, x0)
        return (a.sqrt() * noise - (1 - a).sqrt() * x0).to(x0.dtype)
