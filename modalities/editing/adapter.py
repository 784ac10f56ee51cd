"""Instruction-based image editing with InstructPix2Pix UNets (Brooks et al. 2023): the image adapter, plus the
input image as a condition.

x = the edited image's latents (B, 4, h, w), as for text-to-image. Conditions are the image adapter's (the
instruction's and the negative prompt's embeddings) plus ``image_latents`` (B, C, h, w): the input image through
the VAE encoder's mode, unscaled, as InstructPix2Pix was trained on them. The UNet sees them concatenated with x
channel-wise (in_channels = 2 C). A pixel-space model (the ``demo`` preset, no VAE) takes the input image itself,
in [-1, 1]. ``decode`` gives the edited images (B, 3, H, W) in [0, 1].

Guidance is InstructPix2Pix's dual classifier-free guidance (Brooks et al. 2023, Eq. 3), three branches:

    e = e(0, 0) + s_I (e(c_I, 0) - e(0, 0)) + s_T (e(c_I, c_T) - e(c_I, 0))

with c_T the instruction (dropped: the negative prompt's embedding), c_I the input image (dropped: zero latents),
s_T the run's ``sampling.guidance_scale`` and s_I the option ``image_guidance_scale``. The branch order
[text + image, image only, neither] and the zero image latents are those of diffusers'
StableDiffusionInstructPix2PixPipeline (pipeline_stable_diffusion_instruct_pix2pix.py), so a policy at eta 0
reproduces that pipeline's samples (tests/modalities/test_editing_adapter.py). As there, s_T = 1 means no guidance
(the policy then runs the conditional branch alone); unlike there, s_I < 1 still guides (the pipeline turns all
guidance off below 1), so that the formula holds for every scale a config gives.

Stored edits (``encode``) are the image adapter's: the edited image's latents, with this adapter's conditions (input
image included). LoRA is saved in diffusers' SD format, which ``StableDiffusionInstructPix2PixPipeline
.load_lora_weights`` reads.
"""
from __future__ import annotations

from typing import Any, List, Sequence

import torch

from diffalign.modalities.base import Conditions
from diffalign.modalities.editing.inputs import input_ref, load_input_pixels
from diffalign.modalities.editing.options import EditingOptions
from diffalign.modalities.image.adapter import _DTYPES, ImageAdapter

IMAGE_KEY = "image_latents"


class EditingAdapter(ImageAdapter):
    def __init__(self, denoiser, vae, text_encoder, tokenizer, scheduler, options: EditingOptions, device,
                 pipeline=None):
        channels = 3 if vae is None else vae.config.latent_channels
        if denoiser.config.in_channels != 2 * channels:
            raise ValueError(f"config key 'modality.options.model' ({options.model!r}): an InstructPix2Pix UNet takes "
                             f"the noisy and the input image's {channels}-channel latents together, so in_channels "
                             f"must be {2 * channels}, got {denoiser.config.in_channels}")
        super().__init__(denoiser, vae, text_encoder, tokenizer, scheduler, options, device, pipeline=pipeline)
        self.image_guidance_scale = float(options.image_guidance_scale)

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: EditingOptions, device="cpu") -> "EditingAdapter":
        if options.model == "tiny":
            from diffalign.modalities.editing.tiny import tiny_editing_components
            return cls(*tiny_editing_components(options.resolution, options.seed, options.prediction_type or "epsilon"),
                       options, device)
        if options.model == "demo":
            return cls._from_demo(options, device)
        from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            options.model, torch_dtype=_DTYPES[options.dtype], safety_checker=None, requires_safety_checker=False)
        pipe.text_encoder.to(device).requires_grad_(False)
        # the image adapter encodes prompts with a text-to-image pipeline's encode_prompt (InstructPix2Pix's own
        # _encode_prompt returns its three guidance branches stacked): the same text encoder and tokenizer in one
        text_pipe = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                            unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                            feature_extractor=None, requires_safety_checker=False)
        # timbrooks/instruct-pix2pix ships an Euler-ancestral scheduler; the step rules read alphas_cumprod and T
        # evenly spaced DDIM timesteps over the same betas (as the image adapter does for SD 1.5). "leading"
        # spacing: the DDIM rule steps num_train_timesteps // T back, which is diffusers' DDIM with that spacing
        # (an Euler config may carry "linspace"); set_alpha_to_one False: the rule's last step uses
        # alphas_cumprod[0]; clip_sample False: the rule never clips x0 (latents are not in [-1, 1]). These are SD
        # 1.5's own DDIM settings, which an Euler config lacks (DDIMScheduler's defaults differ)
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading",
                                              set_alpha_to_one=False, clip_sample=False)
        return cls(pipe.unet, pipe.vae, None, None, scheduler, options, device, pipeline=text_pipe)

    @classmethod
    def _from_demo(cls, options: EditingOptions, device):
        try:
            from diffalign.modalities.editing.demo_model import load_editing_demo_model
        except ImportError as exc:
            raise ValueError("config key 'modality.options.model': 'demo' needs the shipped editing demo model "
                             f"(modalities/editing/demo_model.py), which this installation lacks: {exc}") from None
        unet, text_encoder, tokenizer, scheduler, _ = load_editing_demo_model()
        if options.resolution != unet.config.sample_size:
            raise ValueError(f"config key 'modality.options.resolution': the editing demo model is a pixel-space "
                             f"UNet at resolution {unet.config.sample_size}, got {options.resolution}")
        return cls(unet, None, text_encoder, tokenizer, scheduler, options, device)

    # ---- conditions ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_input_images(self, items: Sequence[Any]) -> torch.Tensor:
        """(B, C, h, w): each item's input image at the model's resolution, through the VAE encoder's mode
        (unscaled, as diffusers' pipeline prepares them), or the pixels themselves for a pixel-space model."""
        pixels = torch.stack([load_input_pixels(input_ref(item, f"prompt item {i}"), self.options.resolution)
                              for i, item in enumerate(items)]).to(self.device, self.dtype)
        if self.vae is None:
            return pixels.float()
        return self.vae.encode(pixels).latent_dist.mode().float()

    @torch.no_grad()
    def encode_conditions(self, items: Sequence[Any], generator=None) -> Conditions:
        """The instruction's text conditions (the image adapter's) and the input image's latents."""
        cond = super().encode_conditions(items, generator)
        cond[IMAGE_KEY] = self.encode_input_images(items)
        return cond

    def guidance_branches(self, cond: Conditions) -> List[Conditions]:
        text_dropped = self.unconditional(cond)
        nothing = {**text_dropped, IMAGE_KEY: torch.zeros_like(cond[IMAGE_KEY])}
        return [cond, text_dropped, nothing]

    def combine_guidance(self, outputs, scale: float) -> torch.Tensor:
        both, image_only, nothing = outputs
        return nothing + scale * (both - image_only) + self.image_guidance_scale * (image_only - nothing)

    # ---- the denoiser ------------------------------------------------------------------------------
    def denoise(self, x, timesteps, cond):
        """The UNet on [x, input image latents] (channel-wise, in that order: InstructPix2Pix's layout)."""
        return super().denoise(torch.cat([x, cond[IMAGE_KEY].to(x.dtype)], dim=1), timesteps, cond)

    def rewards(self):
        # edit_tint; the generic image rewards (diffalign.registry.rewards) resolve by name after it
        from diffalign.modalities.editing.rewards import EDITING_REWARDS
        return dict(EDITING_REWARDS)
