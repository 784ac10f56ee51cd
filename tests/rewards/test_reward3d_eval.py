"""Multi-view accuracy (the fraction of >= 16 evaluation views all around that satisfy the prompt under the
compositional checks), its interval over views, and the paired tests over views and runs."""
import math

import numpy as np
import pytest

from diffalign.data.multiview import draw_view
from diffalign.eval.multiview import (MIN_VIEWS, check_all_around, evaluation_azimuths, multiview_accuracy,
                                      paired_runs, paired_views, sign_flip_p)


def _janus(m, n=16, prompt=("red", "circle"), wrong=("blue", "circle")):
    """n views of an object showing the prompt from the first m azimuths and a wrong colour from the rest."""
    az = evaluation_azimuths(n)
    return np.stack([draw_view(*(prompt if i < m else wrong), a, (0.4, 0.2), 6.0, 32) for i, a in enumerate(az)]), az


def _wilson(k, n, z=1.959963984540054):  # Wilson (1927), written out independently of diffalign.eval.paired
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, c - h), min(1.0, c + h)


def test_accuracy_is_the_fraction_of_views_satisfying_the_prompt():
    views, az = _janus(5)
    out = multiview_accuracy(views, "a red circle", azimuths=az)
    assert out["n_views"] == 16 and out["accuracy"] == 5 / 16
    assert out["correct"] == [True] * 5 + [False] * 11
    assert out["ci95"] == pytest.approx(_wilson(5, 16))
    # a blue circle meets none of "a red circle"'s checks (no red object): reward 1 on the good views, 0 elsewhere
    assert out["reward"] == pytest.approx(5 / 16) and out["rewards"][5] == 0.0
    # float (N, 3, H, W) renders in [0, 1] are judged alike; prompts may be per view
    as_float = views.transpose(0, 3, 1, 2).astype(np.float32) / 255
    import torch
    again = multiview_accuracy(torch.from_numpy(as_float), ["a red circle"] * 16)
    assert again["correct"] == out["correct"]
    assert multiview_accuracy(views, ["a blue circle"] * 16)["accuracy"] == 11 / 16


def test_views_must_be_at_least_16_all_around():
    assert evaluation_azimuths(16)[1] == 22.5 and len(evaluation_azimuths(20)) == 20
    with pytest.raises(ValueError, match="at least 16"):
        evaluation_azimuths(8)
    check_all_around([a + 7.0 for a in evaluation_azimuths(16)])  # any rotation of an even spacing
    with pytest.raises(ValueError, match="evenly spaced all around"):
        check_all_around([i * 10.0 for i in range(16)])           # a 150-degree arc
    views, az = _janus(3)
    with pytest.raises(ValueError, match="at least 16"):
        multiview_accuracy(views[:8], "a red circle")
    with pytest.raises(ValueError, match="16 views but 3 prompts"):
        multiview_accuracy(views, ["a red circle"] * 3)
    with pytest.raises(ValueError, match="evenly spaced"):
        multiview_accuracy(views, "a red circle", azimuths=[i * 5.0 for i in range(16)])
    with pytest.raises(ValueError, match="'compositional' or a callable"):
        multiview_accuracy(views, "a red circle", reward="clip")


def test_any_checker_can_judge_the_views():
    class Judged:
        def __init__(self, ok):
            self.correct, self.reward = ok, float(ok)
    views, _ = _janus(0)
    out = multiview_accuracy(views, "anything", reward=lambda imgs, prompts: [Judged(i % 4 == 0) for i in
                                                                             range(len(prompts))])
    assert out["accuracy"] == 4 / 16 and MIN_VIEWS == 16


def test_sign_flip_test_matches_its_closed_form():
    # five equal positive changes: only the all-plus and all-minus patterns are as extreme, p = 2 / 2^5
    assert sign_flip_p([0.1] * 5) == pytest.approx(2 / 32)
    assert sign_flip_p([0.2, -0.2]) == 1.0
    # d = [0.3, 0.1, -0.1], sum 0.3: the flips s.d with |s.d| >= 0.3 are +++ (0.3), ++- (0.5), +-- (0.3) and
    # their negations, 6 of 8 (+-+ gives 0.1)
    assert sign_flip_p([0.3, 0.1, -0.1]) == pytest.approx(6 / 8)
    big = sign_flip_p([0.1] * 20)  # sampled patterns beyond 16 runs: still tiny
    assert big < 1e-3


def test_paired_runs_against_a_hand_computed_t_interval():
    before = [[True, False, False, False], [False] * 4, [True, True, False, False]]
    after = [[True, True, True, False], [True, False, False, False], [True, True, True, True]]
    out = paired_runs(before, after)
    deltas = [0.5, 0.25, 0.5]
    assert out["deltas"] == deltas and out["mean_delta"] == pytest.approx(np.mean(deltas))
    sd = np.std(deltas, ddof=1)
    t975_df2 = 4.302652729911275  # Student t quantile, 2 degrees of freedom
    half = t975_df2 * sd / math.sqrt(3)
    assert out["ci95"] == pytest.approx([np.mean(deltas) - half, np.mean(deltas) + half])
    assert out["sign_flip_p"] == pytest.approx(2 / 8)
    # every view pooled: 5 fixed, 0 broken -> McNemar's exact p = 2 / 2^5
    assert out["views"]["fixed"] == 5 and out["views"]["broken"] == 0
    assert out["views"]["mcnemar_p"] == pytest.approx(2 / 32)
    assert paired_views(before[0], after[0])["fixed"] == 2
    with pytest.raises(ValueError, match="run 0 has 4 views before and 3 after"):
        paired_runs(before, [a[:3] for a in after])
    with pytest.raises(ValueError, match="same number"):
        paired_runs(before, after[:2])
