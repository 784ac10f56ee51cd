"""A random tiny InstructPix2Pix-shaped model built from configs (tests and CPU runs; nothing downloaded).

The image modality's tiny preset (2-layer character CLIP text encoder, a VAE that halves the side, a 16/32-channel
UNet) with the UNet widened at its input to take the input image's latents beside the noisy ones: in_channels =
2 x the VAE's latent channels, as InstructPix2Pix widens SD 1.5's first convolution from 4 to 8 channels.
"""
from __future__ import annotations

import torch


def tiny_editing_components(resolution: int, seed: int = 0, prediction_type: str = "epsilon"):
    """(unet with in_channels 8, vae, text_encoder, tokenizer, DDIM scheduler) with random weights, seeded."""
    from diffusers import UNet2DConditionModel
    from diffalign.modalities.image.tiny import tiny_components
    unet, vae, text_encoder, tokenizer, scheduler = tiny_components("sd", resolution, seed, prediction_type)
    config = dict(unet.config, in_channels=2 * vae.config.latent_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # + 1: its weights differ from the text-to-image preset's, which it never reuses
        unet = UNet2DConditionModel.from_config(config)
    return unet, vae, text_encoder, tokenizer, scheduler
