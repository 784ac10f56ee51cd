"""The ``demo`` preset: the shipped pixel-space image demo model plus an AnimateDiff motion adapter.

The image demo model (modalities/image/demo_model.py: a 32x32 UNet2DConditionModel over RGB pixels, a tiny
CLIP text encoder, a word tokenizer, a v-prediction DDIM scheduler) becomes a ``UNetMotionModel``: its layers
run on every frame, and one motion module per resnet attends across frames. The image layers stay frozen,
as AnimateDiff trains only its motion modules.

The motion adapter comes from a folder (``MotionAdapter.save_pretrained`` / ``VideoAdapter.save_pretrained``
after full training of the motion modules) or is freshly initialised with every motion module's output
projection zeroed, as AnimateDiff initialises them: each module is then the identity (its residual), and the
video model is the image model applied frame by frame until training moves it.
"""
from __future__ import annotations

from typing import Optional

import torch

# 2 heads (the demo UNet's narrowest block has 32 channels); 8 frames by default, room for 32
MOTION_HEADS = 2
MAX_FRAMES = 32


def fresh_motion_adapter(block_out_channels, layers_per_block: int, seed: int = 0):
    """A MotionAdapter for a UNet of these channels, seeded, its modules' output projections zeroed."""
    from diffusers import MotionAdapter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = MotionAdapter(block_out_channels=tuple(block_out_channels), motion_layers_per_block=layers_per_block,
                                motion_num_attention_heads=MOTION_HEADS, motion_norm_num_groups=8,
                                motion_max_seq_length=MAX_FRAMES, use_motion_mid_block=False)
    zero_motion_outputs(adapter)
    return adapter


def zero_motion_outputs(module: torch.nn.Module) -> int:
    """Zero the output projection of every motion module (AnimateDiff's zero initialisation); returns how many."""
    n = 0
    for name, child in module.named_modules():
        if name.endswith("proj_out") and "motion_modules" in name.split("."):
            torch.nn.init.zeros_(child.weight)
            torch.nn.init.zeros_(child.bias)
            n += 1
    return n


def demo_video_model(motion_adapter: Optional[str] = None, seed: int = 0, num_frames: int = 8):
    """(UNetMotionModel, text_encoder, tokenizer, scheduler, fresh) from the shipped image demo model;
    ``fresh`` says the motion adapter was initialised here rather than loaded from ``motion_adapter``."""
    from diffusers import MotionAdapter, UNetMotionModel
    from diffalign.modalities.image.demo_model import load_demo_model
    unet, text_encoder, tokenizer, scheduler, _ = load_demo_model()
    if motion_adapter is not None:
        adapter = MotionAdapter.from_pretrained(motion_adapter)
    else:
        adapter = fresh_motion_adapter(unet.config.block_out_channels, unet.config.layers_per_block, seed)
    if num_frames > adapter.config.motion_max_seq_length:
        raise ValueError(f"config key 'modality.options.num_frames': the motion adapter's position table holds "
                         f"{adapter.config.motion_max_seq_length} frames, got {num_frames}")
    return UNetMotionModel.from_unet2d(unet, adapter).eval(), text_encoder, tokenizer, scheduler, motion_adapter is None
