"""A synthetic annotator of behaviour attributes (the stand-in for AlignDiff's crowd-sourced labels), and
synthetic locomotion-like trajectories whose attributes are known without running a simulator.

The annotator compares two segments on one attribute, as AlignDiff's annotators answer "which of the two
shows more <attribute>?". With u_a, u_b the segments' attributes in normalised units
(:func:`diffalign.rewards.behaviour.normalise`) it answers "a" (label 1) with the Bradley-Terry probability

    P(a) = sigmoid((u_a - u_b) / temperature)

(temperature 0: always the larger one, 0.5 on exact equality), and reports a tie (label 0.5) instead when
|u_a - u_b| < ``tie_margin`` (differences too small to see). Labels are written in the layout that
:func:`diffalign.data.segment_labels.read_segment_labels` reads, so synthetic and human labels take the same
path into training.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch

from diffalign.data.segment_labels import write_segment_labels
from diffalign.rewards.behaviour import ATTRIBUTES, env_spec, normalised_attributes


def preference_probability(u_a: torch.Tensor, u_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(a preferred) = sigmoid((u_a - u_b) / temperature); a step (0.5 at equality) for temperature 0."""
    if temperature < 0:
        raise ValueError(f"annotator temperature must be >= 0, got {temperature!r}")
    d = (u_a - u_b).double()
    if temperature == 0:
        return (torch.sign(d) + 1) / 2
    return torch.sigmoid(d / temperature)


@dataclasses.dataclass
class Annotations:
    """P labelled pairs over N segments: index pairs (P, 2), attribute names, labels in {0, 0.5, 1}, and the
    probability of label 1 the annotator drew them with."""
    pairs: torch.Tensor
    attributes: List[str]
    labels: torch.Tensor
    probabilities: torch.Tensor


def annotate(segments: Any, attributes: Sequence[str], num_pairs: int, env: Any = "hopper", temperature: float = 0.05,
             tie_margin: float = 0.0, seed: int = 0,
             ranges: Optional[Mapping[str, Sequence[float]]] = None) -> Annotations:
    """``num_pairs`` random pairs of distinct segments, each labelled on an attribute drawn uniformly from
    ``attributes`` (module docstring; ``ranges`` overrides the normalisation ranges that the temperature and
    the tie margin are measured in). Seeded: the same arguments give the same labels."""
    if num_pairs < 1 or not attributes:
        raise ValueError(f"annotate needs num_pairs >= 1 and at least one attribute, got {num_pairs}, {attributes!r}")
    if tie_margin < 0:
        raise ValueError(f"annotator tie_margin must be >= 0, got {tie_margin!r}")
    x = torch.as_tensor(segments)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"annotate needs at least 2 segments (N, T, D), got shape {tuple(x.shape)}")
    u = normalised_attributes(x, list(attributes), env, ranges).double()  # (N, A)
    g = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    i = torch.randint(0, n, (num_pairs,), generator=g)
    j = (i + torch.randint(1, n, (num_pairs,), generator=g)) % n           # j != i
    k = torch.randint(0, len(attributes), (num_pairs,), generator=g)
    ua, ub = u[i, k], u[j, k]
    p = preference_probability(ua, ub, temperature)
    labels = (torch.rand(num_pairs, generator=g, dtype=torch.float64) < p).double()
    if temperature == 0:  # exact equality is a tie, not a coin flip
        labels = torch.where(ua == ub, torch.full_like(labels, 0.5), labels)
    labels = torch.where((ua - ub).abs() < tie_margin, torch.full_like(labels, 0.5), labels)
    return Annotations(torch.stack([i, j], dim=1), [attributes[int(a)] for a in k], labels.float(), p.float())


def synthetic_trajectories(num: int, horizon: int = 32, env: Any = "hopper", seed: int = 0) -> torch.Tensor:
    """(num, horizon, S + A) locomotion-like trajectories with independently varied behaviour.

    Per trajectory (seeded): forward velocity ~ U(0, 3) m/s plus noise; torso height h ~ U(0.9, 1.3) m
    oscillating as h + a sin(2 pi f t + phi) with hop amplitude a ~ U(0, 0.2) m and frequency f ~ U(0.5, 4) Hz;
    joint angles as sinusoids whose velocities are their exact derivatives; actions a scale ~ U(0, 1) times a
    sinusoid plus roughness noise ~ U(0, 0.3). Other observation values are small noise. Their attributes are
    whatever :mod:`diffalign.rewards.behaviour` computes from them (all vary across the set)."""
    spec = env_spec(env)
    g = torch.Generator().manual_seed(int(seed))
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(num, *shape, generator=g)  # noqa: E731
    t = torch.arange(horizon, dtype=torch.float32) * spec.dt                      # (T,)
    x = 0.01 * torch.randn(num, horizon, spec.dim, generator=g)
    h, amp, freq, phase = u(0.9, 1.3, 1), u(0.0, 0.2, 1), u(0.5, 4.0, 1), u(0.0, 2 * math.pi, 1)
    x[..., spec.height] = h + amp * torch.sin(2 * math.pi * freq * t + phase)
    x[..., spec.x_velocity] = u(0.0, 3.0, 1) + 0.1 * torch.randn(num, horizon, generator=g)
    lo, hi = spec.joint_velocities
    joints = hi - lo
    jf, ja, jp = u(0.5, 3.0, 1, joints), u(0.1, 1.0, 1, joints), u(0.0, 2 * math.pi, 1, joints)
    w = 2 * math.pi * jf                                                          # (num, 1, J)
    x[..., lo:hi] = ja * w * torch.cos(w * t[None, :, None] + jp)                 # d/dt of ja sin(w t + jp)
    scale, rough = u(0.0, 1.0, 1, 1), u(0.0, 0.3, 1, 1)
    act = scale * torch.sin(w * t[None, :, None] + jp) + rough * torch.randn(num, horizon, spec.act_dim, generator=g)
    x[..., spec.obs_dim:] = act.clamp(-1, 1)
    return x


def write_synthetic_segment_labels(directory: str, aspects: Sequence[str] = ("speed", "jump_height"),
                                   num_segments: int = 256, num_pairs: int = 1024, horizon: int = 32,
                                   env: str = "hopper", temperature: float = 0.05, tie_margin: float = 0.0,
                                   seed: int = 0) -> str:
    """Synthetic trajectories labelled by the annotator, written in the JSONL segment layout; returns its path
    (``directory/labels.jsonl`` beside ``directory/segments.npz``)."""
    unknown = [a for a in aspects if a not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"synthetic segment labels: aspects {unknown} are not behaviour attributes "
                         f"{sorted(ATTRIBUTES)}")
    segments = synthetic_trajectories(num_segments, horizon, env, seed)
    ann = annotate(segments, list(aspects), num_pairs, env, temperature, tie_margin, seed + 1)
    pairs: List[Tuple[int, int]] = [(int(a), int(b)) for a, b in ann.pairs.tolist()]
    return write_segment_labels(os.fspath(directory), segments, pairs, ann.attributes, ann.labels.tolist())


def label_agreement(annotations: Annotations, true_labels: Optional[torch.Tensor] = None) -> float:
    """Fraction of non-tied labels that pick the segment with the larger attribute (p > 0.5): how noisy a
    labelled set is. ``true_labels`` overrides the annotator's own noiseless answer."""
    truth = (annotations.probabilities > 0.5).float() if true_labels is None else true_labels.float()
    decided = (annotations.labels != 0.5) & (annotations.probabilities != 0.5)
    if not decided.any():
        return math.nan
    return float((annotations.labels[decided] == truth[decided]).float().mean())
