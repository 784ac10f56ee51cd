"""Per-dimension normalisation of (state, action) rows: z = (x - mean) / std, stored with the model."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["Normalizer"]


class Normalizer:
    """mean and std (D,) over a dataset's rows; std floored so constant dimensions stay finite."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], min_std: float = 1e-6):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1).clamp_min(min_std)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"normaliser mean and std differ in length: {self.mean.numel()} vs {self.std.numel()}")
        if not bool(torch.isfinite(self.mean).all() & torch.isfinite(self.std).all()):
            raise ValueError("normaliser mean/std must be finite")

    @classmethod
    def identity(cls, dim: int) -> "Normalizer":
        return cls(torch.zeros(dim), torch.ones(dim))

    @classmethod
    def fit(cls, rows: torch.Tensor) -> "Normalizer":
        """From rows (..., D) of a dataset (float64 accumulation)."""
        flat = torch.as_tensor(rows).reshape(-1, rows.shape[-1]).double()
        if flat.shape[0] < 2:
            raise ValueError(f"fitting a normaliser needs at least 2 rows, got {flat.shape[0]}")
        return cls(flat.mean(0).float(), flat.std(0).float())

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def _stats(self, x: torch.Tensor, dims: slice):
        return self.mean[dims].to(x.device, x.dtype), self.std[dims].to(x.device, x.dtype)

    def normalize(self, x: torch.Tensor, dims: slice = slice(None)) -> torch.Tensor:
        mean, std = self._stats(x, dims)
        return (x - mean) / std

    def unnormalize(self, z: torch.Tensor, dims: slice = slice(None)) -> torch.Tensor:
        mean, std = self._stats(z, dims)
        return z * std + mean

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}
