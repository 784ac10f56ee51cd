"""The edit_tint reward (modalities/editing/rewards.py) against its closed form in float64, on known edits."""
import pytest
import torch
from PIL import Image

from diffalign.modalities.editing.rewards import edit_tint, instruction_colour


def test_edit_tint_is_minus_the_colour_distance_to_the_tinted_input(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 255)).save(tmp_path / "in.png")
    items = [{"text": "make it blue", "image": [0.2, 0.6, 0.0]}, {"text": "Turn it GREEN!", "image": str(tmp_path / "in.png")}]
    exact = torch.stack([torch.tensor([0.1, 0.3, 0.5]), torch.tensor([0.5, 0.5, 0.5])])[:, :, None, None].expand(2, 3, 4, 4)
    torch.testing.assert_close(edit_tint(exact, items), torch.zeros(2))  # the tint itself scores 0
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    diff = images - exact.double()
    # grid 1: -||mean RGB(edit) - mean RGB(target)||
    torch.testing.assert_close(edit_tint(images, items), -diff.mean(dim=(2, 3)).norm(dim=1))
    # grid 2: -sqrt(mean over the four 2x2 cells of that squared distance)
    cells = diff.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # (B, C, cell row, cell col)
    torch.testing.assert_close(edit_tint(images, items, grid=2), -(cells ** 2).sum(1).mean(dim=(1, 2)).sqrt())
    # strength 0 rewards copying the input, strength 1 a flat image of the named colour
    copy = torch.tensor([0.2, 0.6, 0.0])[None, :, None, None].expand(1, 3, 4, 4)
    assert edit_tint(copy, items[:1], strength=0.0).item() == pytest.approx(0, abs=1e-7)
    flat_blue = torch.tensor([0.0, 0.0, 1.0])[None, :, None, None].expand(1, 3, 4, 4)
    assert edit_tint(flat_blue, items[:1], strength=1.0).item() == pytest.approx(0, abs=1e-7)
    # differentiable in the edit
    x = images.clone().requires_grad_(True)
    edit_tint(x, items).sum().backward()
    assert x.grad.abs().sum() > 0


def test_edit_tint_names_bad_inputs():
    with pytest.raises(ValueError, match="exactly one of"):
        instruction_colour({"text": "make it red and blue", "image": [0, 0, 0]})
    with pytest.raises(ValueError, match="names no input image"):
        edit_tint(torch.rand(1, 3, 4, 4), ["make it red"])
    with pytest.raises(ValueError, match="strength"):
        edit_tint(torch.rand(1, 3, 4, 4), [{"text": "red", "image": [0, 0, 0]}], strength=2.0)
    with pytest.raises(ValueError, match="grid must be a positive integer dividing"):
        edit_tint(torch.rand(1, 3, 4, 4), [{"text": "red", "image": [0, 0, 0]}], grid=3)
    with pytest.raises(ValueError, match="images \\(B, 3, H, W\\)"):
        edit_tint(torch.rand(1, 4, 4), [{"text": "red", "image": [0, 0, 0]}])
