"""Text-to-3D: a radiance field trained by score distillation against a frozen text-to-image prior.

There is no sampling chain here: the sample space x is what the prior denoises (the image modality's latents, or
its pixels in [-1, 1] for the pixel-space demo model), and a sample is a render of the trainable radiance field
(``build_generator`` / ``render``, used by SDS's ``generator: modality``) from a random camera. The prior is frozen
and serves as the critic through ``denoise``, its schedule and its guidance; the field is what trains.

Conditions are the prior's conditions of each item's (view-dependent) text plus the view: ``camera_to_world``
(B, 3, 4), ``fov``, ``azimuth``, ``elevation``, ``distance`` (B,) and ``background`` (B, 3). ``encode_conditions``
draws the view (and a random background) from each item's generator, so a render's camera does not depend on
its batch. Renders are encoded into x with their graph (the VAE encoder's mean for latent priors), and
``decode_with_grad`` is the prior's, so a differentiable reward of the rendered views (DreamReward's DreamFL term,
SDS's ``reward_weight``) reaches the field.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from diffalign.modalities.base import Conditions, Generators, ModalityAdapter, item_generators
from diffalign.modalities.threed.cameras import VIEW_KEYS, draw_views, look_at, view_labels, view_prompt
from diffalign.modalities.threed.options import ThreeDOptions
from diffalign.rewards.prompts import prompt_text

__all__ = ["ThreeDAdapter"]

_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def _split(cond: Conditions):
    """(the prior's conditions, the view's)."""
    return ({k: v for k, v in cond.items() if k not in VIEW_KEYS}, {k: v for k, v in cond.items() if k in VIEW_KEYS})


class ThreeDAdapter(ModalityAdapter):
    def __init__(self, prior: ModalityAdapter, options: ThreeDOptions, device="cpu"):
        self.prior, self.options, self.device = prior, options, torch.device(device)
        self.scheduler = prior.scheduler
        self.default_step_rule = prior.default_step_rule
        self.prior_resolution = prior.options.resolution
        self.render_resolution = options.render_resolution or self.prior_resolution

    @classmethod
    def from_options(cls, options: ThreeDOptions, device="cpu") -> "ThreeDAdapter":
        from diffalign.modalities.image.adapter import ImageAdapter
        prior = ImageAdapter.from_options(options.prior_options(), device=device)
        if options.prior_lora is not None:
            load_lora_into(prior, options.prior_lora)
        prior.denoiser.requires_grad_(False)  # the prior is a frozen critic, its LoRA weights included
        return cls(prior, options, device)

    # the prior's denoiser is this adapter's (the trainer freezes it on the generator path)
    @property
    def denoiser(self) -> nn.Module:
        return self.prior.denoiser

    @denoiser.setter
    def denoiser(self, module: nn.Module) -> None:
        self.prior.denoiser = module

    # ---- conditions and noise -------------------------------------------------------------------------------
    def encode_conditions(self, items: Sequence[Any], generator: Generators = None) -> Conditions:
        """The prior's conditions of each item's text (with ", <front|side|back> view" when view_dependent) and a
        view drawn from the item's generator (then a background colour, when random)."""
        o = self.options
        gens = item_generators(generator, len(items))
        views = draw_views(gens, o.azimuth, o.elevation, o.distance, o.fov)
        if o.background == "random":
            background = torch.stack([torch.rand(3, generator=g) for g in gens])
        else:
            colour = _BACKGROUNDS.get(o.background, o.background) if isinstance(o.background, str) else o.background
            background = torch.tensor([list(colour)] * len(items), dtype=torch.float32)
        texts = [prompt_text(item) for item in items]
        if o.view_dependent:
            labels = view_labels(views["azimuth"], views["elevation"], o.overhead_elevation)
            texts = [view_prompt(t, label) for t, label in zip(texts, labels)]
        cond = dict(self.prior.encode_conditions(texts))
        views["camera_to_world"] = look_at(views["azimuth"], views["elevation"], views["distance"])
        views["background"] = background
        cond.update({k: v.to(self.device) for k, v in views.items()})
        return cond

    def _with_view(self, prior_cond: Conditions, view: Conditions) -> Conditions:
        return {**prior_cond, **view}

    def unconditional(self, cond: Conditions) -> Conditions:
        prior_cond, view = _split(cond)
        return self._with_view(self.prior.unconditional(prior_cond), view)

    def guidance_branches(self, cond: Conditions) -> List[Conditions]:
        prior_cond, view = _split(cond)
        return [self._with_view(c, view) for c in self.prior.guidance_branches(prior_cond)]

    def combine_guidance(self, outputs, scale):
        return self.prior.combine_guidance(outputs, scale)

    def initial_noise(self, cond: Conditions, generator=None) -> torch.Tensor:
        return self.prior.initial_noise(_split(cond)[0], generator)

    def project_noise(self, noise: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return self.prior.project_noise(noise, _split(cond)[0])

    # ---- the critic -----------------------------------------------------------------------------------------
    def denoise(self, x, timesteps, cond):
        return self.prior.denoise(x, timesteps, _split(cond)[0])

    # ---- the generator --------------------------------------------------------------------------------------
    def build_generator(self, seed: int) -> nn.Module:
        """A fresh radiance field (``field.RadianceField`` over ``field.BlobField``) initialised from ``seed``."""
        from diffalign.modalities.threed.field import build_radiance_field
        return build_radiance_field(self.options, seed, self.device)

    def render_images(self, generator: nn.Module, cond: Conditions) -> torch.Tensor:
        """Rendered views (B, 3, H, W) in [0, 1] at the prior's resolution, with their graph."""
        images, _ = generator(cond["camera_to_world"], cond["fov"], cond["background"])
        if images.shape[-1] != self.prior_resolution:
            images = torch.nn.functional.interpolate(images, size=(self.prior_resolution,) * 2, mode="bilinear",
                                                     align_corners=False, antialias=True)
        return images

    def images_to_x(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the prior's x, differentiably (the inverse of the prior's ``decode``): pixels in
        [-1, 1] for a pixel-space prior, else the VAE encoder's mean with the latents' scaling and shift."""
        pixels = images * 2 - 1
        vae = getattr(self.prior, "vae", None)
        if vae is None:
            return pixels.float()
        cfg = vae.config
        z = vae.encode(pixels.to(self.prior.dtype)).latent_dist.mean
        if getattr(cfg, "shift_factor", None):
            z = z - cfg.shift_factor
        return (z * cfg.scaling_factor).float()

    def render(self, generator: nn.Module, cond: Conditions) -> torch.Tensor:
        return self.images_to_x(self.render_images(generator, cond))

    # ---- what rewards see -------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x0, cond):
        return self.prior.decode(x0, _split(cond)[0])

    def decode_with_grad(self, x0, cond):
        return self.prior.decode_with_grad(x0, _split(cond)[0])

    def rewards(self) -> Dict[str, Any]:
        return self.prior.rewards()

    def sample_grid(self, decoded):
        return self.prior.sample_grid(decoded)

    # ---- training state: the field trains (the algorithm's module); the prior stays as loaded -----------------
    def trainable_parameters(self) -> List[nn.Parameter]:
        return []

    def reference_mode(self):
        # the critic is the prior as loaded, LoRA weights included (the prior's own reference mode would
        # disable them), so the reference view is the model itself
        return contextlib.nullcontext()

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"the threed modality trains no prior weights, but the state holds {sorted(state)[:3]}")


def load_lora_into(prior, directory: str) -> None:
    """LoRA weights diffalign saved for an image model (diffusers' format: pytorch_lora_weights.safetensors, keys
    prefixed "unet." / "transformer.") -> the prior's peft adapters (it must have the same rank and targets)."""
    import os

    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file
    path = os.path.join(os.path.expanduser(directory), "pytorch_lora_weights.safetensors")
    if not os.path.isfile(path):
        raise ValueError(f"config key 'modality.options.prior_lora': no pytorch_lora_weights.safetensors in "
                         f"{directory!r} (the final/ folder of an image run trained with LoRA)")
    if prior.options.lora_rank < 1:
        raise ValueError("config key 'modality.options.prior_lora' needs 'modality.options.prior.lora_rank' >= 1 "
                         "(the rank the weights were trained with)")
    state = load_file(path)
    prefix = next((p for p in ("unet.", "transformer.") if all(k.startswith(p) for k in state)), "")
    state = convert_unet_state_dict_to_peft({k[len(prefix):]: v for k, v in state.items()})
    from peft.utils import set_peft_model_state_dict
    result = set_peft_model_state_dict(prior.denoiser, {k: v.to(prior.device) for k, v in state.items()})
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"config key 'modality.options.prior_lora': {len(unexpected)} weights of {path!r} match no "
                         f"LoRA layer of the prior (e.g. {unexpected[0]!r}): set modality.options.prior.lora_rank / "
                         f"lora_targets as they were trained")
