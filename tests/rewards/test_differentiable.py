"""Differentiable rewards: same values as the detached colour rewards, exact gradients, and decoding with a graph."""
import pytest
import torch

from diffalign.rewards.color import brightness, color_target
from diffalign.rewards.differentiable import (DIFFERENTIABLE_REWARDS, TinyCNN,
                                              differentiable_brightness, differentiable_color_target, tiny_cnn)


def images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64).requires_grad_(True)


def test_colour_rewards_equal_the_detached_ones_and_have_exact_gradients():
    x = images()
    assert torch.allclose(differentiable_brightness(x, []).double(), brightness(x, []).double(), atol=1e-6)
    target = [0.2, 0.9, 0.1]
    assert torch.allclose(differentiable_color_target(x, [], target).double(), color_target(x, [], target).double(),
                          atol=1e-6)
    assert torch.autograd.gradcheck(lambda v: differentiable_color_target(v, [], target), (x,))
    (g,) = torch.autograd.grad(differentiable_brightness(x, []).sum(), x)
    assert torch.allclose(g, torch.full_like(x, 1 / (3 * 8 * 8)))  # closed form: d mean / d pixel
    with pytest.raises(ValueError, match="RGB"):
        differentiable_brightness(torch.rand(2, 1, 4, 4), [])


def test_tiny_cnn_is_a_fixed_differentiable_function_of_its_seed():
    x = images().float().detach().requires_grad_(True)
    a, b, c = tiny_cnn(x, []), tiny_cnn(x, []), tiny_cnn(x, [], seed=1)
    assert a.shape == (3,) and torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(a, TinyCNN(0)(x))  # the same weights in a fresh process (seeded)
    (g,) = torch.autograd.grad(a.sum(), x)
    assert g.abs().max() > 0
    assert set(DIFFERENTIABLE_REWARDS) == {"differentiable_brightness", "differentiable_color_target", "tiny_cnn",
                                           "compositional_soft"}


def test_decode_with_grad_keeps_the_graph_that_decode_drops():
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    adapter = ImageAdapter.from_options(ImageOptions(resolution=16, lora_rank=2))
    x0 = (0.3 * torch.randn(2, 4, 8, 8)).requires_grad_(True)
    assert not adapter.decode(x0, {}).requires_grad
    out = adapter.decode_with_grad(x0, {})
    assert torch.allclose(out, adapter.decode(x0, {}))
    (g,) = torch.autograd.grad(differentiable_brightness(out, []).sum(), x0)
    assert g.abs().max() > 0

