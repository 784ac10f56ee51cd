"""Fitting a planner to offline trajectory windows: the denoising loss with the observed state inpainted.

Each step draws windows (raw (N, horizon, S + A) rows, e.g. SegmentSampler output), normalises them, noises
them with the adapter's scheduler (noise through ``project_noise``, the first state written back by ``project``,
as at sampling time), and regresses the scheduler's target (epsilon or x0) over the entries ``logprob_mask``
counts. With per-window attribute strengths, each attribute is requested with probability 1 - ``drop``, so the
same model learns every subset of requests and the unconditional branch (AlignDiff's masked attribute
training, which classifier-free guidance needs). Afterwards the frozen reference is the fitted model.
"""
from __future__ import annotations

from typing import List, Optional

import torch

__all__ = ["fit_planner", "denoising_loss"]


def _conditions(adapter, windows: torch.Tensor, attributes: Optional[torch.Tensor], keep: Optional[torch.Tensor]):
    b, k = windows.shape[0], len(adapter.attributes)
    values = torch.zeros(b, k) if attributes is None else attributes.float()
    mask = torch.zeros(b, k) if attributes is None else keep.float()
    return {"observation": windows[:, 0, :adapter.state_dim].float().to(adapter.device),
            "attributes": values.to(adapter.device), "attribute_mask": mask.to(adapter.device)}


def denoising_loss(adapter, windows: torch.Tensor, generator: torch.Generator,
                   attributes: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Masked mean squared error of the denoiser's prediction on noised windows (random timesteps)."""
    cond = _conditions(adapter, windows, attributes, keep)
    x0 = adapter.project(adapter.normalizer.normalize(windows.float()).to(adapter.device), cond)
    noise = adapter.project_noise(torch.randn(x0.shape, generator=generator).to(adapter.device), cond)
    t = torch.randint(adapter.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    x_t = adapter.project(adapter.scheduler.add_noise(x0, noise, t.to(adapter.device)), cond)
    target = noise if adapter.prediction_type == "epsilon" else x0
    mask = adapter.logprob_mask(cond, x0)
    err = (adapter.denoise(x_t, t.to(adapter.device), cond) - target) ** 2
    return (err * mask).sum() / mask.sum()


def fit_planner(adapter, windows: torch.Tensor, steps: int, batch_size: int = 64, learning_rate: float = 1e-3,
                seed: int = 0, attributes: Optional[torch.Tensor] = None, drop: float = 0.25) -> List[float]:
    """Train ``adapter``'s denoiser on raw windows (N, horizon, S + A) [with strengths (N, K)]; returns losses."""
    windows = torch.as_tensor(windows, dtype=torch.float32)
    if windows.ndim != 3 or windows.shape[1:] != (adapter.horizon, adapter.transition_dim):
        raise ValueError(f"windows must be (N, {adapter.horizon}, {adapter.transition_dim}), "
                         f"got {tuple(windows.shape)}")
    if attributes is not None:
        attributes = torch.as_tensor(attributes, dtype=torch.float32)
        if attributes.shape != (windows.shape[0], len(adapter.attributes)):
            raise ValueError(f"attributes must be (N, K) = ({windows.shape[0]}, {len(adapter.attributes)}) "
                             f"for the model's {adapter.attributes}, got {tuple(attributes.shape)}")
    if not 0 <= drop < 1:
        raise ValueError(f"drop (the probability an attribute is left unrequested) must be in [0, 1), got {drop}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(adapter.trainable_parameters(), lr=learning_rate)
    losses = []
    for _ in range(int(steps)):
        idx = torch.randint(windows.shape[0], (min(batch_size, windows.shape[0]),), generator=gen)
        keep = None if attributes is None else torch.rand(len(idx), attributes.shape[1], generator=gen) >= drop
        loss = denoising_loss(adapter, windows[idx], gen, None if attributes is None else attributes[idx], keep)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    adapter.freeze_reference()
    return losses
