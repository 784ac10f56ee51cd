"""Pairwise preference accuracy (survey 5.2.1, the Table 3 protocol) with an explicit tie policy.

Every pair of a group with different label ranks is one comparison: it counts 1 when the reward
scores the preferred sample higher, 0 when lower, and 1/2 when the two scores are equal (a reward
tie is a coin flip, so a constant reward scores 0.5, not 0 or 1). Pairs whose labels tie are not
comparisons: they are excluded from the accuracy and counted in ``n_ties``; unlabelled (NaN) pairs
are ignored.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict

import torch

TIE_POLICY = ("label ties (equal ranks in the data) are excluded from the accuracy and counted in n_ties; "
              "score ties (equal rewards) count 0.5")


@dataclasses.dataclass
class PairwiseAccuracy:
    correct: float = 0.0       # 1 per agreeing pair, 0.5 per score tie
    n_pairs: int = 0           # pairs with a strict label preference
    n_ties: int = 0            # labelled pairs with equal ranks (excluded)
    n_score_ties: int = 0      # of n_pairs, those the reward scored equally

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_pairs if self.n_pairs else math.nan

    def __iadd__(self, other: "PairwiseAccuracy") -> "PairwiseAccuracy":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def to_dict(self) -> Dict[str, Any]:
        return {"accuracy": self.accuracy, "n_pairs": self.n_pairs, "n_correct": self.correct, "n_ties": self.n_ties,
                "n_score_ties": self.n_score_ties}


def pairwise_accuracy(scores: torch.Tensor, ranks: torch.Tensor) -> PairwiseAccuracy:
    """Over all C(K, 2) pairs of each group. scores, ranks: (G, K); lower rank preferred, NaN unlabelled."""
    if scores.shape != ranks.shape or scores.ndim != 2:
        raise ValueError(f"scores and ranks must both be (G, K), got {tuple(scores.shape)} and {tuple(ranks.shape)}")
    k = scores.shape[1]
    i, j = torch.triu_indices(k, k, offset=1)
    s = scores.detach().double().cpu()
    r = ranks.detach().double().cpu()
    ds, dr = s[:, i] - s[:, j], r[:, j] - r[:, i]   # dr > 0: i preferred
    labelled = ~torch.isnan(dr)
    strict = labelled & (dr != 0)
    agree = (torch.sign(ds) == torch.sign(dr)) & strict
    tie = (ds == 0) & strict
    return PairwiseAccuracy(correct=float(agree.sum()) + 0.5 * float(tie.sum()), n_pairs=int(strict.sum()),
                            n_ties=int((labelled & (dr == 0)).sum()), n_score_ties=int(tie.sum()))
