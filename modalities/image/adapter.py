"""Text-to-image with diffusers models: SD 1.x/2.x and SDXL UNets (epsilon / v), SD3 transformers (flow).

x = VAE latents (B, 4, h, w). Conditions hold the prompt embeddings AND the negative-prompt
embeddings (``neg_*`` keys), so ``unconditional`` is a key swap and CFG needs no text encoder at
training time. The reference policy is the frozen base: LoRA adapters disabled, or a frozen copy
under full fine-tuning. LoRA is saved in diffusers' format (``pipeline.load_lora_weights(dir)``).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional, Sequence

import torch

from diffalign.modalities.base import Conditions, ModalityAdapter, PeftOrFrozenReference, unwrap
from diffalign.rewards.prompts import prompt_text
from diffalign.modalities.image.options import ImageOptions

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # default of modality.options.lora_targets


class ImageAdapter(PeftOrFrozenReference, ModalityAdapter):
    def __init__(self, denoiser, vae, text_encoder, tokenizer, scheduler, options: ImageOptions,
                 device: torch.device, pipeline=None):
        self.options = options
        self.architecture = options.architecture
        self.device = torch.device(device)
        self.dtype = _DTYPES[options.dtype]
        self.scheduler = scheduler
        self.default_step_rule = "flow_sde" if self.architecture == "sd3" else "ddim"
        # vae None: a pixel-space model (the shipped demo model): x is the image scaled to [-1, 1]
        self.vae = vae.to(self.device, self.dtype).requires_grad_(False).eval() if vae is not None else None
        self.text_encoder = text_encoder.to(self.device, self.dtype).requires_grad_(False).eval() \
            if text_encoder is not None else None
        self.tokenizer = tokenizer
        self.pipeline = pipeline  # for pretrained models: its encode_prompt handles their text encoders
        self.latent_size = options.resolution if vae is None else \
            options.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
        self.latent_channels = 3 if vae is None else vae.config.latent_channels
        self._frozen_copy = None
        if options.lora_rank > 0:
            from peft import LoraConfig
            denoiser.to(self.device, self.dtype).requires_grad_(False)
            # seeded: torch seeds its default generator randomly per process, so an unseeded LoRA init
            # (A is drawn, B is zero) made two runs of one config train differently from the first step
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(options.seed)
                targets = list(options.lora_targets or _LORA_TARGETS)
                matched = [n for n, _ in denoiser.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
                if not matched:  # peft's own error does not name the config key
                    raise ValueError(f"config key 'modality.options.lora_targets': no module of the denoiser matches "
                                     f"{targets!r}")
                denoiser.add_adapter(LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha,
                                                init_lora_weights="gaussian", target_modules=targets))
            for p in denoiser.parameters():  # train the adapters in fp32 whatever the base dtype
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            denoiser.to(self.device, torch.float32)
            self._frozen_copy = copy.deepcopy(denoiser).to(self.dtype).requires_grad_(False).eval()
        if options.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if options.compile:  # after LoRA: the compiled graph includes the adapters
            denoiser.compile(backend=options.compile_backend, mode=options.compile_mode)
        self.denoiser = denoiser
        self._in_reference = False

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: ImageOptions, device="cpu") -> "ImageAdapter":
        if options.model == "tiny":
            from diffalign.modalities.image.tiny import tiny_components
            return cls(*tiny_components(options.architecture, options.resolution, options.seed,
                                        options.prediction_type or "epsilon"), options, device)
        from diffalign.modalities.image.demo_model import load_demo_model, resolve_demo_path
        demo_dir = resolve_demo_path(options.model)  # "demo" or a folder saved by save_demo_model
        if demo_dir is not None:
            unet, text_encoder, tokenizer, scheduler, _ = load_demo_model(demo_dir)
            if options.architecture != "sd" or options.resolution != unet.config.sample_size:
                raise ValueError(f"config key 'modality.options': the demo model {options.model!r} is a pixel-space "
                                 f"'sd' UNet at resolution {unet.config.sample_size}, got architecture "
                                 f"{options.architecture!r}, resolution {options.resolution}")
            return cls(unet, None, text_encoder, tokenizer, scheduler, options, device)
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained(options.model, torch_dtype=_DTYPES[options.dtype])
        denoiser = pipe.transformer if options.architecture == "sd3" else pipe.unet
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            enc = getattr(pipe, name, None)
            if enc is not None:
                enc.to(device).requires_grad_(False)
        scheduler = pipe.scheduler
        if options.architecture != "sd3":
            # the UNet step rules read alphas_cumprod and the timesteps of set_timesteps(T). SD 1.5 ships a PNDM
            # scheduler, whose PLMS timesteps repeat one entry (T=3: 667, 334, 334, 1), and SDXL an Euler one;
            # the same betas as a DDIM scheduler (as DDPO's trainer does) give T distinct, evenly spaced steps.
            from diffusers import DDIMScheduler
            scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        return cls(denoiser, pipe.vae, None, None, scheduler, options, device, pipeline=pipe)

    # ---- conditions ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_tiny(self, prompts):
        ids = self.tokenizer(list(prompts)).to(self.device)
        out = self.text_encoder(ids, output_hidden_states=True)
        return out.last_hidden_state, out.text_embeds

    @torch.no_grad()
    def encode_conditions(self, items: Sequence[Any], generator=None) -> Conditions:
        """Text embeddings of the items' texts (a mapping item gives its "text"); nothing is drawn."""
        prompts = [prompt_text(item) for item in items]
        negatives = [self.options.negative_prompt] * len(prompts)
        if self.pipeline is not None and not self.options.negative_prompt:
            # no negative prompt: the pipeline's own default, as its __call__ applies it (SDXL's
            # force_zeros_for_empty_prompt makes it zeros; SD and SD3 encode "" either way)
            negatives = None
        if self.pipeline is None:
            emb, pooled = self._encode_tiny(prompts)
            neg, neg_pooled = self._encode_tiny(negatives)
        elif self.architecture == "sd":
            emb, neg = self.pipeline.encode_prompt(prompts, self.device, 1, True, negatives)
            pooled = neg_pooled = None
        elif self.architecture == "sdxl":
            emb, neg, pooled, neg_pooled = self.pipeline.encode_prompt(prompts, device=self.device,
                                                                       negative_prompt=negatives)
        else:
            emb, neg, pooled, neg_pooled = self.pipeline.encode_prompt(prompts, None, None, device=self.device,
                                                                       negative_prompt=negatives)
        cond = {"prompt_embeds": emb, "neg_prompt_embeds": neg}
        if self.architecture != "sd":
            cond.update(pooled=pooled, neg_pooled=neg_pooled)
        if self.architecture == "sdxl":  # (original size, crop top-left, target size)
            r = self.options.resolution
            cond["time_ids"] = torch.tensor([[r, r, 0, 0, r, r]], dtype=emb.dtype, device=self.device).repeat(len(prompts), 1)
        return cond

    def unconditional(self, cond: Conditions) -> Conditions:
        out = dict(cond)
        out["prompt_embeds"], out["neg_prompt_embeds"] = cond["neg_prompt_embeds"], cond["prompt_embeds"]
        if "pooled" in cond:
            out["pooled"], out["neg_pooled"] = cond["neg_pooled"], cond["pooled"]
        return out

    def initial_noise(self, cond: Conditions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = cond["prompt_embeds"].shape[0]
        shape = (b, self.latent_channels, self.latent_size, self.latent_size)
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device).to(self.device, torch.float32)

    # ---- the denoiser ------------------------------------------------------------------------------
    def denoise(self, x, timesteps, cond):
        model, dtype = self._active_denoiser()
        emb = cond["prompt_embeds"].to(dtype)
        if self.architecture == "sd3":
            out = model(hidden_states=x.to(dtype), timestep=timesteps, encoder_hidden_states=emb,
                        pooled_projections=cond["pooled"].to(dtype)).sample
        else:
            extra = {}
            if self.architecture == "sdxl":
                extra["added_cond_kwargs"] = {"text_embeds": cond["pooled"].to(dtype),
                                              "time_ids": cond["time_ids"].to(dtype)}
            out = model(x.to(dtype), timesteps, encoder_hidden_states=emb, **extra).sample
        return out.to(x.dtype)

    # ---- what rewards see ----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x0, cond):
        if self.vae is None:
            return ((x0.float() + 1) / 2).clamp(0, 1)
        cfg = self.vae.config
        z = x0.to(self.dtype) / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None):
            z = z + cfg.shift_factor
        images = self.vae.decode(z).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode(self, samples, items):
        """Stored images (PIL) -> (latents x0, the items' conditions): centre-crop, resize to the resolution, VAE
        encode (the posterior mean, so a cached latent is deterministic), then the inverse of ``decode``'s scaling."""
        import numpy as np
        from PIL import Image
        r = self.options.resolution
        pixels = []
        for image in samples:
            if not isinstance(image, Image.Image):
                raise ValueError(f"the image modality encodes PIL images, got {type(image).__name__}")
            w, h = image.size
            side = min(w, h)
            image = image.convert("RGB").crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
            image = image.resize((r, r), Image.BICUBIC)
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1)
        x = torch.stack(pixels).to(self.device, self.dtype)
        cond = self.encode_conditions(items)
        if self.vae is None:
            return x.float(), cond
        z = self.vae.encode(x).latent_dist.mean
        cfg = self.vae.config
        if getattr(cfg, "shift_factor", None):
            z = z - cfg.shift_factor
        return (z * cfg.scaling_factor).float(), cond

    def rewards(self):
        # no image-only rewards: the generic ones (diffalign.registry.rewards) resolve by name after these
        return {}

    def sample_grid(self, decoded):
        from torchvision.utils import make_grid
        return make_grid(decoded[:16].detach().cpu(), nrow=4)

    # ---- training state ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        model = unwrap(self.denoiser)
        if self._frozen_copy is None:
            from peft.utils import get_peft_model_state_dict
            return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def load_trainable_state_dict(self, state):
        model = unwrap(self.denoiser)
        if self._frozen_copy is None:
            from peft.utils import set_peft_model_state_dict
            set_peft_model_state_dict(model, state)
        else:
            model.load_state_dict(state)

    def save_pretrained(self, directory: str) -> None:
        """LoRA: diffusers' LoRA format (``pipeline.load_lora_weights(directory)``); full: the model folder."""
        os.makedirs(directory, exist_ok=True)
        model = unwrap(self.denoiser)
        if self._frozen_copy is not None:
            model.save_pretrained(directory)
            return
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        if self.architecture == "sd3":
            from diffusers import StableDiffusion3Pipeline
            StableDiffusion3Pipeline.save_lora_weights(directory, transformer_lora_layers=layers)
        elif self.architecture == "sdxl":
            from diffusers import StableDiffusionXLPipeline
            StableDiffusionXLPipeline.save_lora_weights(directory, unet_lora_layers=layers)
        else:
            from diffusers import StableDiffusionPipeline
            StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers)
