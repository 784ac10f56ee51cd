"""The differentiable relaxation of the compositional reward, against the exact detector on known renders."""
import numpy as np
import pytest
import torch

from diffalign.demo import shapes as S
from diffalign.rewards import compositional as C
from diffalign.rewards import compositional_soft as CS
from diffalign.rewards.differentiable import DIFFERENTIABLE_REWARDS


def to_tensor(img_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img_u8).permute(2, 0, 1).float().div(255.0)[None]


def placed(color, shape, cx, cy, r=6.0):
    return S.Placed(color, shape, cx, cy, r, S._bbox(shape, cx, cy, r, 32))


@pytest.mark.parametrize("shape", S.SHAPES)
def test_shape_scores_pick_the_drawn_shape_at_every_size(shape):
    for r in np.linspace(3, 7, 9):
        for cx, cy in ((10.3, 15.6), (16.0, 16.0), (20.7, 12.2)):
            mask = torch.tensor(S._mask(shape, cx, cy, r, 32), dtype=torch.float32)[None]
            _, _, _, skew, c4 = CS._moments(mask)
            scores = CS.shape_scores(skew[0], c4[0])
            assert max(scores, key=lambda k: float(scores[k])) == shape, (shape, r, cx, cy)
            assert abs(sum(float(v) for v in scores.values()) - 1.0) < 1e-5  # a soft partition of the classes


def test_soft_reward_tracks_the_exact_reward_on_renders():
    rng = np.random.default_rng(0)
    imgs, captions = [], []
    train = S.prompts("train")
    for i in range(48):
        scene = S.parse_caption(train[int(rng.integers(len(train)))])
        img = S.render(scene, 32, np.random.default_rng(i))
        true = S.caption(scene)
        # half the captions are wrong in one word: another colour, shape or relation
        if i % 2:
            words = true.split()
            swaps = {**{c: [d for d in S.COLORS if d != c] for c in S.COLORS},
                     **{s: [t for t in S.SHAPES if t != s] for s in S.SHAPES}, "left": ["right"], "right": ["left"],
                     "above": ["below"], "below": ["above"]}
            j = int(rng.integers(len(words)))
            while words[j] not in swaps:
                j = (j + 1) % len(words)
            # the first replacement not already in the caption: a relation keeps two different colours, as every
            # caption of the task has
            words[j] = next(w for w in swaps[words[j]] if w not in words)
            true = S.caption(S.parse_caption(" ".join(words)))
        imgs.append(img)
        captions.append(true)
    x = torch.cat([to_tensor(im) for im in imgs])
    soft = CS.compositional_soft(x, captions)
    exact = torch.tensor([r.reward for r in C.score_batch(np.stack(imgs), captions)])
    assert soft.shape == (48,) and torch.all((soft >= 0) & (soft <= 1))
    assert (soft - exact).abs().max() < 0.12, (soft - exact).abs().max()
    assert np.corrcoef(soft.numpy(), exact.numpy())[0, 1] > 0.95


def test_soft_reward_has_gradient_that_fixes_a_wrong_relation():
    img = S.draw([placed("red", "circle", 9.0, 16.0), placed("blue", "square", 23.0, 16.0)])
    caption = "a red circle right of a blue square"  # the picture shows it left of
    x = to_tensor(img).requires_grad_(True)
    start = CS.compositional_soft(x, [caption])
    assert float(start.detach()) < 0.85  # the position term is near 0, the other four near 1
    (grad,) = torch.autograd.grad(start.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # and a small step along the gradient raises the reward (first order)
    step = CS.compositional_soft((x + 0.05 * grad / grad.abs().max()).detach(), [caption])
    assert float(step) > float(start.detach())


def test_flooding_the_image_with_a_colour_is_not_rewarded():
    good = S.draw([placed("red", "square", 16.0, 16.0)])
    flood = good.copy()
    flood[:, :] = S.COLORS["red"]
    r = CS.compositional_soft(torch.cat([to_tensor(good), to_tensor(flood)]), ["a red square"] * 2)
    assert float(r[0]) > 0.95
    assert float(r[1]) < float(r[0]) - 0.25  # the shape term (and the exact count) fail on a flooded frame


def test_count_constraint_is_the_exact_value():
    img = S.draw([placed("green", "triangle", 8.0, 8.0, 4.0), placed("green", "triangle", 24.0, 24.0, 4.0)])
    two, three = CS.compositional_soft(torch.cat([to_tensor(img)] * 2), ["two green triangles", "three green triangles"])
    # the same colour and shape terms; the count term is 1 for "two" and 0 for "three"
    assert float(two - three) == pytest.approx(1 / 3, abs=1e-6)


def test_registered_differentiable_and_bad_input_named():
    assert DIFFERENTIABLE_REWARDS["compositional_soft"] is CS.compositional_soft
    with pytest.raises(ValueError, match="compositional_soft wants RGB"):
        CS.compositional_soft(torch.zeros(1, 1, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        CS.compositional_soft(torch.zeros(1, 3, 32, 32), ["a red circle"] * 2)
    with pytest.raises(ValueError, match="purple"):
        CS.compositional_soft(torch.zeros(1, 3, 32, 32), ["a purple circle"])
