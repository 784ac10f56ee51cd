"""A closed-form edit reward for tiny runs and tests: how close the edit is to the input tinted toward the colour
the instruction names. It reads both the input (from the item) and the output, and is differentiable in the
output, so every kind of method (online RL, direct reward, training-free) can raise it on a random tiny editor.
The edit rewards of the survey (CLIP directional similarity, preservation, HIVE's reward model) live in
diffalign/rewards/.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from diffalign.modalities.editing.inputs import input_ref, load_input_pixels
from diffalign.rewards.prompts import prompt_text

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
           "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def instruction_colour(item: Any) -> torch.Tensor:
    """(3,) the RGB of the one colour word of the item's instruction ("make it red"); a ValueError otherwise."""
    words = [w.strip(".,!?").lower() for w in prompt_text(item).split()]
    named = [w for w in words if w in COLOURS]
    if len(named) != 1:
        raise ValueError(f"edit_tint: the instruction of {item!r} must name exactly one of {sorted(COLOURS)}, "
                         f"it names {named}")
    return torch.tensor(COLOURS[named[0]])


def edit_tint(images: torch.Tensor, items: Sequence[Any], strength: float = 0.5, grid: int = 1) -> torch.Tensor:
    """(B,) -RMS over a grid x grid of cells of the distance between the edit's mean RGB (images (B, 3, H, W) in
    [0, 1]) and the target's, target = (1 - strength) * input + strength * colour: 0 for the exact tint, lower for
    edits that ignore the instruction (strength 0 rewards copying the input) or the input (strength 1 rewards a flat
    colour). grid 1 is color_target's -||mean RGB - target|| with a target that depends on the input; a finer grid
    also asks to keep where things are. Mean colours rather than pixels: a small LoRA moves them within a few
    epochs, while a random tiny model's pixel noise would dominate a per-pixel error."""
    import torch.nn.functional as F
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"edit_tint takes images (B, 3, H, W), got {tuple(images.shape)}")
    if not 0 <= strength <= 1:
        raise ValueError(f"edit_tint: strength must be in [0, 1], got {strength}")
    if not isinstance(grid, int) or grid < 1 or images.shape[-1] % grid or images.shape[-2] % grid:
        raise ValueError(f"edit_tint: grid must be a positive integer dividing the image sides "
                         f"{tuple(images.shape[-2:])}, got {grid!r}")
    side = images.shape[-1]
    inputs = torch.stack([(load_input_pixels(input_ref(item), side) + 1) / 2 for item in items]).to(images)
    colours = torch.stack([instruction_colour(item) for item in items]).to(images)[:, :, None, None]
    target = (1 - strength) * inputs + strength * colours
    diff = F.adaptive_avg_pool2d(images, grid) - F.adaptive_avg_pool2d(target, grid)
    return -(diff ** 2).sum(dim=1).mean(dim=(1, 2)).sqrt()


EDITING_REWARDS = {"edit_tint": edit_tint}
