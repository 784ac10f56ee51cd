"""Loading checkpoints for model rewards, and the CLIP (transformers ``CLIPModel``) reward base class.

Every model reward loads from a hub id or a local path. Nothing here downloads unless the source is a
hub id that is not cached (and ``local_files_only`` is False); whatever fails to load raises one
``MissingRewardWeights`` naming the source and how to provide it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, Reward, clip_preprocess, looks_like_path, missing_weights
from diffalign.rewards.loading import write_reward_config


def how_to_download(repo_id: str, what: str = "model") -> str:
    return (f"Download the {what} once (e.g. `huggingface-cli download {repo_id} --local-dir DIR`) on a machine "
            f"with network access and pass the local path (reward.kwargs {{model: DIR}} / load_reward(..., model=DIR)).")


def resolve(directory: Optional[str], value: Optional[str]) -> Optional[str]:
    """``value`` relative to a reward directory (diffalign_reward.json's paths are relative to it)."""
    if value is None or directory is None or os.path.isabs(value):
        return value
    joined = os.path.join(directory, value)
    return joined if os.path.exists(joined) else value


def from_pretrained(cls, source: str, reward: str, how: str, local_files_only: bool = False, **kwargs):
    """``cls.from_pretrained(source)`` with missing weights reported as ``MissingRewardWeights``."""
    if looks_like_path(source) and not os.path.exists(source):
        raise missing_weights(reward, source, "No such local path. " + how)
    try:
        return cls.from_pretrained(source, local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as exc:  # not cached / offline / not a repo id (HFValidationError is a ValueError)
        raise missing_weights(reward, source, how, exc) from exc


def checkpoint_file(source: str, filename: str, reward: str, how: str, local_files_only: bool = False) -> str:
    """A local checkpoint file: ``source`` itself, ``source/filename``, or ``filename`` in hub repo ``source``."""
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.isfile(path):
            raise missing_weights(reward, path, f"The directory has no {filename}. " + how)
        return path
    if looks_like_path(source):
        raise missing_weights(reward, source, "No such local path. " + how)
    try:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id=source, filename=filename, local_files_only=local_files_only)
    except Exception as exc:  # offline, not cached, no such repo or file: all mean "weights missing"
        raise missing_weights(reward, f"{source}/{filename}", how, exc) from exc


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def pooled(out) -> torch.Tensor:
    """The projected embedding from ``get_image_features`` / ``get_text_features`` (a tensor before transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def read_preprocessor(source: str) -> Dict[str, Any]:
    """image_mean / image_std / crop size from a local ``preprocessor_config.json`` where there is one."""
    path = os.path.join(source, "preprocessor_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        cfg = json.load(f)
    out = {k: cfg[k] for k in ("image_mean", "image_std") if k in cfg}
    crop = cfg.get("crop_size")
    if isinstance(crop, dict):
        crop = crop.get("height")
    if isinstance(crop, int):
        out["image_size"] = crop
    return out


class CLIPReward(Reward):
    """Base of rewards on a transformers ``CLIPModel``: CLIP preprocessing in torch and normalised embeddings."""

    reward_type = "clip"

    def __init__(self, model, tokenizer, image_size: Optional[int] = None, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = int(image_size or model.config.vision_config.image_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(pixels, self.image_size, self.image_mean, self.image_std)

    def image_embeds(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled(self.model.get_image_features(pixel_values=inputs)), dim=-1)

    def text_embeds(self, prompts: List[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        return F.normalize(pooled(out), dim=-1)

    def cosine(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        return (self.image_embeds(inputs) * self.text_embeds(prompts)).sum(-1)

    def reward_config(self) -> Dict[str, Any]:
        return {}

    def save_pretrained(self, directory: str) -> str:
        """The transformers layout (config.json + safetensors + tokenizer files) plus diffalign_reward.json."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return write_reward_config(directory, self.reward_type, image_size=self.image_size,
                                   image_mean=list(self.image_mean), image_std=list(self.image_std),
                                   **self.reward_config())


def load_clip_parts(directory: Optional[str], model: Optional[str], tokenizer: Optional[str], default_model: str,
                    default_tokenizer: Optional[str], reward: str, local_files_only: bool = False):
    """(CLIPModel, CLIPTokenizer, preprocessing overrides) from a hub id or local directory."""
    from transformers import CLIPModel, CLIPTokenizer
    source = resolve(directory, model) or directory or default_model
    how = how_to_download(default_model if source == default_model else source)
    clip = from_pretrained(CLIPModel, source, reward, how, local_files_only=local_files_only)
    if tokenizer is None:  # the model's own folder when it has tokenizer files, else the published tokenizer
        has_tok = os.path.isdir(source) and any(os.path.isfile(os.path.join(source, f))
                                                 for f in ("vocab.json", "tokenizer.json"))
        tokenizer = source if has_tok or default_tokenizer is None else default_tokenizer
    tokenizer = resolve(directory, tokenizer)
    tok = from_pretrained(CLIPTokenizer, tokenizer, reward, how_to_download(tokenizer, "tokenizer"),
                          local_files_only=local_files_only)
    pre = read_preprocessor(source) if os.path.isdir(source) else {}
    return clip, tok, pre
