"""Reward-model losses: Bradley-Terry (survey Eq. 3), Plackett-Luce (Eq. 5), ties, and ranked groups.

Labels are *ranks*: within a comparison group of K samples, a lower rank is preferred, equal ranks
are a tie, and NaN means "not labelled" (a padded slot, or an aspect the annotator did not judge).
A pair is a group of K = 2.

Ties (``tie_policy``):

- ``"half"`` (default): a tied pair is a Bradley-Terry pair with target 1/2,
  ``-1/2 log sigma(d) - 1/2 log sigma(-d)``, minimised at d = 0. Non-tied pairs keep Eq. 3 exactly.
- ``"davidson"``: Davidson's (1970) extension of BT, P(i > j) = e^{d/2} / Z, P(tie) = nu / Z,
  P(j > i) = e^{-d/2} / Z with Z = e^{d/2} + e^{-d/2} + nu (d = r_i - r_j, nu >= 0); the loss is the
  negative log-likelihood of every pair, tied or not, so non-tied pairs no longer follow Eq. 3
  exactly (nu = 0 gives Eq. 3 back).
- ``"drop"``: tied pairs carry no loss (what the preference-data readers do when they skip ties).

Plackett-Luce with ties uses Breslow's convention: every member of a tie block is "chosen" from the
same remaining set (itself, its block and everything ranked below). Without ties that is Eq. 5
exactly, and for K = 2 it is Eq. 3.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

TIE_POLICIES = ("half", "davidson", "drop")


def _reduce(losses: torch.Tensor, weight: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return losses * weight
    if reduction == "sum":
        return (losses * weight).sum()
    if reduction == "mean":  # weighted mean over the labelled entries; 0 (with a graph) when there are none
        return (losses * weight).sum() / weight.sum().clamp_min(1e-12)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, weight: Optional[torch.Tensor] = None,
                       reduction: str = "mean") -> torch.Tensor:
    """Eq. 3: -log sigma(r(c, x_w) - r(c, x_l)) per pair, then reduced (``weight`` masks or weighs pairs)."""
    losses = -F.logsigmoid(chosen - rejected)
    weight = torch.ones_like(losses) if weight is None else weight.to(losses)
    return _reduce(losses, weight, reduction)


def pair_nll(d: torch.Tensor, outcome: torch.Tensor, tie_policy: str = "half", tie_nu: float = 1.0) -> torch.Tensor:
    """Per-pair loss for score differences d = r_i - r_j and outcomes +1 (i preferred), -1 (j), 0 (tie).

    Pairs whose outcome is NaN are unlabelled and get 0. See the module docstring for the tie policies.
    """
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")
    labelled = ~torch.isnan(outcome)
    o = torch.where(labelled, outcome, torch.zeros_like(outcome)).to(d)
    if tie_policy == "davidson":
        if tie_nu < 0:
            raise ValueError(f"tie_nu must be >= 0 for the Davidson model, got {tie_nu}")
        log_nu = torch.full_like(d, math.log(tie_nu) if tie_nu > 0 else -math.inf)
        logits = torch.stack([d / 2, -d / 2, log_nu], dim=-1)
        logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        pick = torch.where(o > 0, 0, torch.where(o < 0, 1, 2)).unsqueeze(-1)
        losses = -logp.gather(-1, pick).squeeze(-1)
    else:
        decided = -F.logsigmoid(torch.where(o < 0, -d, d))
        tie = -0.5 * (F.logsigmoid(d) + F.logsigmoid(-d)) if tie_policy == "half" else torch.zeros_like(d)
        losses = torch.where(o == 0, tie, decided)
    return torch.where(labelled, losses, torch.zeros_like(losses))


def ranked_pairwise_loss(scores: torch.Tensor, ranks: torch.Tensor, tie_policy: str = "half", tie_nu: float = 1.0,
                         reduction: str = "mean") -> torch.Tensor:
    """Bradley-Terry over all C(K, 2) pairs of each ranked group (the pairwise decomposition of a ranking).

    scores, ranks: (B, K); lower rank preferred, equal ranks tie, NaN unlabelled. "mean" averages over
    every labelled pair in the batch (tied pairs included unless tie_policy is "drop").
    """
    if scores.shape != ranks.shape or scores.ndim != 2:
        raise ValueError(f"scores and ranks must both be (B, K), got {tuple(scores.shape)} and {tuple(ranks.shape)}")
    k = scores.shape[1]
    iu, ju = torch.triu_indices(k, k, offset=1, device=scores.device)
    d = scores[:, iu] - scores[:, ju]
    ri, rj = ranks[:, iu].to(d), ranks[:, ju].to(d)
    diff = rj - ri
    # +1 when i has the lower (better) rank; torch.sign(NaN) is 0, so unlabelled pairs are set apart explicitly
    outcome = torch.where(torch.isnan(diff), diff, torch.sign(diff))
    losses = pair_nll(d, outcome, tie_policy, tie_nu)
    weight = (~torch.isnan(outcome)).to(d)
    if tie_policy == "drop":
        weight = weight * (outcome != 0).to(d)
    return _reduce(losses, weight, reduction)


def plackett_luce_loss(scores: torch.Tensor, ranks: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 5: -sum_k log( exp r_tau(k) / sum_{j >= k} exp r_tau(j) ) per group, ties by Breslow's rule.

    scores, ranks: (B, K); lower rank preferred; NaN ranks are absent items (groups of different sizes
    padded to K). Groups with fewer than two labelled items carry no loss. "mean" averages over groups.
    """
    if scores.shape != ranks.shape or scores.ndim != 2:
        raise ValueError(f"scores and ranks must both be (B, K), got {tuple(scores.shape)} and {tuple(ranks.shape)}")
    valid = ~torch.isnan(ranks)
    r = ranks.to(scores.dtype)
    # item i's choice set: valid items j ranked no better than i (rank_j >= rank_i), i itself included
    choice = valid.unsqueeze(1) & (r.unsqueeze(1) >= r.unsqueeze(2))                      # (B, i, j)
    # absent items choose among themselves only: a finite (then discarded) denominator, so no NaN gradient
    choice = choice | torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device)
    masked = scores.unsqueeze(1).expand_as(choice).masked_fill(~choice, -math.inf)
    denom = torch.logsumexp(masked, dim=-1)                                               # (B, K)
    terms = torch.where(valid, scores - torch.where(valid, denom, torch.zeros_like(denom)), torch.zeros_like(scores))
    losses = -terms.sum(dim=1)
    weight = (valid.sum(dim=1) >= 2).to(scores)
    return _reduce(losses, weight, reduction)


def multi_aspect_loss(scores: torch.Tensor, ranks: torch.Tensor, loss: str = "bt",
                      weights: Optional[Sequence[float]] = None, tie_policy: str = "half",
                      tie_nu: float = 1.0) -> torch.Tensor:
    """One head per aspect (MHP-style multi-dimensional preferences): scores, ranks (G, K, A).

    Each aspect's loss ("bt": :func:`ranked_pairwise_loss`; "pl": :func:`plackett_luce_loss`) uses only
    that aspect's labels; the result is the ``weights``-weighted mean over the aspects that have at
    least one labelled pair in the batch (an aspect nobody judged adds nothing, not a zero).
    """
    if scores.shape != ranks.shape or scores.ndim != 3:
        raise ValueError(f"scores and ranks must both be (G, K, A), got {tuple(scores.shape)} and {tuple(ranks.shape)}")
    if loss not in ("bt", "pl"):
        raise ValueError(f"loss must be 'bt' or 'pl', got {loss!r}")
    n_aspects = scores.shape[-1]
    weights = [1.0] * n_aspects if weights is None else [float(w) for w in weights]
    if len(weights) != n_aspects:
        raise ValueError(f"{len(weights)} aspect weights for {n_aspects} aspects")
    total, weight = scores.new_zeros(()), 0.0
    for a, w in enumerate(weights):
        r = ranks[..., a]
        if w == 0 or not (~torch.isnan(r)).sum(dim=1).ge(2).any():
            continue
        if loss == "pl":
            la = plackett_luce_loss(scores[..., a], r)
        else:
            la = ranked_pairwise_loss(scores[..., a], r, tie_policy, tie_nu)
        total, weight = total + w * la, weight + w
    return total / weight if weight > 0 else total
