"""Diffuser's value guidance: a value function of noisy trajectories whose gradient steers sampling.

:class:`ValueFunction` maps a normalised, noised trajectory x_t (B, T, D) and its timestep to a predicted return;
:func:`train_value_function` fits it to windows' returns at random noise levels (Janner et al. 2022 train the value
on x_t so that its gradient is meaningful along the whole chain). :func:`guided_prediction` applies classifier
guidance to a denoiser output: for epsilon prediction eps' = eps - s sqrt(1 - a_t) grad_x V(x_t, t) (Dhariwal &
Nichol 2021, Eq. 14; Diffuser adds s grad V to the posterior mean, the same shift up to its variance factor), for x0
prediction the same shift in x0 space, x0' = x0 + s (1 - a_t) / sqrt(a_t) grad_x V. PlanningAdapter applies it in
``denoise`` when ``value_guidance`` is set; pinned entries are not moved (the gradient is masked).
"""
from __future__ import annotations

import torch
from torch import nn

from diffalign.modalities.planning.denoisers import sinusoidal

__all__ = ["ValueFunction", "train_value_function", "guided_prediction"]


class ValueFunction(nn.Module):
    """A temporal conv encoder (two strided layers), mean-pooled over time, with a timestep embedding -> scalar."""

    def __init__(self, transition_dim: int, hidden: int = 32):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Sequential(nn.Conv1d(transition_dim, hidden, 3, padding=1), nn.Mish(),
                                  nn.Conv1d(hidden, hidden, 3, stride=2, padding=1), nn.Mish())
        self.time = nn.Linear(hidden, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2)).mean(-1) + self.time(sinusoidal(t, self.hidden).to(x.dtype))
        return self.head(h)[:, 0]


def train_value_function(adapter, windows: torch.Tensor, returns: torch.Tensor, steps: int = 500,
                         batch_size: int = 64, learning_rate: float = 1e-3, hidden: int = 32,
                         seed: int = 0) -> ValueFunction:
    """Fit V(x_t, t) to ``returns`` (N,) of raw windows (N, horizon, S + A), noised by ``adapter``'s scheduler."""
    windows, returns = torch.as_tensor(windows, dtype=torch.float32), torch.as_tensor(returns, dtype=torch.float32)
    if windows.ndim != 3 or returns.shape != (windows.shape[0],):
        raise ValueError(f"value training needs windows (N, T, D) and returns (N,), got {tuple(windows.shape)} "
                         f"and {tuple(returns.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        value = ValueFunction(windows.shape[2], hidden)
    x0 = adapter.normalizer.normalize(windows)
    opt = torch.optim.Adam(value.parameters(), lr=learning_rate)
    n_train = adapter.scheduler.config.num_train_timesteps
    for _ in range(int(steps)):
        idx = torch.randint(windows.shape[0], (min(batch_size, windows.shape[0]),), generator=gen)
        t = torch.randint(n_train, (len(idx),), generator=gen)
        x_t = adapter.scheduler.add_noise(x0[idx], torch.randn(x0[idx].shape, generator=gen), t)
        loss = ((value(x_t, t) - returns[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return value.eval().requires_grad_(False)


def guided_prediction(output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, value: nn.Module,
                      scale: float, alphas_cumprod: torch.Tensor, prediction_type: str,
                      mask: torch.Tensor) -> torch.Tensor:
    """The denoiser ``output`` shifted up the value's gradient at x_t (see the module docstring)."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        grad, = torch.autograd.grad(value(x, timesteps).sum(), x)
    a = alphas_cumprod.to(x_t.device, x_t.dtype)[timesteps.long()].view(-1, *([1] * (x_t.ndim - 1)))
    grad = grad * mask
    if prediction_type == "epsilon":
        return output - scale * (1 - a).sqrt() * grad
    return output + scale * (1 - a) / a.sqrt() * grad
