"""Video-text agreement from X-CLIP (Ni et al. 2022, transformers ``XCLIPModel``): ``xclip_score``.

X-CLIP encodes a clip's frames with a CLIP image tower, fuses the frame embeddings with a multi-frame integration
transformer, and conditions the text embedding on the video (its "video-specific prompting"). The reward of a
(video, caption) pair is ``scale * cos(video embedding, video-conditioned text embedding)``: the model's own
``logits_per_video`` divided by its learnt temperature, times ``scale`` (default 100, the CLIP-score convention of
:mod:`diffalign.rewards.clip_score`); no clipping at 0, so the gradient never vanishes. Differentiable in the frames.

Frames: X-CLIP's integration transformer has one position embedding per frame (``vision_config.num_frames``, 8 for
microsoft/xclip-base-patch32), so a clip of another length is sampled at ``num_frames`` evenly spaced frames
(``round(linspace(0, F - 1, num_frames))``, X-CLIP's uniform sampling; a shorter clip repeats frames).
Preprocessing in torch: shorter side resized to the model's image size, centre crop, normalised with the
checkpoint's ``preprocessor_config.json`` mean / std where the folder has one, else ImageNet's (0.485, 0.456,
0.406) / (0.229, 0.224, 0.225), which the published X-CLIP checkpoints' processors use.

Loading: ``load_reward("xclip_score", model=HUB_ID_OR_DIR)`` (default microsoft/xclip-base-patch32); the tokenizer
comes from the same folder unless ``tokenizer`` says otherwise. ``save_pretrained`` writes the transformers layout
plus diffalign_reward.json, so a saved directory loads by path.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import torch

from diffalign.registry import RewardType
from diffalign.rewards.base import clip_preprocess
from diffalign.rewards.clip_models import from_pretrained, how_to_download, read_preprocessor, resolve
from diffalign.rewards.loading import write_reward_config
from diffalign.rewards.video import VideoReward, check_video, gather_frames

DEFAULT_MODEL = "microsoft/xclip-base-patch32"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def uniform_frame_index(num_frames: int, want: int) -> torch.Tensor:
    """``want`` evenly spaced frame indices of a clip of ``num_frames`` (repeats where the clip is shorter)."""
    if num_frames < 1 or want < 1:
        raise ValueError(f"uniform_frame_index: need num_frames >= 1 and want >= 1, got {num_frames}, {want}")
    return torch.linspace(0, num_frames - 1, want, dtype=torch.float64).round().long()


class XCLIPScore(VideoReward):
    """``scale * cos(video, video-conditioned caption)`` of an X-CLIP model (module doc)."""

    name = "xclip_score"
    reward_type = "xclip_score"
    differentiable = True

    def __init__(self, model, tokenizer, scale: float = 100.0, image_size: Optional[int] = None,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.scale = float(scale)
        self.image_size = int(image_size or model.config.vision_config.image_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.num_frames = int(model.config.vision_config.num_frames)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(pixels, self.image_size, self.image_mean, self.image_std)

    def forward(self, videos, prompts=None) -> torch.Tensor:
        videos = check_video(videos)
        if videos.shape[1] != self.num_frames:  # the integration transformer has num_frames positions
            index = uniform_frame_index(videos.shape[1], self.num_frames)
            videos = gather_frames(videos, index.expand(videos.shape[0], -1))
        return super().forward(videos, prompts)

    def score_video(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(prompts))  # each caption encoded once; logits are (videos, captions)
        tok = self.tokenizer(unique, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model(input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device),
                         pixel_values=inputs)
        column = torch.tensor([unique.index(p) for p in prompts], device=inputs.device)
        logits = out.logits_per_video.gather(1, column[:, None]).squeeze(1)
        return self.scale * logits / self.model.logit_scale.exp()

    def save_pretrained(self, directory: str) -> str:
        """The transformers layout (config.json + safetensors + tokenizer files) plus diffalign_reward.json."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return write_reward_config(directory, self.reward_type, scale=self.scale, image_size=self.image_size,
                                   image_mean=list(self.image_mean), image_std=list(self.image_std))


def load_xclip_score(directory: Optional[str], device=None, dtype=None, model: Optional[str] = None,
                     tokenizer: Optional[str] = None, scale: float = 100.0, image_size: Optional[int] = None,
                     image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
                     local_files_only: bool = False) -> XCLIPScore:
    """X-CLIP score from ``model`` (hub id or local transformers X-CLIP folder; default microsoft/xclip-base-patch32)."""
    from transformers import AutoTokenizer, XCLIPModel
    source = resolve(directory, model) or directory or DEFAULT_MODEL
    xclip = from_pretrained(XCLIPModel, source, "xclip_score", how_to_download(source), local_files_only=local_files_only)
    tok_source = resolve(directory, tokenizer) or source
    tok = from_pretrained(AutoTokenizer, tok_source, "xclip_score", how_to_download(tok_source, "tokenizer"),
                          local_files_only=local_files_only)
    pre: Dict = read_preprocessor(source) if os.path.isdir(source) else {}
    pre.update({k: v for k, v in dict(image_size=image_size, image_mean=image_mean, image_std=image_std).items()
                if v is not None})
    return XCLIPScore(xclip, tok, scale=scale, **pre)


XCLIP_SCORE = RewardType(load_xclip_score)  # registered as 'xclip_score' in diffalign.registry.BUILTIN_REWARDS
