import numpy as np
import torch

from diffalign.demo.shapes import ObjectSpec, Scene, caption, render
from diffalign.inference import make_reward, shapes_surrogate


def _image(scene, seed=0):
    return torch.from_numpy(render(scene, 32, np.random.default_rng(seed))).permute(2, 0, 1).float()[None] / 255


def test_surrogate_prefers_the_caption_the_image_shows():
    red_left = Scene((ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), "left of")
    img = _image(red_left)
    right = shapes_surrogate(img, [caption(red_left)])
    mirrored = shapes_surrogate(img, ["a red circle right of a blue square"])
    wrong_colour = shapes_surrogate(img, ["a green circle left of a blue square"])
    assert right > mirrored and right > wrong_colour and right > -1.0
    one = _image(Scene((ObjectSpec("yellow", "square", 1),)))
    three = _image(Scene((ObjectSpec("yellow", "square", 3),)))
    # the colour mass stands for the count
    assert shapes_surrogate(three, ["three yellow squares"]) > shapes_surrogate(one, ["three yellow squares"])
    assert shapes_surrogate(one, ["a yellow square"]) > shapes_surrogate(three, ["a yellow square"])
    assert shapes_surrogate(torch.zeros(1, 3, 32, 32), ["a yellow square"]) < shapes_surrogate(one, ["a yellow square"])


def test_surrogate_is_differentiable_and_registered():
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    r = make_reward("shapes_surrogate", differentiable=True)(img, ["a red circle", "two blue squares"])
    assert r.shape == (2,)
    r.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
