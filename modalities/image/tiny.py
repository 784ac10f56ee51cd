"""Random tiny Stable-Diffusion-shaped models built from configs (tests and CPU runs; nothing downloaded)."""
from __future__ import annotations

from typing import List, Sequence

import torch

from diffalign.data.tokenizers import CharTokenizer  # noqa: F401  (the tiny text encoder's tokenizer)


def tiny_components(architecture: str, resolution: int, seed: int = 0, prediction_type: str = "epsilon"):
    """(denoiser, vae, text_encoder, tokenizer, scheduler) with random weights, seeded.

    ``prediction_type`` (UNet architectures only) sets the DDIM scheduler's "epsilon" (SD 1.x),
    "v_prediction" (SD 2.x 768) or "sample". With random weights it decides the scale of x0: an
    epsilon model's x0_hat = (x_t - sqrt(1-a) eps) / sqrt(a) amplifies its (random) errors by up to
    1/sqrt(a_T) ~ 15, so 8-step DDIM samples have std ~9 and the policy's own output moves them by a
    few percent; a v model's x0_hat -> -v at high noise, so samples have std ~0.8 and follow the model.
    """
    from diffusers import (AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = CharTokenizer()
        text_cfg = CLIPTextConfig(vocab_size=CharTokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                                  projection_dim=32, bos_token_id=0, pad_token_id=1, eos_token_id=2)
        text_encoder = CLIPTextModelWithProjection(text_cfg)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                            latent_channels=4, norm_num_groups=8, sample_size=resolution)
        latent = resolution // 2  # two blocks: one downsampling
        if architecture == "sd3":
            denoiser = SD3Transformer2DModel(sample_size=latent, patch_size=2, in_channels=4, num_layers=2,
                                             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                             caption_projection_dim=16, pooled_projection_dim=32, out_channels=4)
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        else:
            extra = {}
            if architecture == "sdxl":
                extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                             projection_class_embeddings_input_dim=32 + 6 * 8)
            denoiser = UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
                                            block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                            attention_head_dim=4,
                                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **extra)
            scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                      beta_end=0.012, set_alpha_to_one=False, clip_sample=False, steps_offset=1,
                                      prediction_type=prediction_type)
    return denoiser, vae, text_encoder, tokenizer, scheduler
