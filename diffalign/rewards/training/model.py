"""A trainable preference reward model: a CLIP-like image+text backbone and one scalar head per aspect.

Score of an (image, prompt) for aspect a: ``head_a([u, v, u * v])`` with u, v the L2-normalised CLIP
image and text embeddings (the product term lets a linear head express prompt-image agreement, as
PickScore's scaled cosine does, besides prompt-free image quality). Heads are linear, or a one-hidden-
layer MLP (``head_hidden`` > 0). The backbone is ``transformers.CLIPModel``: a hub id / local folder
(with its tokenizer), or a tiny random config (``backbone: tiny``) with a character tokenizer, which
tests and the shipped tiny config use (nothing is downloaded).

With ``input_image`` (HIVE's reward model of an edit: Zhang et al. 2023, "HIVE: Harnessing Human
Feedback for Instructional Visual Editing") the model scores (input image, instruction, edit): prompts
are edit items ``{"text": instruction, "image": input path}`` and the head reads
``[u, v, u * v, w, u - w, (u - w) * v]``, w the input's embedding, so the change an edit makes can be
weighed against what the instruction asks (the same edit is good for one input and bad for another).

Backbone modes: ``frozen`` (only the heads train; embeddings can be cached), ``lora`` (peft LoRA on
the attention projections) or ``full``.

Saved folder (loaded by :func:`load_preference_model`, and by ``diffalign.rewards.loading.load_reward``
through the ``"preference_model"`` type):

- ``diffalign_reward.json``: ``{"type": "preference_model", "aspects", "primary", "head_hidden",
  "image_size", "image_mean", "image_std", "tokenizer": "char" | "tokenizer", "max_length", ...}``;
- ``backbone/config.json``: the CLIPConfig;  ``tokenizer/``: the HF tokenizer (unless "char");
- ``model.safetensors``: every weight (``backbone.*`` with any LoRA merged in, ``heads.<aspect>.*``), so
  loading needs neither peft nor the original checkpoint.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffalign.registry import RewardType
from diffalign.rewards.base import (CLIP_MEAN, CLIP_STD, REWARD_CONFIG_FILE, Reward, as_pixels, clip_preprocess,
                                   missing_weights, read_reward_meta)
from diffalign.rewards.prompts import prompt_text

MODEL_TYPE = "preference_model"
CONFIG_NAME = REWARD_CONFIG_FILE
WEIGHTS_NAME = "model.safetensors"
BACKBONE_MODES = ("frozen", "lora", "full")


def tiny_clip_config(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, layers: int = 2,
                     heads: int = 2, projection_dim: int = 32, max_length: int = 16):
    """A random CLIPConfig small enough for CPU tests; text side matches the character tokenizer's ids."""
    from transformers import CLIPConfig

    from diffalign.data.tokenizers import CharTokenizer
    text = dict(vocab_size=CharTokenizer.vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                bos_token_id=CharTokenizer.bos, pad_token_id=CharTokenizer.pad, eos_token_id=CharTokenizer.eos)
    vision = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                  intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=heads)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def _head(in_dim: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, 1)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))


def _pooled(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PreferenceRewardModel(Reward):
    """``forward(images, prompts) -> Tensor[B]`` (the primary aspect); :meth:`scores` gives every aspect."""

    name = MODEL_TYPE
    differentiable = True

    def __init__(self, backbone, tokenizer, aspects: Sequence[str], primary: Optional[str] = None,
                 head_hidden: int = 0, image_size: Optional[int] = None, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD, max_length: Optional[int] = None, tokenizer_kind: str = "char",
                 input_image: bool = False):
        super().__init__()
        aspects = list(aspects)
        if not aspects or len(set(aspects)) != len(aspects):
            raise ValueError(f"model.aspects must be a non-empty list of distinct names, got {aspects}")
        primary = primary or ("overall" if "overall" in aspects else aspects[0])
        if primary not in aspects:
            raise ValueError(f"model.primary {primary!r} is not one of model.aspects {aspects}")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.aspects, self.primary, self.head_hidden = aspects, primary, int(head_hidden)
        self.tokenizer_kind = tokenizer_kind
        self.image_size = int(image_size or backbone.config.vision_config.image_size)
        self.max_length = int(max_length or backbone.config.text_config.max_position_embeddings)
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            buf = torch.tensor(list(value), dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer(name, buf, persistent=False)
        dim = backbone.config.projection_dim
        self.input_image = bool(input_image)
        self.heads = nn.ModuleDict({a: _head((6 if self.input_image else 3) * dim, self.head_hidden) for a in aspects})

    # ---- inputs ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    def pixel_values(self, images) -> torch.Tensor:
        """CLIP's transform in torch (shorter side resized, centre crop, normalise; differentiable).

        images: (B, 3, H, W) in [0, 1], PIL images (sizes may differ), or uint8 (B, H, W, 3).
        """
        pixels = as_pixels(images)
        mean, std = self.image_mean.flatten().tolist(), self.image_std.flatten().tolist()
        x = torch.cat([clip_preprocess(p.to(self.device, torch.float32), self.image_size, mean, std)
                       for p in (pixels if isinstance(pixels, list) else [pixels])])
        return x.to(next(self.backbone.parameters()).dtype)

    def tokenize(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        if self.tokenizer_kind == "char":
            ids = self.tokenizer(list(prompts))
            mask = (ids != self.tokenizer.pad).long()
            return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    # ---- scoring --------------------------------------------------------------------------------------
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised image embeddings of already preprocessed pixels (``pixel_values``)."""
        return F.normalize(_pooled(self.backbone.get_image_features(pixel_values=pixel_values)).float(), dim=-1)

    def image_embeds(self, images) -> torch.Tensor:
        return self.embed_pixels(self.pixel_values(images))

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        return F.normalize(_pooled(self.backbone.get_text_features(**self.tokenize(prompts))).float(), dim=-1)

    def head_scores(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                    input_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, A) scores from (B, D) normalised embeddings (what a frozen backbone lets training cache);
        ``input_embeds`` (the edited inputs') is required by, and only by, an ``input_image`` model."""
        if (input_embeds is not None) != self.input_image:
            raise ValueError(f"{MODEL_TYPE}: input image embeddings are "
                             + ("required (the model scores edits of an input)" if self.input_image
                                else "not used by a model without input_image"))
        parts = [image_embeds, text_embeds, image_embeds * text_embeds]
        if input_embeds is not None:
            change = image_embeds - input_embeds
            parts += [input_embeds, change, change * text_embeds]
        h = torch.cat(parts, dim=-1).to(next(self.heads.parameters()).dtype)
        return torch.cat([self.heads[a](h) for a in self.aspects], dim=-1).float()

    def input_embeds(self, images, items: Sequence[Any]) -> torch.Tensor:
        """(B, D) embeddings of the edit items' input images, each read at its edit's size."""
        from diffalign.rewards.editing_inputs import input_images
        pixels = as_pixels(images)
        if isinstance(pixels, torch.Tensor):
            values = self.pixel_values(input_images(items, tuple(pixels.shape[-2:]), self.device))
        else:  # PIL edits of different sizes: each input at its own edit's size
            values = torch.cat([self.pixel_values(input_images([it], tuple(p.shape[-2:]), self.device))
                                for it, p in zip(items, pixels)])
        with torch.no_grad():
            return self.embed_pixels(values)

    def scores(self, images, prompts: Optional[Sequence[Any]] = None) -> torch.Tensor:
        """(B, A): every aspect's score, in the order of ``self.aspects``. ``prompts`` are texts or prompt
        items (their text is scored); an ``input_image`` model needs edit items (module docstring)."""
        image_embeds = self.image_embeds(images)
        items = [""] * image_embeds.shape[0] if prompts is None else list(prompts)
        if len(items) != image_embeds.shape[0]:
            raise ValueError(f"{MODEL_TYPE}: {image_embeds.shape[0]} images but {len(items)} prompts")
        texts = [prompt_text(p) if isinstance(p, Mapping) else str(p) for p in items]
        inputs = self.input_embeds(images, items) if self.input_image else None
        return self.head_scores(image_embeds, self.text_embeds(texts), inputs)

    def forward(self, images, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        return self.scores(images, prompts)[:, self.aspects.index(self.primary)]

    # ---- backbone modes -------------------------------------------------------------------------------
    def set_backbone_mode(self, mode: str, lora_rank: int = 8, lora_alpha: float = 8.0,
                          lora_targets: Sequence[str] = ("q_proj", "v_proj")) -> None:
        if mode not in BACKBONE_MODES:
            raise ValueError(f"model.backbone_mode must be one of {BACKBONE_MODES}, got {mode!r}")
        self.backbone.requires_grad_(mode == "full")
        if mode == "lora":
            from peft import LoraConfig, get_peft_model
            cfg = LoraConfig(r=int(lora_rank), lora_alpha=float(lora_alpha), target_modules=list(lora_targets),
                             lora_dropout=0.0, init_lora_weights=True)
            self.backbone = get_peft_model(self.backbone, cfg)  # only the LoRA factors require grad
        self.backbone_mode = mode

    def plain_backbone(self):
        """The backbone as a plain CLIPModel, LoRA factors merged into a copy (the model is left as is)."""
        if hasattr(self.backbone, "merge_and_unload"):
            return copy.deepcopy(self.backbone).merge_and_unload()
        return self.backbone

    # ---- save / load ----------------------------------------------------------------------------------
    def save(self, directory: str, extra: Optional[Dict[str, Any]] = None) -> str:
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        backbone = self.plain_backbone()
        backbone.config.save_pretrained(os.path.join(directory, "backbone"))
        state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        state.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, os.path.join(directory, WEIGHTS_NAME))
        if self.tokenizer_kind != "char":
            self.tokenizer.save_pretrained(os.path.join(directory, "tokenizer"))
        meta = {"type": MODEL_TYPE, "format_version": 1, "aspects": self.aspects, "primary": self.primary,
                "head_hidden": self.head_hidden, "image_size": self.image_size,
                "image_mean": self.image_mean.flatten().tolist(), "image_std": self.image_std.flatten().tolist(),
                "tokenizer": "char" if self.tokenizer_kind == "char" else "tokenizer", "max_length": self.max_length,
                "input_image": self.input_image}
        meta.update(extra or {})
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        return directory


def build_model(backbone: str = "tiny", aspects: Sequence[str] = ("overall",), primary: Optional[str] = None,
                head_hidden: int = 0, tiny: Optional[Dict[str, Any]] = None, seed: int = 0,
                input_image: bool = False) -> PreferenceRewardModel:
    """A fresh reward model: ``backbone`` "tiny" (random, seeded; ``tiny`` overrides tiny_clip_config's
    arguments) or a hub id / local folder of a transformers CLIPModel with its tokenizer. ``input_image``:
    a model of edits (input image, instruction, edit), HIVE's reward model (module docstring)."""
    from transformers import CLIPModel
    if backbone == "tiny":
        from diffalign.data.tokenizers import CharTokenizer
        cfg = tiny_clip_config(**(tiny or {}))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = PreferenceRewardModel(CLIPModel(cfg), CharTokenizer(cfg.text_config.max_position_embeddings),
                                          aspects, primary, head_hidden, tokenizer_kind="char", input_image=input_image)
        return model
    from transformers import AutoTokenizer
    try:
        clip = CLIPModel.from_pretrained(backbone)
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    except (OSError, ValueError) as exc:
        raise missing_weights(f"model.backbone {backbone!r}", backbone,
                              "Give a local folder holding a transformers CLIPModel and its tokenizer (e.g. "
                              "`huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR`), or 'tiny'",
                              exc) from None
    mean, std = CLIP_MEAN, CLIP_STD
    pre = os.path.join(backbone, "preprocessor_config.json")
    if os.path.isfile(pre):  # a local checkpoint states its own normalisation
        with open(pre) as f:
            p = json.load(f)
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return PreferenceRewardModel(clip, tokenizer, aspects, primary, head_hidden, image_mean=mean, image_std=std,
                                     max_length=min(77, clip.config.text_config.max_position_embeddings),
                                     tokenizer_kind="hf", input_image=input_image)


def load_preference_model(directory: str, device=None, dtype=None, **kwargs) -> PreferenceRewardModel:
    """A model saved by :meth:`PreferenceRewardModel.save`, in eval mode. ``aspect=NAME`` makes
    ``forward`` score that aspect instead of the primary one."""
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel
    meta = read_reward_meta(directory, MODEL_TYPE, "diffalign reward train writes OUTPUT_DIR/reward", kwargs)
    cfg = CLIPConfig.from_pretrained(os.path.join(directory, "backbone"))
    if meta["tokenizer"] == "char":
        from diffalign.data.tokenizers import CharTokenizer
        tokenizer, kind = CharTokenizer(meta["max_length"]), "char"
    else:
        from transformers import AutoTokenizer
        tokenizer, kind = AutoTokenizer.from_pretrained(os.path.join(directory, meta["tokenizer"])), "hf"
    primary = kwargs.get("aspect") or meta["primary"]
    if primary not in meta["aspects"]:
        raise ValueError(f"aspect {primary!r} is not one of the model's aspects {meta['aspects']}")
    model = PreferenceRewardModel(CLIPModel(cfg), tokenizer, meta["aspects"], primary, meta["head_hidden"],
                                  meta["image_size"], meta["image_mean"], meta["image_std"], meta["max_length"], kind,
                                  input_image=bool(meta.get("input_image", False)))
    state = load_file(os.path.join(directory, WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids buffers differ between transformers versions; any other mismatch is a broken folder
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{directory}/{WEIGHTS_NAME} does not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


PREFERENCE_MODEL = RewardType(load_preference_model)  # reward type MODEL_TYPE in diffalign.registry.BUILTIN_REWARDS
