"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP-H fine-tuned on Pick-a-Pic preferences.

Score = ``logit_scale.exp() * cos(E_image, E_text)`` (the model's own learned temperature, ~100), as in
the PickScore README. Published weights: the transformers CLIPModel ``yuvalkirstain/PickScore_v1``,
with the processor (tokenizer, 224 px CLIP preprocessing) of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from diffalign.registry import RewardType
from diffalign.rewards.clip_models import CLIPReward, load_clip_parts

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(CLIPReward):
    name = "pickscore"
    reward_type = "pickscore"
    differentiable = True

    def score(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        return self.model.logit_scale.exp() * self.cosine(inputs, prompts)


def load_pickscore(directory: Optional[str], device=None, dtype=None, model: Optional[str] = None,
                   tokenizer: Optional[str] = None, image_size: Optional[int] = None,
                   image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
                   local_files_only: bool = False) -> PickScore:
    """PickScore from ``model`` (default yuvalkirstain/PickScore_v1); ``tokenizer`` defaults to the model folder's
    own tokenizer files, else the published processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K."""
    clip, tok, pre = load_clip_parts(directory, model, tokenizer, DEFAULT_MODEL, DEFAULT_PROCESSOR, "pickscore",
                                     local_files_only)
    pre.update({k: v for k, v in dict(image_size=image_size, image_mean=image_mean, image_std=image_std).items()
                if v is not None})
    return PickScore(clip, tok, **pre)


PICKSCORE = RewardType(load_pickscore)  # registered as 'pickscore' in diffalign.registry.BUILTIN_REWARDS
