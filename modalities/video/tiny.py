"""Random tiny video models built from configs (tests and CPU runs; nothing downloaded).

Both families share the image tiny preset's text side (a 2-layer CLIP text encoder over characters):
- animatediff: the image tiny preset's UNet (16/32 channels, a VAE that halves the side) turned into a
  ``UNetMotionModel`` by a small ``MotionAdapter`` (one motion module per resnet, 2 heads);
- wan: a 2-layer ``WanTransformer3DModel`` and an ``AutoencoderKLWan`` that, like Wan 2.1's, compresses time by
  4 (so clips have 1 + 4k frames) but space by 4 instead of 8.
"""
from __future__ import annotations

import torch

# the tiny Wan VAE's latent normalisation: deliberately not (0, 1), so tests see decode/encode apply it
TINY_WAN_LATENTS_MEAN = [0.1, -0.2, 0.3, 0.0]
TINY_WAN_LATENTS_STD = [1.5, 0.8, 1.2, 2.0]


def tiny_motion_adapter(block_out_channels, seed: int = 0, max_frames: int = 32):
    """A MotionAdapter matching a UNet with these channels (one motion module per block layer), seeded."""
    from diffusers import MotionAdapter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MotionAdapter(block_out_channels=tuple(block_out_channels), motion_layers_per_block=1,
                             motion_num_attention_heads=2, motion_norm_num_groups=8,
                             motion_max_seq_length=max_frames, use_motion_mid_block=False)


def tiny_animatediff(resolution: int, seed: int = 0):
    """(UNetMotionModel, vae, text_encoder, tokenizer, DDIM scheduler with v-prediction), random weights.

    v-prediction: a random epsilon UNet's x0 is dominated by amplified noise (modalities/image/tiny.py), so a
    v-model's samples are the ones that follow the (LoRA-)trained weights."""
    from diffusers import UNetMotionModel
    from diffalign.modalities.image.tiny import tiny_components
    unet, vae, text_encoder, tokenizer, scheduler = tiny_components("sd", resolution, seed, "v_prediction")
    adapter = tiny_motion_adapter(unet.config.block_out_channels, seed + 1)
    return UNetMotionModel.from_unet2d(unet, adapter), vae, text_encoder, tokenizer, scheduler


def tiny_wan(resolution: int, seed: int = 0, flow_shift: float = 3.0):
    """(WanTransformer3DModel, AutoencoderKLWan, text_encoder, tokenizer, flow-matching scheduler), random."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from diffalign.modalities.image.tiny import tiny_components
    _, _, text_encoder, tokenizer, _ = tiny_components("sd", resolution, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # two down stages, both temporal: space / 4, time / 4 (Wan 2.1's VAE: three stages, two temporal)
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[True, True], latents_mean=TINY_WAN_LATENTS_MEAN,
                               latents_std=TINY_WAN_LATENTS_STD, scale_factor_temporal=4, scale_factor_spatial=4)
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                            in_channels=4, out_channels=4, text_dim=text_encoder.config.hidden_size,
                                            freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    return transformer, vae, text_encoder, tokenizer, scheduler
