"""Noise schedules for models that do not come with a diffusers scheduler (molecules, planning).

A schedule describes the forward process and what the denoiser is conditioned on (betas -> alphas_cumprod,
sigmas); the step rules in diffalign/mdp/steps.py ("vp", "edm") pick a sampling grid from it and take the
reverse steps. An adapter whose model uses one of these exposes it as its ``scheduler`` attribute, as image
adapters expose a diffusers one. This module holds schedule arithmetic only (torch, no policy logic), low in
the layer order beside registry and seeding, so modalities may build their schedule from it;
diffalign.mdp re-exports both classes under their old names (diffalign.mdp.VPSchedule,
diffalign.mdp.schedules.VPSchedule).

- :class:`VPSchedule`: variance preserving, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps over training indices
  t = 0 .. N-1 (a = alphas_cumprod, decreasing; t = 0 the cleanest), given by its betas or its
  alphas_cumprod. Named constructors: linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021, the one
  Diffuser uses), sigmoid (GeoDiff / TargetDiff) and polynomial (Hoogeboom et al. 2022, E(3) diffusion's
  "polynomial_2", used by EDM-molecules and DiffSBDD).
- :class:`EDMSchedule`: variance exploding, x = x0 + sigma eps (Karras et al. 2022), given by the Karras
  discretisation (sigma_min, sigma_max, rho) or by explicit sigmas; the chain always ends at sigma = 0.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

__all__ = ["VPSchedule", "EDMSchedule"]

VP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
EDM_PREDICTION_TYPES = ("sample", "epsilon")
EDM_MODEL_TIMES = ("c_noise", "sigma")

TensorLike = Union[torch.Tensor, Sequence[float]]


def _vector(name: str, values: TensorLike) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).detach().cpu().clone()
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _first_bad(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0])


class VPSchedule:
    """A variance-preserving schedule: alphas_cumprod a[0..N-1] over training indices (t = 0 the cleanest).

    Give exactly one of ``betas`` (each in (0, 1)) or ``alphas_cumprod`` (each in (0, 1), strictly
    decreasing). ``prediction_type``: what the denoiser outputs, "epsilon", "sample" (x0) or
    "v_prediction" (v = sqrt(a) eps - sqrt(1 - a) x0). ``final_alpha_cumprod``: a at the end of the chain,
    the state the last step lands on (1.0: clean data, as DDPM; E(3) diffusion ends at its t = 0 entry,
    1 - precision). ``model_times``: what the denoiser is conditioned on at each training index, (N,)
    (default the index itself, as DDPM and Diffuser; E(3) diffusion uses t / T).
    """

    def __init__(self, betas: Optional[TensorLike] = None, *, alphas_cumprod: Optional[TensorLike] = None,
                 prediction_type: str = "epsilon", final_alpha_cumprod: float = 1.0,
                 model_times: Optional[TensorLike] = None):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("VPSchedule needs exactly one of betas or alphas_cumprod")
        if betas is not None:
            b = _vector("betas", betas)
            bad = (b <= 0) | (b >= 1)
            if bool(bad.any()):
                k = _first_bad(bad)
                raise ValueError(f"betas must lie in (0, 1); betas[{k}] = {b[k].item():.6g}")
            ac = torch.cumprod(1.0 - b, dim=0)
        else:
            ac = _vector("alphas_cumprod", alphas_cumprod)
            bad = (ac <= 0) | (ac >= 1)
            if bool(bad.any()):
                k = _first_bad(bad)
                raise ValueError(f"alphas_cumprod must lie in (0, 1); alphas_cumprod[{k}] = {ac[k].item():.6g}")
            if ac.numel() > 1 and not bool((ac[1:] < ac[:-1]).all()):
                k = _first_bad(ac[1:] >= ac[:-1]) + 1
                raise ValueError(f"alphas_cumprod must be strictly decreasing (index 0 the cleanest); "
                                 f"alphas_cumprod[{k}] = {ac[k].item():.6g} >= alphas_cumprod[{k - 1}] = "
                                 f"{ac[k - 1].item():.6g}")
        if ac[-1] <= 0:
            raise ValueError("alphas_cumprod underflows to 0 at the noisiest index; use smaller betas")
        if prediction_type not in VP_PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {VP_PREDICTION_TYPES}, got {prediction_type!r}")
        final = float(final_alpha_cumprod)
        if not ac[0].item() < final <= 1.0:
            raise ValueError(f"final_alpha_cumprod must lie in (alphas_cumprod[0] = {ac[0].item():.6g}, 1], "
                             f"got {final_alpha_cumprod}")
        n = ac.numel()
        if model_times is None:
            times = torch.arange(n)
        else:
            times = torch.as_tensor(model_times).detach().cpu().clone()
            if tuple(times.shape) != (n,):
                raise ValueError(f"model_times must have shape ({n},) (one per training index), "
                                 f"got {tuple(times.shape)}")
        self.alphas_cumprod = ac
        self.final_alpha_cumprod = final
        self.prediction_type = prediction_type
        self.model_times = times

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def betas(self) -> torch.Tensor:
        prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / prev

    def sampling_indices(self, num_steps: int) -> torch.Tensor:
        """``num_steps`` training indices from N-1 (the noisiest) down to 0, evenly spaced, rounded:
        all of them (N-1, ..., 0) when num_steps = N, as DDPM, Diffuser and E(3) diffusion sample."""
        n = self.num_train_timesteps
        if not 1 <= num_steps <= n:
            raise ValueError(f"num_steps must lie in [1, {n}] (the schedule's training indices), got {num_steps}")
        if num_steps == 1:
            return torch.tensor([n - 1])
        return torch.linspace(n - 1, 0, num_steps, dtype=torch.float64).round().long()

    # ---- named constructors ------------------------------------------------------------------------
    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kwargs):
        """Betas linear from beta_start to beta_end (DDPM, Ho et al. 2020)."""
        return cls(torch.linspace(beta_start, beta_end, _count(num_train_timesteps), dtype=torch.float64), **kwargs)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999, **kwargs):
        """Nichol & Dhariwal (2021), eq. 17: a(t) = f(t) / f(0), f(t) = cos((t/N + s) / (1 + s) pi/2)^2,
        beta_t = min(1 - a(t+1) / a(t), max_beta). Diffuser (Janner et al. 2022) uses this with N = its
        number of diffusion steps."""
        n = _count(num_train_timesteps)
        t = torch.arange(n + 1, dtype=torch.float64) / n
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return cls((1 - f[1:] / f[:-1]).clamp(max=max_beta), **kwargs)

    @classmethod
    def sigmoid(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-7, beta_end: float = 2e-3, **kwargs):
        """Betas = beta_start + (beta_end - beta_start) sigmoid(linspace(-6, 6, N)) (GeoDiff, TargetDiff's
        positions; the defaults are TargetDiff's)."""
        x = torch.linspace(-6, 6, _count(num_train_timesteps), dtype=torch.float64)
        return cls(beta_start + (beta_end - beta_start) * torch.sigmoid(x), **kwargs)

    @classmethod
    def polynomial(cls, num_train_timesteps: int = 1000, power: float = 2.0, precision: float = 1e-5,
                   clip_value: float = 0.001, **kwargs):
        """E(3) diffusion's "polynomial_<power>" (Hoogeboom et al. 2022, used by DiffSBDD), on its grid
        t = 0 .. T (T = num_train_timesteps): alpha^2(t) = (1 - (t/T)^power)^2, each step ratio
        alpha^2(t) / alpha^2(t-1) clipped to [clip_value, 1] (alpha^2(-1) = 1) and re-accumulated, then
        alpha^2 <- (1 - 2 precision) alpha^2 + precision. Their model sees t / T for t = 1 .. T and the
        chain ends at t = 0, so training index k here is their t = k + 1, ``model_times`` = (k + 1) / T and
        ``final_alpha_cumprod`` = alpha^2(0) = 1 - precision. (Their last decoding step p(x | z_0) is the
        adapter's ``decode``.)"""
        n = _count(num_train_timesteps)
        if not 0 < precision < 0.5:
            raise ValueError(f"precision must lie in (0, 0.5), got {precision}")
        if not 0 < clip_value <= 1:
            raise ValueError(f"clip_value must lie in (0, 1], got {clip_value}")
        t = torch.arange(n + 1, dtype=torch.float64) / n
        a2 = (1 - t**power) ** 2
        ratios = (a2 / torch.cat([a2.new_ones(1), a2[:-1]])).nan_to_num(nan=0.0).clamp(clip_value, 1.0)
        a2 = (1 - 2 * precision) * torch.cumprod(ratios, dim=0) + precision
        kwargs.setdefault("model_times", (torch.arange(n, dtype=torch.float64) + 1) / n)
        kwargs.setdefault("final_alpha_cumprod", a2[0].item())
        return cls(alphas_cumprod=a2[1:], **kwargs)

    def __repr__(self) -> str:
        return (f"VPSchedule(num_train_timesteps={self.num_train_timesteps}, prediction_type={self.prediction_type!r}, "
                f"final_alpha_cumprod={self.final_alpha_cumprod:.6g})")


def _count(n: int) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {n}")
    return int(n)


class EDMSchedule:
    """A variance-exploding schedule x = x0 + sigma eps (Karras et al. 2022, "EDM").

    The sampling grid is either the Karras discretisation of ``num_steps`` noise levels,
    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (their eq. 5),
    or explicit ``sigmas`` (positive, strictly decreasing; a rule over them takes len(sigmas) steps); in both
    cases sigma = 0 is appended: the last step lands on the data.

    ``prediction_type``: "sample" (default), the denoised D(x; sigma) -- for a preconditioned network
    (EDM's c_skip x + c_out F(c_in x; c_noise)) the adapter applies the preconditioning and returns D --
    or "epsilon", with x0 = x - sigma eps. ``model_time``: what the adapter's ``denoise`` receives as its
    timesteps: "c_noise" = ln(sigma) / 4 (EDM's preconditioning), "sigma", or a callable mapping a float64
    tensor of sigmas to timesteps.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
                 sigmas: Optional[TensorLike] = None, prediction_type: str = "sample",
                 model_time: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "c_noise"):
        if sigmas is not None:
            s = _vector("sigmas", sigmas)
            if bool((s <= 0).any()):
                k = _first_bad(s <= 0)
                raise ValueError(f"sigmas must be positive (sigma = 0, the end of the chain, is appended); "
                                 f"sigmas[{k}] = {s[k].item():.6g}")
            if s.numel() > 1 and not bool((s[1:] < s[:-1]).all()):
                k = _first_bad(s[1:] >= s[:-1]) + 1
                raise ValueError(f"sigmas must be strictly decreasing (noisiest first); sigmas[{k}] = "
                                 f"{s[k].item():.6g} >= sigmas[{k - 1}] = {s[k - 1].item():.6g}")
            self.sigmas = s
        else:
            if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
                raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, "
                                 f"sigma_max={sigma_max}")
            if not rho > 0:
                raise ValueError(f"rho must be positive, got {rho}")
            self.sigmas = None
        if prediction_type not in EDM_PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {EDM_PREDICTION_TYPES}, got {prediction_type!r}")
        if not callable(model_time) and model_time not in EDM_MODEL_TIMES:
            raise ValueError(f"model_time must be one of {EDM_MODEL_TIMES} or a callable, got {model_time!r}")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.prediction_type = prediction_type
        self.model_time = model_time

    def sampling_sigmas(self, num_steps: int) -> torch.Tensor:
        """(num_steps + 1,) float64: the noise levels of the chain, noisiest first, ending with 0."""
        if self.sigmas is not None:
            if num_steps != self.sigmas.numel():
                raise ValueError(f"num_steps must equal the number of explicit sigmas ({self.sigmas.numel()}), "
                                 f"got {num_steps}")
            s = self.sigmas
        else:
            ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
            lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
            s = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([s, s.new_zeros(1)])

    def model_timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """What the denoiser is conditioned on at noise level sigma (float64 in, float32 out)."""
        if callable(self.model_time):
            return torch.as_tensor(self.model_time(sigma)).to(torch.float32)
        if self.model_time == "c_noise":
            return (sigma.log() / 4).to(torch.float32)  # EDM's c_noise (Karras et al. 2022, Table 1)
        return sigma.to(torch.float32)

    def __repr__(self) -> str:
        grid = (f"sigmas={self.sigmas.numel()} explicit" if self.sigmas is not None else
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho}")
        return f"EDMSchedule({grid}, prediction_type={self.prediction_type!r})"
