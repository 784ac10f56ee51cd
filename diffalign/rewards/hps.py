"""Human Preference Score v2 / v2.1 (Wu et al. 2023): open_clip ViT-H-14 fine-tuned on HPD v2 preferences.

Score = ``cos(E_image, E_text)`` (no logit scale; about 0.2-0.35 on real images), as ``hpsv2.score``:
``image_features @ text_features.T`` of the normalised features, diagonal. Published checkpoints: hub repo
``xswu/HPSv2``, files ``HPS_v2_compressed.pt`` (v2.0) and ``HPS_v2.1_compressed.pt`` (v2.1), each
``{"state_dict": <open_clip ViT-H-14 state dict>}``; the tokenizer is open_clip's ``get_tokenizer('ViT-H-14')``
(bundled with open_clip, no download). Preprocessing: resize (bicubic) + centre crop to 224 and the OpenAI
CLIP mean / std (open_clip's eval transform for square images).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from diffalign.registry import RewardType
from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, Reward, clip_preprocess
from diffalign.rewards.clip_models import checkpoint_file, load_state_dict_file, resolve
from diffalign.rewards.loading import write_reward_config

DEFAULT_REPO = "xswu/HPSv2"
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
MODEL_NAME = "ViT-H-14"


def create_open_clip(model_name: str = MODEL_NAME, model_cfg: Optional[Dict[str, Any]] = None):
    """An untrained open_clip model: the named architecture, or ``model_cfg`` registered under ``model_name``
    (open_clip's own config format: embed_dim, vision_cfg, text_cfg) so tiny test configs build the same way."""
    import open_clip
    from open_clip import factory
    if model_cfg is not None:
        factory._MODEL_CONFIGS[model_name] = dict(model_cfg)  # open_clip's registry of architectures
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"open_clip has no model config {model_name!r}; pass model_cfg (embed_dim, vision_cfg, "
                         f"text_cfg) to define it")
    quiet = _DropMessage("No pretrained weights loaded")  # expected: the HPS weights are loaded right after
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(model_name, pretrained=None)
    finally:
        logging.getLogger().removeFilter(quiet)
    return model, open_clip.get_tokenizer(model_name)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


class HPSv2(Reward):
    name = "hps_v2"
    differentiable = True

    def __init__(self, model, tokenizer, version: str = "v2.1", model_name: str = MODEL_NAME,
                 model_cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        if version not in CHECKPOINTS:
            raise ValueError(f"hps version {version!r} is unknown; use one of {sorted(CHECKPOINTS)}")
        self.model, self.tokenizer, self.version = model, tokenizer, version
        self.model_name, self.model_cfg = model_name, model_cfg
        self.reward_type = "hps_v2" if version == "v2.0" else "hps_v2.1"
        self.name = self.reward_type
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(pixels, self.image_size, CLIP_MEAN, CLIP_STD)

    def score(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        img = F.normalize(self.model.encode_image(inputs), dim=-1)
        txt = F.normalize(self.model.encode_text(self.tokenizer(prompts).to(self.device)), dim=-1)
        return (img * txt).sum(-1)

    def save_pretrained(self, directory: str) -> str:
        """The published layout: ``HPS_v2[.1]_compressed.pt`` = {"state_dict": ...}, plus diffalign_reward.json."""
        os.makedirs(directory, exist_ok=True)
        fname = CHECKPOINTS[self.version]
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}},
                   os.path.join(directory, fname))
        extra = {"model_cfg": self.model_cfg} if self.model_cfg is not None else {}
        return write_reward_config(directory, self.reward_type, checkpoint=fname, model_name=self.model_name, **extra)


def load_hps(directory: Optional[str], device=None, dtype=None, checkpoint: Optional[str] = None,
             version: str = "v2.1", model_name: str = MODEL_NAME, model_cfg: Optional[Dict[str, Any]] = None,
             local_files_only: bool = False) -> HPSv2:
    """HPS ``version`` ("v2.0" / "v2.1") from ``checkpoint``: the .pt file, a folder holding it, or a hub repo
    (default xswu/HPSv2, file HPS_v2[.1]_compressed.pt)."""
    if version not in CHECKPOINTS:
        raise ValueError(f"hps version {version!r} is unknown; use one of {sorted(CHECKPOINTS)}")
    source = resolve(directory, checkpoint) or directory or DEFAULT_REPO
    how = (f"Download {CHECKPOINTS[version]} once (e.g. `huggingface-cli download {DEFAULT_REPO} "
           f"{CHECKPOINTS[version]} --local-dir DIR`) and pass its path (reward.kwargs {{checkpoint: PATH}}).")
    path = checkpoint_file(source, CHECKPOINTS[version], f"hps_{version}", how, local_files_only)
    model, tokenizer = create_open_clip(model_name, model_cfg)
    sd = load_state_dict_file(path)
    sd = sd.get("state_dict", sd)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: not an open_clip {model_name} state dict: missing keys "
                         f"{result.missing_keys[:8]}, unexpected keys {result.unexpected_keys[:8]}")
    return HPSv2(model, tokenizer, version, model_name, model_cfg)


def load_hps_v2(directory: Optional[str], device=None, dtype=None, checkpoint: Optional[str] = None,
                model_name: str = MODEL_NAME, model_cfg: Optional[Dict[str, Any]] = None,
                local_files_only: bool = False) -> HPSv2:
    """HPS v2.0 (HPS_v2_compressed.pt)."""
    return load_hps(directory, device, dtype, checkpoint, "v2.0", model_name, model_cfg, local_files_only)


def load_hps_v21(directory: Optional[str], device=None, dtype=None, checkpoint: Optional[str] = None,
                 model_name: str = MODEL_NAME, model_cfg: Optional[Dict[str, Any]] = None,
                 local_files_only: bool = False) -> HPSv2:
    """HPS v2.1 (HPS_v2.1_compressed.pt)."""
    return load_hps(directory, device, dtype, checkpoint, "v2.1", model_name, model_cfg, local_files_only)


HPS_V2 = RewardType(load_hps_v2)  # registered as 'hps_v2' in diffalign.registry.BUILTIN_REWARDS
HPS_V21 = RewardType(load_hps_v21)  # registered as 'hps_v2.1' in diffalign.registry.BUILTIN_REWARDS
