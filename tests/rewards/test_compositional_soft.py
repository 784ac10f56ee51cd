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


def _renders_and_exact(n=36, seed=1):
    """Renders of the shapes world, each with a caption that is right or wrong in one word, and the exact reward."""
    rng = np.random.default_rng(seed)
    train = S.prompts("train")
    imgs, captions = [], []
    for i in range(n):
        scene = S.parse_caption(train[int(rng.integers(len(train)))])
        imgs.append(S.render(scene, 32, np.random.default_rng(100 + i)))
        captions.append(S.caption(scene) if i % 2 else train[int(rng.integers(len(train)))])
    # views the exact checks fail completely: black and grey, as a radiance field starts
    imgs += [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 128, np.uint8)]
    captions += ["a red circle", "a green triangle"]
    exact = np.array([r.reward for r in C.score_batch(np.stack(imgs), captions)])
    return torch.cat([to_tensor(im) for im in imgs]), captions, exact


@pytest.mark.parametrize("color", ["red", "green", "blue", "yellow"])
def test_colour_guide_gives_a_grey_view_a_gradient_toward_the_colour(color):
    caption = f"a {color} circle"
    rgb = torch.tensor(S.COLORS[color], dtype=torch.float32) / 255
    for level in (0.02, 0.5):  # near black (an empty field on black) and grey
        plain = torch.full((1, 3, 32, 32), level, requires_grad=True)
        CS.compositional_soft(plain, [caption]).sum().backward()
        guided = torch.full((1, 3, 32, 32), level, requires_grad=True)
        CS.compositional_soft(guided, [caption], colour_guide=0.25).sum().backward()
        assert plain.grad.abs().max() < 1e-6  # the default: the steep colour sigmoids are flat here
        g = guided.grad[0].mean((1, 2))
        assert g.abs().max() > 1e-5
        # the step raises the channels the colour has more of than its mean (its chroma direction)
        assert torch.dot(g, rgb - rgb.mean()) > 0 and torch.dot(g, torch.ones(3)) == pytest.approx(0, abs=1e-7)


def test_colour_chroma_matches_a_float64_formula():
    img = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    chroma = CS.colour_chroma(img)
    x = img.double().permute(0, 2, 3, 1).numpy()
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    tau = 0.1
    for name, rgb in S.COLORS.items():
        pr, pg, pb = np.array(rgb, np.float64) / 255
        pa, pbb = pr - (pg + pb) / 2, np.sqrt(3) / 2 * (pg - pb)
        n = np.hypot(pa, pbb)
        proj = ((r - (g + b) / 2) * pa + np.sqrt(3) / 2 * (g - b) * pbb) / n
        want = (tau * np.logaddexp(0, proj / tau) - tau * np.log(2)).sum((1, 2))
        np.testing.assert_allclose(chroma[name].numpy(), want, rtol=1e-4, atol=1e-4)
    assert all(abs(float(v)) < 1e-4 for v in CS.colour_chroma(torch.full((1, 3, 4, 4), 0.3)).values())  # greys: 0


def test_colour_guide_keeps_the_exact_checks_ordering():
    x, captions, exact = _renders_and_exact()
    plain = CS.compositional_soft(x, captions).numpy()
    guided = CS.compositional_soft(x, captions, colour_guide=0.25).numpy()
    assert np.all(guided >= -0.25) and np.all(guided <= 1.25)
    # every pair the exact reward tells apart by a constraint or more of a 3-constraint caption keeps its order,
    # as it does without the guide
    for soft in (plain, guided):
        i, j = np.nonzero(exact[:, None] - exact[None, :] >= 1 / 3 - 1e-9)
        assert len(i) > 100 and np.all(soft[i] > soft[j])
    assert np.corrcoef(guided, exact)[0, 1] > 0.95


def test_colour_guide_value_is_checked():
    with pytest.raises(ValueError, match="colour_guide must be in"):
        CS.compositional_soft(torch.zeros(1, 3, 8, 8), ["a red circle"], colour_guide=0.5)
