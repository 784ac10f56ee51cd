"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor", C. Schuhmann): an MLP on CLIP ViT-L/14 image
embeddings, trained on SAC + LOGOS + AVA ratings (about 1..10). DDPO's "aesthetic quality" reward.

Architecture (as the public predictor): the CLIP ViT-L/14 image embedding (768-d, projected), L2-normalised,
then ``layers`` = Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64),
Dropout(0.1), Linear(64, 16), Linear(16, 1), with no activations between them (they are commented out in
the public code). Its .pth state dict has keys ``layers.{0,2,4,6,7}.{weight,bias}``. The CLIP tower is the
transformers port ``openai/clip-vit-large-patch14`` of the OpenAI ViT-L/14 the predictor was trained on.
The published head is ``sac+logos+ava1-l14-linearMSE.pth`` in
https://github.com/christophschuhmann/improved-aesthetic-predictor.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
from torch import nn

from diffalign.registry import RewardType
from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, Reward, clip_preprocess, missing_weights
from diffalign.rewards.clip_models import (from_pretrained, how_to_download, load_state_dict_file, pooled,
                                           read_preprocessor, resolve, checkpoint_file)
from diffalign.rewards.loading import write_reward_config

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            "sac%2Blogos%2Bava1-l14-linearMSE.pth")


class ScoreMLP(nn.Module):
    """The 5-layer head shared by the LAION aesthetic predictor and ImageReward (same key layout ``layers.N``)."""

    def __init__(self, input_size: int = 768, hidden: Sequence[int] = (1024, 128, 64, 16),
                 dropout: Sequence[float] = (0.2, 0.2, 0.1)):
        super().__init__()
        h1, h2, h3, h4 = hidden
        self.layers = nn.Sequential(nn.Linear(input_size, h1), nn.Dropout(dropout[0]), nn.Linear(h1, h2),
                                    nn.Dropout(dropout[1]), nn.Linear(h2, h3), nn.Dropout(dropout[2]),
                                    nn.Linear(h3, h4), nn.Linear(h4, 1))

    @staticmethod
    def hidden_from_state_dict(sd, prefix: str = "layers.") -> List[int]:
        """(input, h1..h4) read off a published state dict, so tiny test heads load too."""
        return [sd[f"{prefix}0.weight"].shape[1]] + [sd[f"{prefix}{i}.weight"].shape[0] for i in (0, 2, 4, 6)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LaionAesthetic(Reward):
    name = "aesthetic"
    reward_type = "aesthetic"
    differentiable = True

    def __init__(self, clip, head: ScoreMLP, image_size: Optional[int] = None,
                 image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.clip, self.head = clip, head
        self.image_size = int(image_size or clip.config.vision_config.image_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(pixels, self.image_size, self.image_mean, self.image_std)

    def score(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        emb = torch.nn.functional.normalize(pooled(self.clip.get_image_features(pixel_values=inputs)), dim=-1)
        return self.head(emb).squeeze(-1)

    def save_pretrained(self, directory: str) -> str:
        """``clip/`` (transformers CLIPModel) + the head .pth in the published key layout."""
        self.clip.save_pretrained(os.path.join(directory, "clip"))
        torch.save({k: v.detach().cpu().float() for k, v in self.head.state_dict().items()},
                   os.path.join(directory, HEAD_FILE))
        return write_reward_config(directory, self.reward_type, clip_model="clip", head=HEAD_FILE,
                                   image_size=self.image_size, image_mean=list(self.image_mean),
                                   image_std=list(self.image_std))


def load_head(path: str) -> ScoreMLP:
    sd = load_state_dict_file(path)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    try:
        dims = ScoreMLP.hidden_from_state_dict(sd)
    except KeyError as exc:
        raise ValueError(f"{path}: not an aesthetic predictor head (no key {exc}; expected layers.0.weight ... "
                         f"layers.7.bias)") from None
    head = ScoreMLP(dims[0], dims[1:])
    head.load_state_dict(sd)
    return head


def load_aesthetic(directory: Optional[str], device=None, dtype=None, clip_model: Optional[str] = None,
                   head: Optional[str] = None, image_size: Optional[int] = None,
                   image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
                   local_files_only: bool = False) -> LaionAesthetic:
    """LAION aesthetic predictor: ``clip_model`` (hub id / local transformers CLIP folder, default
    openai/clip-vit-large-patch14) and ``head`` (the predictor's .pth file, a folder holding it, or a hub repo with
    it). Paths are relative to ``directory`` where given."""
    from transformers import CLIPModel
    how_head = (f"Download {HEAD_FILE} from {HEAD_URL} and pass its path (reward.kwargs {{head: PATH}} / "
                f"load_reward('aesthetic', head=PATH)).")
    head_src = resolve(directory, head) or (os.path.join(directory, HEAD_FILE) if directory else None)
    if head_src is None:
        raise missing_weights("aesthetic", HEAD_FILE, "No head given. " + how_head)
    mlp = load_head(checkpoint_file(head_src, HEAD_FILE, "aesthetic", how_head, local_files_only))
    source = resolve(directory, clip_model) or DEFAULT_CLIP
    clip = from_pretrained(CLIPModel, source, "aesthetic", how_to_download(source),
                           local_files_only=local_files_only)
    pre = read_preprocessor(source) if os.path.isdir(source) else {}
    pre.update({k: v for k, v in dict(image_size=image_size, image_mean=image_mean, image_std=image_std).items()
                if v is not None})
    return LaionAesthetic(clip, mlp, **pre)


AESTHETIC = RewardType(load_aesthetic)  # registered as 'aesthetic' in diffalign.registry.BUILTIN_REWARDS
