"""Temporal consistency of a video: how alike consecutive frames are.

Two rewards on videos (B, F, C, H, W) in [0, 1], higher = more consistent:

- ``temporal_consistency`` (:class:`CLIPTemporalConsistency`): the mean over t of the cosine similarity of the
  CLIP image embeddings of frames t and t + 1, in [-1, 1]: the "subject / background consistency" style of video
  benchmarks (VBench scores frame-to-frame feature similarity with DINO / CLIP features). Semantic: a shape that
  moves smoothly keeps its embedding, a flicker of colour or an object that appears changes it. Loaded from any
  transformers ``CLIPModel`` checkpoint (hub id or local folder; only the image tower is used); differentiable.
- ``frame_difference`` (:func:`frame_difference`): ``1 - mean |x_{t+1} - x_t|`` over pixels and consecutive pairs,
  in [0, 1]; no model. A pixel-space error with identity warping: it charges real motion as well as flicker
  (a flow-warped error would not, but needs an optical-flow model), so use it as a smoothness regulariser beside
  a reward that asks for motion, not alone. Differentiable.

A one-frame video has no consecutive pair; both rewards then give their maximum (1).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from diffalign.registry import RewardType
from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, clip_preprocess
from diffalign.rewards.clip_models import from_pretrained, how_to_download, pooled, read_preprocessor, resolve
from diffalign.rewards.loading import write_reward_config
from diffalign.rewards.video import VideoReward, check_video

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


def consecutive_cosine(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of consecutive frames' features (B, F, D) -> (B,); 1 where F = 1."""
    if features.shape[1] < 2:
        return features.new_ones(features.shape[0])
    f = F.normalize(features, dim=-1)
    return (f[:, 1:] * f[:, :-1]).sum(-1).mean(1)


def frame_difference(videos, prompts: Sequence[str]) -> torch.Tensor:
    """``1 - mean |x_{t+1} - x_t|`` of each video (B, F, C, H, W) in [0, 1], with its gradient (module doc)."""
    v = check_video(videos)
    if v.shape[1] < 2:
        return v.new_ones(v.shape[0])
    return 1.0 - (v[:, 1:] - v[:, :-1]).abs().mean(dim=(1, 2, 3, 4))


frame_difference.differentiable = True


class CLIPTemporalConsistency(VideoReward):
    """Mean cosine similarity of consecutive frames' CLIP image embeddings (module doc)."""

    name = "temporal_consistency"
    reward_type = "temporal_consistency"
    differentiable = True

    def __init__(self, model, image_size: Optional[int] = None, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.model = model
        self.image_size = int(image_size or model.config.vision_config.image_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(pixels, self.image_size, self.image_mean, self.image_std)

    def score_video(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        b, f = inputs.shape[:2]
        emb = pooled(self.model.get_image_features(pixel_values=inputs.reshape(b * f, *inputs.shape[2:])))
        return consecutive_cosine(emb.reshape(b, f, -1))

    def save_pretrained(self, directory: str) -> str:
        """The transformers CLIP layout (config.json + safetensors) plus diffalign_reward.json."""
        self.model.save_pretrained(directory)
        return write_reward_config(directory, self.reward_type, image_size=self.image_size,
                                   image_mean=list(self.image_mean), image_std=list(self.image_std))


def load_temporal_consistency(directory: Optional[str], device=None, dtype=None, model: Optional[str] = None,
                              image_size: Optional[int] = None, image_mean: Optional[Sequence[float]] = None,
                              image_std: Optional[Sequence[float]] = None,
                              local_files_only: bool = False) -> CLIPTemporalConsistency:
    """From ``model`` (hub id or local transformers CLIP folder; default openai/clip-vit-large-patch14)."""
    from transformers import CLIPModel
    source = resolve(directory, model) or directory or DEFAULT_MODEL
    clip = from_pretrained(CLIPModel, source, "temporal_consistency", how_to_download(source),
                           local_files_only=local_files_only)
    pre: Dict[str, Any] = read_preprocessor(source) if os.path.isdir(source) else {}
    pre.update({k: v for k, v in dict(image_size=image_size, image_mean=image_mean, image_std=image_std).items()
                if v is not None})
    return CLIPTemporalConsistency(clip, **pre)


TEMPORAL_CONSISTENCY = RewardType(load_temporal_consistency)  # 'temporal_consistency' in registry.BUILTIN_REWARDS
