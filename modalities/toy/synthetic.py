"""Synthetic preference sets with a known preferred property (shipped tiny configs and tests).

``toy``: for each pair, two points drawn from N(0, I) in R^dim (what the toy base model samples after
its pretraining) for a prompt; the winner is the one nearer the prompt's target point
(:func:`diffalign.modalities.toy.rewards.target_distance`), so a model that learns the preference
moves its samples toward the targets, which the toy reward measures in closed form. Rewards are
stored with each pair (E2PO's soft labels read them). Selected by ``data.path: "synthetic:toy"``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from diffalign.data.types import LoadReport, PreferenceDataset, PreferencePair

SYNTHETIC = ("toy",)


def toy_preference_pairs(prompts: Sequence[str], num_pairs: int = 256, dim: int = 2, seed: int = 0,
                         min_gap: float = 0.0) -> PreferenceDataset:
    """``num_pairs`` pairs, prompts taken round-robin; pairs with a reward gap <= min_gap are counted as ties."""
    from diffalign.modalities.toy.rewards import target_distance
    if not prompts:
        raise ValueError("the synthetic toy set needs prompts")
    g = torch.Generator().manual_seed(int(seed))
    names = [str(prompts[i % len(prompts)]) for i in range(num_pairs)]
    a, b = torch.randn(num_pairs, dim, generator=g), torch.randn(num_pairs, dim, generator=g)
    ra, rb = target_distance(a, names), target_distance(b, names)
    report = LoadReport(f"synthetic:toy(seed={seed})", "synthetic", rows=num_pairs)
    pairs = []
    for i in range(num_pairs):
        if abs(float(ra[i] - rb[i])) <= min_gap:
            report.skip("ties", f"pair {i}")
            continue
        (w, rw), (l, rl) = ((a[i], ra[i]), (b[i], rb[i])) if ra[i] > rb[i] else ((b[i], rb[i]), (a[i], ra[i]))
        pairs.append(PreferencePair(names[i], w, l, float(rw), float(rl)))
    report.kept = len(pairs)
    return PreferenceDataset(pairs, [], report)
