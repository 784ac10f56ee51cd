"""Edit rewards: how well an edited image follows its instruction and how much of the input it keeps.

Called as every reward, ``reward(decoded, items)``: ``decoded`` the edited images (B, 3, H, W) in [0, 1],
``items`` the edit prompt items ``{"text": <instruction>, "image": <input image path>, ...}``; the input
images are read by :func:`diffalign.rewards.editing_inputs.input_images`, resized to the edits' size.

- ``clip_directional_similarity``: cos(E_I(edit) - E_I(input), E_T(output caption) - E_T(input caption)),
  E the L2-normalised CLIP embeddings: the change in the image against the change in the text (Gal et al.
  2021, StyleGAN-NADA's directional CLIP loss; the edit-following metric of InstructPix2Pix, Brooks et al.
  2023, Fig. 8, computed as in its metrics/clip_similarity.py ``sim_direction``). The captions are the
  InstructPix2Pix data's own: GPT-3 wrote, per instruction, a caption of the input and one of the
  output (``prompt.json`` "input" / "output"); here they are the item's fields ``"input_caption"`` and
  ``"output_caption"`` (a clear error names the item when one is missing).
- ``clip_instruction_similarity``: cos(E_I(edit), E_T(instruction)), CLIP's image-text agreement with the
  instruction itself (no captions needed).
- ``clip_image_similarity``: cos(E_I(edit), E_I(input)), feature-space preservation of the input
  (InstructPix2Pix's ``sim_image``, the x axis of its Fig. 8 trade-off plot).
- ``edit_preservation``: pixel-space preservation, 1 - mean |edit - input| (``metric: l1``) or
  1 - mean (edit - input)^2 (``metric: l2``), both 1 for an untouched input and in [0, 1].

The CLIP rewards load like ``clip_score`` (``model``: a hub id or a local transformers CLIP folder, default
openai/clip-vit-large-patch14, the ViT-L/14 InstructPix2Pix evaluates with) and are differentiable in the
edited images; the input images and texts carry no gradient.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F

from diffalign.registry import RewardType
from diffalign.rewards.base import as_pixels
from diffalign.rewards.clip_models import CLIPReward, load_clip_parts
from diffalign.rewards.editing_inputs import input_images, item_field
from diffalign.rewards.prompts import prompt_text

DEFAULT_MODEL = "openai/clip-vit-large-patch14"
KINDS = {"directional": "clip_directional_similarity", "instruction": "clip_instruction_similarity",
         "image": "clip_image_similarity"}
PRESERVATION_METRICS = ("l1", "l2")


def _edit_pixels(images, name: str) -> torch.Tensor:
    pixels = as_pixels(images)
    if isinstance(pixels, list):
        raise ValueError(f"{name}: edited images of different sizes; pass a tensor (B, 3, H, W)")
    return pixels


def edit_preservation(samples, prompts: Sequence[Any], metric: str = "l1") -> torch.Tensor:
    """1 - mean |edit - input| (l1) or 1 - mean (edit - input)^2 (l2) per sample: 1 = the input untouched."""
    if metric not in PRESERVATION_METRICS:
        raise ValueError(f"edit_preservation: metric must be one of {PRESERVATION_METRICS}, got {metric!r}")
    edits = _edit_pixels(samples, "edit_preservation").float()
    if len(prompts) != edits.shape[0]:
        raise ValueError(f"edit_preservation: {edits.shape[0]} edits but {len(prompts)} prompt items")
    inputs = input_images(prompts, tuple(edits.shape[-2:]), edits.device)
    diff = edits.clamp(0, 1) - inputs
    err = diff.abs() if metric == "l1" else diff.square()
    return 1.0 - err.flatten(1).mean(dim=1)


class EditCLIPSimilarity(CLIPReward):
    """One of the three CLIP edit similarities (``kind``: directional | instruction | image)."""

    differentiable = True

    def __init__(self, model, tokenizer, kind: str, **pre):
        if kind not in KINDS:
            raise ValueError(f"edit CLIP similarity: kind must be one of {sorted(KINDS)}, got {kind!r}")
        super().__init__(model, tokenizer, **pre)
        self.kind = kind
        self.name = self.reward_type = KINDS[kind]

    def forward(self, images, prompts: Optional[Sequence[Any]] = None) -> torch.Tensor:
        edits = _edit_pixels(images, self.name).to(self.device, torch.float32)
        items: List[Any] = list(prompts) if prompts is not None else []
        if len(items) != edits.shape[0]:
            raise ValueError(f"{self.name}: {edits.shape[0]} edits but {len(items)} prompt items")
        edit_emb = self.image_embeds(self.preprocess(edits).to(self.dtype))
        if self.kind == "instruction":
            out = (edit_emb * self.text_embeds([prompt_text(it) for it in items])).sum(-1)
            return out.float()
        with torch.no_grad():
            inputs = input_images(items, tuple(edits.shape[-2:]), self.device)
            input_emb = self.image_embeds(self.preprocess(inputs).to(self.dtype))
        if self.kind == "image":
            return (edit_emb * input_emb).sum(-1).float()
        with torch.no_grad():
            before = self.text_embeds([str(item_field(it, "input_caption", i)) for i, it in enumerate(items)])
            after = self.text_embeds([str(item_field(it, "output_caption", i)) for i, it in enumerate(items)])
        return F.cosine_similarity(edit_emb - input_emb, after - before, dim=-1).float()

    def reward_config(self):
        return {"kind": self.kind}


def _loader(own: str):
    def load(directory: Optional[str], device=None, dtype=None, model: Optional[str] = None,
             tokenizer: Optional[str] = None, image_size: Optional[int] = None,
             image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
             local_files_only: bool = False, kind: Optional[str] = None) -> EditCLIPSimilarity:
        if kind is not None and kind != own:  # a saved folder's diffalign_reward.json repeats its kind
            raise ValueError(f"{KINDS[own]}: the folder holds a {kind!r} similarity, not {own!r}")
        clip, tok, pre = load_clip_parts(directory, model, tokenizer, DEFAULT_MODEL, None, KINDS[own],
                                         local_files_only)
        pre.update({k: v for k, v in dict(image_size=image_size, image_mean=image_mean, image_std=image_std).items()
                    if v is not None})
        return EditCLIPSimilarity(clip, tok, own, **pre)

    load.__name__ = f"load_{KINDS[own]}"
    load.__doc__ = f"{KINDS[own]} on a CLIP from ``model`` (hub id or local folder; default {DEFAULT_MODEL})."
    return load


# registered by these names in diffalign.registry.BUILTIN_REWARDS
CLIP_DIRECTIONAL_SIMILARITY = RewardType(_loader("directional"))
CLIP_INSTRUCTION_SIMILARITY = RewardType(_loader("instruction"))
CLIP_IMAGE_SIMILARITY = RewardType(_loader("image"))
