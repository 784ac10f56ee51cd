"""The synthetic annotator: its labels follow the Bradley-Terry probability (statistically, seeded), ties,
determinism; synthetic trajectories; written labels read back by the segment-label reader."""
import math

import pytest
import torch

from diffalign.data.segment_labels import read_segment_labels
from diffalign.rewards.behaviour import ENV_SPECS, attribute_values, normalised_attributes
from diffalign.rewards.behaviour_annotator import (annotate, label_agreement, preference_probability,
                                                   synthetic_trajectories, write_synthetic_segment_labels)

HOP = ENV_SPECS["hopper"]


def _two_speeds(u_a, u_b, T=8):
    """Two segments whose normalised speeds (range 0..3 m/s) are u_a and u_b."""
    x = torch.zeros(2, T, HOP.dim)
    x[0, :, 5], x[1, :, 5] = 3 * u_a, 3 * u_b
    return x


def test_probability_is_the_bradley_terry_formula():
    ua, ub = torch.tensor([0.7, 0.1, 0.4]), torch.tensor([0.2, 0.6, 0.4])
    p = preference_probability(ua, ub, 0.25)
    expected = [1 / (1 + math.exp(-(a - b) / 0.25)) for a, b in zip(ua.tolist(), ub.tolist())]
    assert p.tolist() == pytest.approx(expected, rel=1e-6)
    assert preference_probability(ua, ub, 0).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        preference_probability(ua, ub, -1)


def test_label_frequencies_match_the_bt_probability():
    """Over many pairs of the same two segments, the fraction of label 1 when (a, b) = (0, 1) is sigmoid of the
    normalised speed gap over the temperature (binomial 4-sigma band), and 1 - that for the swapped order."""
    x = _two_speeds(0.6, 0.4)
    ann = annotate(x, ["speed"], 8000, temperature=0.2, seed=3)
    p = 1 / (1 + math.exp(-(0.6 - 0.4) / 0.2))
    first = ann.pairs[:, 0] == 0
    n1, n0 = int(first.sum()), int((~first).sum())
    assert n1 > 3000 and n0 > 3000
    for mask, q, n in ((first, p, n1), (~first, 1 - p, n0)):
        freq = float(ann.labels[mask].mean())
        assert abs(freq - q) < 4 * math.sqrt(q * (1 - q) / n), (freq, q)
    assert ann.probabilities[first].unique().tolist() == pytest.approx([p], rel=1e-6)


def test_zero_temperature_ties_and_margin():
    x = _two_speeds(0.5, 0.5)
    ann = annotate(x, ["speed"], 20, temperature=0.0, seed=0)
    assert set(ann.labels.tolist()) == {0.5}                 # equal attributes: a tie, not a coin flip
    x = _two_speeds(0.50, 0.52)
    near = annotate(x, ["speed"], 20, temperature=0.0, tie_margin=0.05, seed=0)
    assert set(near.labels.tolist()) == {0.5}
    far = annotate(x, ["speed"], 20, temperature=0.0, tie_margin=0.01, seed=0)
    assert ((far.labels == 1) == (far.pairs[:, 0] == 1)).all()   # segment 1 is faster: always chosen
    # the margin is in normalised units: over a 10x narrower speed range the same gap is 10x wider
    narrow = annotate(x, ["speed"], 20, temperature=0.0, tie_margin=0.05, seed=0, ranges={"speed": [0.0, 0.3]})
    assert 0.5 not in narrow.labels.tolist()


def test_annotations_are_seeded_and_pairs_distinct():
    x = synthetic_trajectories(30, horizon=16, seed=1)
    a = annotate(x, ["speed", "jump_height"], 200, seed=5)
    b = annotate(x, ["speed", "jump_height"], 200, seed=5)
    c = annotate(x, ["speed", "jump_height"], 200, seed=6)
    assert torch.equal(a.pairs, b.pairs) and torch.equal(a.labels, b.labels) and a.attributes == b.attributes
    assert not torch.equal(a.pairs, c.pairs)
    assert (a.pairs[:, 0] != a.pairs[:, 1]).all()
    assert set(a.attributes) == {"speed", "jump_height"}
    # low noise: most labels pick the larger attribute
    assert label_agreement(a) > 0.8
    noisy = annotate(x, ["speed", "jump_height"], 2000, temperature=5.0, seed=5)
    assert 0.4 < label_agreement(noisy) < 0.65


def test_synthetic_trajectories_vary_every_attribute():
    x = synthetic_trajectories(64, horizon=32, seed=0)
    assert x.shape == (64, 32, HOP.dim) and torch.equal(x, synthetic_trajectories(64, horizon=32, seed=0))
    assert x[..., HOP.obs_dim:].abs().max() <= 1.0           # actions in [-1, 1]
    u = normalised_attributes(x, ["speed", "torso_height", "jump_height"])
    assert (u.std(dim=0) > 0.1).all()                         # a spread worth ranking in each attribute
    assert attribute_values(x, ["energy", "effort", "smoothness"]).std(dim=0).min() > 0


def test_written_labels_read_back(tmp_path):
    path = write_synthetic_segment_labels(tmp_path, ["speed", "torso_height"], num_segments=20, num_pairs=50,
                                          horizon=8, seed=2)
    prefs = read_segment_labels(path)
    assert len(prefs) == 50 and prefs.a.shape == (50, 8, HOP.dim) and prefs.report.skipped == 0
    ann = annotate(synthetic_trajectories(20, 8, seed=2), ["speed", "torso_height"], 50, seed=3)
    assert prefs.labels.tolist() == ann.labels.tolist() and prefs.attributes == ann.attributes
    with pytest.raises(ValueError, match=r"aspects \['height'\] are not behaviour attributes"):
        write_synthetic_segment_labels(tmp_path, ["height"])
