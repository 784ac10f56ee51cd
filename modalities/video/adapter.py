"""Text-to-video with diffusers models: AnimateDiff (an image UNet + a MotionAdapter) and Wan 2.1 (flow matching).

x = latents (B, C, F, h, w), batch first like every state; ``decode`` gives frames (B, F, C, H, W) in [0, 1].
Conditions are the prompt and negative-prompt embeddings (``neg_*``), as for images, so ``unconditional`` is
a key swap. The reference is the frozen base (LoRA disabled, or a frozen copy under full fine-tuning).

Families:

- **animatediff**: ``UNetMotionModel`` (the image UNet's layers applied per frame, motion modules attending
  across frames), epsilon or v prediction, DDIM steps; a 2-D VAE decodes frame by frame. ``lora_layers`` picks
  what trains: the motion modules (as AnimateDiff trains them), the image layers, or both. LoRA is saved in
  diffusers' format (``AnimateDiffPipeline.load_lora_weights``); full fine-tuning of the motion modules is
  saved as a ``MotionAdapter`` folder. The ``demo`` preset is the shipped 32x32 pixel-space image demo model
  (no VAE: x is the clip in [-1, 1], (B, 3, F, 32, 32)) plus a motion adapter (see modalities/video/demo.py).
- **wan**: ``WanTransformer3DModel`` + ``AutoencoderKLWan``. Wan 2.1 rather than CogVideoX because Wan is a
  rectified-flow model (velocity prediction on sigmas), which the flow-matching step rules (Flow-GRPO's SDE,
  the Euler ODE) already serve, while CogVideoX is a v-prediction DDIM model like the UNets, so it would add
  no new family; Wan's 1.3B checkpoint also fits one consumer GPU, and diffusers has a LoRA loader for it
  (``WanPipeline.load_lora_weights``). Its VAE is causal in time (4x) and normalises latents per channel
  (``latents_mean`` / ``latents_std``).
"""
from __future__ import annotations

import copy
import inspect
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from diffalign.modalities.base import Conditions, ModalityAdapter, PeftOrFrozenReference, unwrap
from diffalign.modalities.video.noise import mixed_frame_noise
from diffalign.modalities.video.options import VideoOptions
from diffalign.rewards.prompts import prompt_text

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # default of modality.options.lora_targets
_MOTION = "motion_modules"  # UNetMotionModel's name for the temporal layers
_VAE_CHUNK = 16  # frames per 2-D VAE call (AnimateDiffPipeline's decode_chunk_size default): bounds its memory


def in_layers(name: str, layers: str) -> bool:
    """Whether a parameter / module name of a UNetMotionModel belongs to ``lora_layers`` (motion, image, both)."""
    if layers == "both":
        return True
    return (_MOTION in name.split(".")) == (layers == "motion")


def cast_frozen(model: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(device, dtype)`` except the modules the model keeps in float32 (diffusers'
    ``_keep_in_fp32_modules``: Wan's norms, time embedder and modulation table), as ``from_pretrained(torch_dtype=)``
    loads them; casting those down changes Wan's outputs in bfloat16."""
    model.to(device, dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        # by name parts: scale_shift_table is a parameter, not a module; rope holds buffers
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if any(k in name.split(".") for k in keep) and t.is_floating_point():
                t.data = t.data.float()
    return model


class VideoAdapter(PeftOrFrozenReference, ModalityAdapter):
    def __init__(self, denoiser, vae, text_encoder, tokenizer, scheduler, options: VideoOptions,
                 device: torch.device, pipeline=None, fresh_motion: bool = False):
        self.options = options
        self.architecture = options.architecture
        self.device = torch.device(device)
        self.dtype = _DTYPES[options.dtype]
        self.scheduler = scheduler
        self.default_step_rule = "flow_sde" if self.architecture == "wan" else "ddim"
        # vae None: the pixel-space demo model; x is the clip scaled to [-1, 1]
        self.vae = vae.to(self.device, self.dtype).requires_grad_(False).eval() if vae is not None else None
        self.text_encoder = text_encoder.to(self.device, self.dtype).requires_grad_(False).eval() \
            if text_encoder is not None else None
        self.tokenizer = tokenizer
        self.pipeline = pipeline  # pretrained models: its encode_prompt handles their text encoders
        self.latent_shape = self._latent_shape()
        self._frozen_copy = None
        layers = options.lora_layers if self.architecture == "animatediff" else "both"
        if options.lora_rank > 0:
            self._add_lora(denoiser, layers, fresh_motion)
        else:
            denoiser.to(self.device, torch.float32).requires_grad_(False)
            for name, p in denoiser.named_parameters():
                p.requires_grad_(in_layers(name, layers))
            self._frozen_copy = cast_frozen(copy.deepcopy(denoiser), self.device, self.dtype).requires_grad_(False).eval()
        if options.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        self.denoiser = denoiser
        self._in_reference = False
        self._frame_generator = torch.Generator().manual_seed(options.seed)  # reward_frames' draws
        self.last_reward_frames: Optional[torch.Tensor] = None

    def _latent_shape(self):
        """(C, F, h, w) of one sample's state."""
        o = self.options
        if self.vae is None:
            return (3, o.num_frames, o.resolution, o.resolution)
        cfg = self.vae.config
        if self.architecture == "wan":  # causal in time: the first frame alone, then groups of scale_factor_temporal
            frames = (o.num_frames - 1) // cfg.scale_factor_temporal + 1
            side = o.resolution // cfg.scale_factor_spatial
            return (cfg.z_dim, frames, side, side)
        side = o.resolution // (2 ** (len(cfg.block_out_channels) - 1))
        return (cfg.latent_channels, o.num_frames, side, side)

    def _add_lora(self, denoiser, layers: str, fresh_motion: bool):
        from peft import LoraConfig
        o = self.options
        cast_frozen(denoiser, self.device, self.dtype).requires_grad_(False)
        targets = list(o.lora_targets or _LORA_TARGETS)
        # full module names, so that peft adapts exactly the chosen layers (motion modules and image layers
        # share their leaf names: to_q, proj_out, ...)
        matched = [n for n, _ in denoiser.named_modules()
                   if any(n == t or n.endswith("." + t) for t in targets) and in_layers(n, layers)]
        if not matched:  # peft's own error does not name the config key
            raise ValueError(f"config key 'modality.options.lora_targets': no module of the {layers!r} layers of the "
                             f"denoiser matches {targets!r}")
        keyword_called = [n for n in matched if _MOTION in n.split(".") and n.endswith(("proj_in", "proj_out"))
                          and ".transformer_blocks." not in n]
        if keyword_called:
            # diffusers' AnimateDiffTransformer3D calls these as proj_out(input=...), which peft's LoRA layer (whose
            # argument is x) rejects: measured with diffusers 0.42.1 / peft 0.21.2
            raise ValueError(f"config key 'modality.options.lora_targets': LoRA cannot wrap the motion modules' "
                             f"proj_in / proj_out (diffusers calls them by keyword), matched {keyword_called[:2]}")
        if fresh_motion and layers == "motion":
            # a fresh motion module's output projection is zero (demo.py), so every layer before it gets no
            # gradient, and the projection itself cannot take LoRA (above)
            raise ValueError("config key 'modality.options.lora_rank': a freshly initialised motion adapter has "
                             "zeroed output projections, so LoRA on its layers gets no gradient; train it with "
                             "lora_rank 0 (as AnimateDiff trains motion modules) or load trained motion weights "
                             "(modality.options.motion_adapter)")
        # seeded: an unseeded LoRA init (A drawn, B zero) would make two runs of one config differ
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(o.seed)
            denoiser.add_adapter(LoraConfig(r=o.lora_rank, lora_alpha=o.lora_alpha, init_lora_weights="gaussian",
                                            target_modules=matched))
        for p in denoiser.parameters():  # train the adapters in fp32 whatever the base dtype
            if p.requires_grad:
                p.data = p.data.float()

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: VideoOptions, device="cpu") -> "VideoAdapter":
        if options.model == "tiny":
            from diffalign.modalities.video.tiny import tiny_animatediff, tiny_wan
            if options.architecture == "wan":
                return cls(*tiny_wan(options.resolution, options.seed, options.flow_shift or 3.0), options, device)
            return cls(*tiny_animatediff(options.resolution, options.seed), options, device)
        if options.model == "demo":
            from diffalign.modalities.video.demo import demo_video_model
            unet, text_encoder, tokenizer, scheduler, fresh = demo_video_model(options.motion_adapter, options.seed,
                                                                               options.num_frames)
            return cls(unet, None, text_encoder, tokenizer, scheduler, options, device, fresh_motion=fresh)
        if options.architecture == "wan":
            return cls._from_wan(options, device)
        return cls._from_animatediff(options, device)

    @classmethod
    def _from_animatediff(cls, options: VideoOptions, device):
        from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
        dtype = _DTYPES[options.dtype]
        extra = {}
        if options.motion_adapter is not None:
            extra["motion_adapter"] = MotionAdapter.from_pretrained(options.motion_adapter, torch_dtype=dtype)
        # an SD 1.5 folder plus motion_adapter, or a saved AnimateDiff pipeline (its motion_adapter/ subfolder);
        # the pipeline turns the image UNet into a UNetMotionModel
        pipe = AnimateDiffPipeline.from_pretrained(options.model, torch_dtype=dtype, **extra)
        pipe.text_encoder.to(device).requires_grad_(False)
        # DDIM over the pipeline's betas: the step rules read alphas_cumprod and T distinct, evenly spaced steps
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        return cls(pipe.unet, pipe.vae, None, None, scheduler, options, device, pipeline=pipe)

    @classmethod
    def _from_wan(cls, options: VideoOptions, device):
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
        # the VAE in float32, as Wan's model card loads it (its decoder is sensitive to reduced precision)
        vae = AutoencoderKLWan.from_pretrained(options.model, subfolder="vae", torch_dtype=torch.float32)
        pipe = WanPipeline.from_pretrained(options.model, vae=vae, torch_dtype=_DTYPES[options.dtype])
        pipe.text_encoder.to(device).requires_grad_(False)
        # Wan ships a UniPC multistep sampler with flow_shift; the flow step rules read the same shifted sigmas
        # from a flow-matching Euler scheduler
        shift = options.flow_shift or pipe.scheduler.config.get("flow_shift", 3.0)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=pipe.scheduler.config.num_train_timesteps,
                                                    shift=shift)
        adapter = cls(pipe.transformer, None, None, None, scheduler, options, device, pipeline=pipe)
        adapter.vae = vae.to(adapter.device).requires_grad_(False).eval()
        adapter.latent_shape = adapter._latent_shape()
        return adapter

    # ---- conditions ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_text(self, prompts):
        ids = self.tokenizer(list(prompts)).to(self.device)
        return self.text_encoder(ids).last_hidden_state

    @torch.no_grad()
    def encode_conditions(self, items: Sequence[Any], generator=None) -> Conditions:
        """Text embeddings of the items' texts (a mapping item gives its "text"); nothing is drawn."""
        prompts = [prompt_text(item) for item in items]
        negatives = [self.options.negative_prompt] * len(prompts)
        if self.pipeline is None:
            emb, neg = self._encode_text(prompts), self._encode_text(negatives)
        elif self.architecture == "wan":
            # 512 tokens: Wan 2.1's text length (its pipeline's __call__ default)
            emb, neg = self.pipeline.encode_prompt(prompts, negatives, True, 1, max_sequence_length=512,
                                                   device=self.device)
        else:
            emb, neg = self.pipeline.encode_prompt(prompts, self.device, 1, True, negatives)
        return {"prompt_embeds": emb, "neg_prompt_embeds": neg}

    def unconditional(self, cond: Conditions) -> Conditions:
        out = dict(cond)
        out["prompt_embeds"], out["neg_prompt_embeds"] = cond["neg_prompt_embeds"], cond["prompt_embeds"]
        return out

    def initial_noise(self, cond: Conditions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Standard normal x_T; with ``frame_noise_alpha``, PYoCo's mixed noise (frames correlated, see
        modalities/video/noise.py). Step noise (``project_noise``) stays independent."""
        shape = (cond["prompt_embeds"].shape[0],) + self.latent_shape
        gen_device = generator.device if generator is not None else self.device
        if self.options.frame_noise_alpha is not None:
            noise = mixed_frame_noise(shape, self.options.frame_noise_alpha, generator, gen_device)
        else:
            noise = torch.randn(shape, generator=generator, device=gen_device)
        return noise.to(self.device, torch.float32)

    # ---- the denoiser ------------------------------------------------------------------------------
    def denoise(self, x, timesteps, cond):
        model, dtype = self._active_denoiser()
        emb = cond["prompt_embeds"].to(dtype)
        if self.architecture == "wan":
            out = model(hidden_states=x.to(dtype), timestep=timesteps, encoder_hidden_states=emb,
                        return_dict=False)[0]
        else:
            # UNetMotionModel runs its image layers on the B*F frames, so the text goes with every frame (as
            # AnimateDiffPipeline repeats it); timesteps (B,) it repeats itself
            frames = x.shape[2]
            out = model(x.to(dtype), timesteps, encoder_hidden_states=emb.repeat_interleave(frames, dim=0)).sample
        return out.to(x.dtype)

    # ---- what rewards see ----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x0, cond):
        """Latents (B, C, F, h, w) -> frames (B, F, 3, H, W) in [0, 1]."""
        if self.vae is None:
            video = x0.float()
        elif self.architecture == "wan":
            cfg = self.vae.config
            view = (1, cfg.z_dim, 1, 1, 1)
            mean = torch.tensor(cfg.latents_mean, device=x0.device).view(view)
            std = torch.tensor(cfg.latents_std, device=x0.device).view(view)
            vae_dtype = next(self.vae.parameters()).dtype
            video = self.vae.decode((x0.float() * std + mean).to(vae_dtype)).sample.float()
        else:  # a 2-D VAE, frame by frame
            b, c, f, h, w = x0.shape
            z = x0.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(self.dtype) / self.vae.config.scaling_factor
            images = torch.cat([self.vae.decode(z[i:i + _VAE_CHUNK]).sample.float()
                                for i in range(0, z.shape[0], _VAE_CHUNK)])
            video = images.reshape(b, f, *images.shape[1:]).permute(0, 2, 1, 3, 4)
        return ((video.permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)

    def decode_with_grad(self, x0, cond):
        """``decode`` keeping the graph; with ``reward_frames: K``, only K frames per clip, drawn at random and
        sorted (VADER's decode_frame), so the VAE runs and keeps activations for K / F of the frames.
        ``last_reward_frames`` holds the (B, K) frame indices of the last call."""
        decode = inspect.unwrap(type(self).decode)  # without its no_grad
        k = self.options.reward_frames
        if k is None or k == x0.shape[2]:
            self.last_reward_frames = None
            return decode(self, x0, cond)
        b, f = x0.shape[0], x0.shape[2]
        index = torch.rand(b, f, generator=self._frame_generator).argsort(dim=1)[:, :k].sort(dim=1).values
        self.last_reward_frames = index
        gather = index.to(x0.device).view(b, 1, k, 1, 1).expand(-1, x0.shape[1], -1, x0.shape[3], x0.shape[4])
        return decode(self, x0.gather(2, gather), cond)

    def load_sample(self, ref):
        """A stored clip (a video file, a folder of frames, frames) -> the ``num_frames`` x ``resolution`` frames
        ``encode`` takes (see there); errors name the clip."""
        from diffalign.modalities.video.io import fit_clip, read_video
        try:
            return fit_clip(read_video(ref), self.options.num_frames, self.options.resolution)
        except ValueError as exc:
            where = repr(ref) if isinstance(ref, str) else f"a {type(ref).__name__} clip"
            raise ValueError(f"{where}: {exc}") from None

    def save_sample(self, sample, folder, name):
        """A clip (F, 3, H, W) in [0, 1] -> ``name/`` holding one lossless PNG per frame (what ``load_sample``
        reads back, exact to 8 bits) and ``name.gif`` beside it to watch; returns ``name``."""
        from PIL import Image

        from diffalign.modalities.video.io import write_video
        clip = sample.detach().float().cpu()
        if clip.ndim != 4 or clip.shape[1] != 3:
            raise ValueError(f"save_sample: a clip is (frames, 3, H, W), got shape {tuple(clip.shape)}")
        frames_dir = os.path.join(folder, name)
        os.makedirs(frames_dir, exist_ok=True)
        pixels = (clip.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, frame in enumerate(pixels):
            Image.fromarray(frame).save(os.path.join(frames_dir, f"{i:04d}.png"))
        write_video(os.path.join(folder, name + ".gif"), clip)
        return name

    @torch.no_grad()
    def encode(self, samples, items):
        """Stored clips -> (latents x0, the items' conditions): ``num_frames`` frames evenly spaced over each clip,
        each centre-cropped and resized to the resolution, then the inverse of ``decode`` (VAE posterior mean)."""
        from diffalign.modalities.video.io import fit_clip, read_video
        o = self.options
        clips = [fit_clip(read_video(s), o.num_frames, o.resolution) for s in samples]
        video = torch.stack(clips).permute(0, 2, 1, 3, 4).to(self.device) * 2 - 1  # (B, 3, F, H, W) in [-1, 1]
        cond = self.encode_conditions(items)
        if self.vae is None:
            return video.float(), cond
        if self.architecture == "wan":
            cfg = self.vae.config
            view = (1, cfg.z_dim, 1, 1, 1)
            vae_dtype = next(self.vae.parameters()).dtype
            z = self.vae.encode(video.to(vae_dtype)).latent_dist.mean.float()
            mean = torch.tensor(cfg.latents_mean, device=z.device).view(view)
            std = torch.tensor(cfg.latents_std, device=z.device).view(view)
            return (z - mean) / std, cond
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(self.dtype)
        z = torch.cat([self.vae.encode(frames[i:i + _VAE_CHUNK]).latent_dist.mean.float()
                       for i in range(0, frames.shape[0], _VAE_CHUNK)]) * self.vae.config.scaling_factor
        return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous(), cond

    def sample_grid(self, decoded):
        """The first 4 clips, one row of frames each."""
        from torchvision.utils import make_grid
        clips = decoded[:4].detach().cpu()
        return make_grid(clips.flatten(0, 1), nrow=clips.shape[1])

    # ---- training state ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        model = unwrap(self.denoiser)
        if self._frozen_copy is None:
            from peft.utils import get_peft_model_state_dict
            return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state):
        model = unwrap(self.denoiser)
        if self._frozen_copy is None:
            from peft.utils import set_peft_model_state_dict
            set_peft_model_state_dict(model, state)
            return
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise ValueError(f"trainable state does not match the trained layers (missing {missing}, unexpected {extra})")
        model.load_state_dict(state, strict=False)

    def save_pretrained(self, directory: str) -> None:
        """LoRA: diffusers' LoRA format (``AnimateDiffPipeline`` / ``WanPipeline.load_lora_weights(directory)``).
        Full fine-tuning: the motion modules alone as a MotionAdapter folder (``MotionAdapter.from_pretrained``),
        else the whole model folder."""
        os.makedirs(directory, exist_ok=True)
        model = unwrap(self.denoiser)
        if self._frozen_copy is not None:
            if self.architecture == "animatediff" and self.options.lora_layers == "motion":
                model.save_motion_modules(directory)
            else:
                model.save_pretrained(directory)
            return
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        if self.architecture == "wan":
            from diffusers import WanPipeline
            WanPipeline.save_lora_weights(directory, transformer_lora_layers=layers)
        else:
            from diffusers import AnimateDiffPipeline
            AnimateDiffPipeline.save_lora_weights(directory, unet_lora_layers=layers)

    def trained_layer_names(self) -> List[str]:
        """Names of the parameters the optimiser updates (for reports and tests)."""
        return [n for n, p in unwrap(self.denoiser).named_parameters() if p.requires_grad]
