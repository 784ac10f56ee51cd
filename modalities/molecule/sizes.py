"""The pocket-conditioned atom-count distribution a sample's size is drawn from.

TargetDiff draws the number of ligand atoms from a histogram chosen by the pocket's spatial size (the median
of its 10 largest pairwise atom distances, :func:`~diffalign.modalities.molecule.pocket.space_size`), binned by
fixed bounds. :class:`SizeDistribution` is that scheme: ``bounds`` split the sizes into len(bounds) + 1 bins and
each bin holds a histogram over atom counts min_atoms..max_atoms. :meth:`SizeDistribution.fit` estimates the
histograms from (pocket size, ligand atom count) pairs of a training set (the complexes reader gives them); a
model saved with a fitted distribution keeps it in its config.json. Untrained (the ``tiny`` preset), every bin is
uniform over the counts: the pocket then only matters once fitted.
"""
from __future__ import annotations

import bisect
from typing import Dict, Optional, Sequence

import torch

__all__ = ["SizeDistribution"]


class SizeDistribution:
    """Atom counts min_atoms..max_atoms drawn from the histogram of the pocket's size bin."""

    def __init__(self, min_atoms: int, max_atoms: int, bounds: Sequence[float] = (),
                 counts: Optional[Sequence[Sequence[float]]] = None):
        if not 1 <= int(min_atoms) <= int(max_atoms):
            raise ValueError(f"size distribution needs 1 <= min_atoms <= max_atoms, got {min_atoms}, {max_atoms}")
        self.min_atoms, self.max_atoms = int(min_atoms), int(max_atoms)
        self.bounds = [float(b) for b in bounds]
        if self.bounds != sorted(self.bounds):
            raise ValueError(f"size distribution bounds must be increasing, got {self.bounds}")
        width = self.max_atoms - self.min_atoms + 1
        if counts is None:
            counts = [[1.0] * width for _ in range(len(self.bounds) + 1)]
        hist = torch.as_tensor(counts, dtype=torch.float64)
        if tuple(hist.shape) != (len(self.bounds) + 1, width):
            raise ValueError(f"size distribution counts must be {len(self.bounds) + 1} bins x {width} atom counts "
                             f"({self.min_atoms}..{self.max_atoms}), got shape {tuple(hist.shape)}")
        if bool((hist < 0).any()) or bool((hist.sum(1) <= 0).any()):
            raise ValueError("size distribution counts must be >= 0 with at least one positive count per bin")
        self.counts = hist

    def bin_of(self, size: float) -> int:
        return bisect.bisect_right(self.bounds, float(size))

    def probabilities(self, size: float) -> torch.Tensor:
        """P(count = min_atoms + k) for the pocket's bin, (max_atoms - min_atoms + 1,)."""
        row = self.counts[self.bin_of(size)]
        return row / row.sum()

    def sample(self, size: float, generator: Optional[torch.Generator] = None) -> int:
        p = self.probabilities(size).float()
        return self.min_atoms + int(torch.multinomial(p, 1, generator=generator))

    @classmethod
    def fit(cls, sizes: Sequence[float], atom_counts: Sequence[int], bounds: Sequence[float], min_atoms: int,
            max_atoms: int, smoothing: float = 0.0) -> "SizeDistribution":
        """Histograms of ``atom_counts`` per size bin (plus ``smoothing`` per cell, so an empty bin stays a
        distribution: with 0, an empty bin falls back to uniform)."""
        if len(sizes) != len(atom_counts):
            raise ValueError(f"{len(sizes)} pocket sizes for {len(atom_counts)} atom counts")
        dist = cls(min_atoms, max_atoms, bounds)
        hist = torch.full_like(dist.counts, float(smoothing))
        for s, n in zip(sizes, atom_counts):
            if not dist.min_atoms <= int(n) <= dist.max_atoms:
                raise ValueError(f"atom count {n} outside {dist.min_atoms}..{dist.max_atoms}")
            hist[dist.bin_of(s), int(n) - dist.min_atoms] += 1
        empty = hist.sum(1) <= 0
        hist[empty] = 1.0
        dist.counts = hist
        return dist

    def to_dict(self) -> Dict[str, object]:
        return {"min_atoms": self.min_atoms, "max_atoms": self.max_atoms, "bounds": list(self.bounds),
                "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "SizeDistribution":
        return cls(d["min_atoms"], d["max_atoms"], d.get("bounds", ()), d.get("counts"))

    def __repr__(self) -> str:
        return f"SizeDistribution({self.min_atoms}..{self.max_atoms}, bounds={self.bounds})"


