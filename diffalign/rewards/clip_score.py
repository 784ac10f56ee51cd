"""CLIP score: image-text agreement of a CLIP model, ``scale * max(cos(E_image, E_text), 0)``.

Convention: torchmetrics' ``CLIPScore`` (scale 100, negatives clipped to 0; its default model is
openai/clip-vit-large-patch14); Hessel et al. 2021 ("CLIPScore") use the same form with w = 2.5. Set
``scale`` / ``clip_negative`` to switch. With ``clip_negative`` the gradient is zero where the cosine
is negative; use ``clip_negative: false`` for direct reward fine-tuning from scratch.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from diffalign.registry import RewardType
from diffalign.rewards.clip_models import CLIPReward, load_clip_parts

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


class CLIPScore(CLIPReward):
    name = "clip_score"
    reward_type = "clip_score"
    differentiable = True

    def __init__(self, model, tokenizer, scale: float = 100.0, clip_negative: bool = True, **pre):
        super().__init__(model, tokenizer, **pre)
        self.scale, self.clip_negative = float(scale), bool(clip_negative)

    def score(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        cos = self.cosine(inputs, prompts)
        return self.scale * (cos.clamp(min=0) if self.clip_negative else cos)

    def reward_config(self):
        return {"scale": self.scale, "clip_negative": self.clip_negative}


def load_clip_score(directory: Optional[str], device=None, dtype=None, model: Optional[str] = None,
                    tokenizer: Optional[str] = None, scale: float = 100.0, clip_negative: bool = True,
                    image_size: Optional[int] = None, image_mean: Optional[Sequence[float]] = None,
                    image_std: Optional[Sequence[float]] = None, local_files_only: bool = False) -> CLIPScore:
    """CLIP score from ``model`` (hub id or local transformers CLIP folder; default openai/clip-vit-large-patch14)."""
    clip, tok, pre = load_clip_parts(directory, model, tokenizer, DEFAULT_MODEL, None, "clip_score", local_files_only)
    pre.update({k: v for k, v in dict(image_size=image_size, image_mean=image_mean, image_std=image_std).items()
                if v is not None})
    return CLIPScore(clip, tok, scale=scale, clip_negative=clip_negative, **pre)


CLIP_SCORE = RewardType(load_clip_score)  # registered as 'clip_score' in diffalign.registry.BUILTIN_REWARDS
