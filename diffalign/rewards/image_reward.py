"""ImageReward (Xu et al. 2023): BLIP ViT-L image encoder, a BERT text encoder that cross-attends to the image
tokens, and an MLP on the text [CLS] feature; the raw score is normalised with fixed constants.

Published checkpoint: ``THUDM/ImageReward`` on the hub, files ``ImageReward.pt`` (a plain state dict) and
``med_config.json`` (the BERT config; its ``encoder_width`` is replaced by the ViT width 1024). Its keys:

- ``blip.visual_encoder.*``: BLIP's timm-style ViT-L/16 at 224 px (``cls_token``, ``pos_embed``,
  ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``; LayerNorm eps 1e-6);
- ``blip.text_encoder.*``: BLIP's BERT with cross-attention (``embeddings.*``, ``encoder.layer.N.{attention,
  crossattention,intermediate,output}.*``), the same names transformers' ``BlipTextModel`` uses;
- ``mlp.layers.{0,2,4,6,7}.*``: Linear 768-1024-128-64-16-1 with dropout and no activations;
- ``blip.vision_proj`` / ``blip.text_proj`` (BLIP's ITC heads, unused for the reward, dropped here as the
  original loads with strict=False).

Here the ViT is transformers' ``BlipVisionModel`` (same computation: pre-norm blocks, fused qkv, GELU, final
LayerNorm) with the keys mapped by ``published_to_ours``, the text encoder ``BlipTextModel`` used as a
bidirectional encoder (``is_decoder=False``), and the head ``ScoreMLP``. Scoring follows the reference
``ImageReward.score``: BERT tokenizer (bert-base-uncased plus BLIP's added [DEC] / [ENC] tokens), padding to
35 tokens, the [CLS] token left in place, ``(mlp(h_cls) - 0.16717362830052426) / 1.0333394966054072``; images
resized (bicubic) and centre-cropped to 224 and normalised with the CLIP mean / std.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional

import torch

from diffalign.registry import RewardType
from diffalign.rewards.aesthetic import ScoreMLP
from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, Reward, clip_preprocess
from diffalign.rewards.clip_models import (checkpoint_file, from_pretrained, how_to_download, load_state_dict_file,
                                           resolve)
from diffalign.rewards.loading import write_reward_config

DEFAULT_MODEL = "THUDM/ImageReward"
CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
DEFAULT_TOKENIZER = "bert-base-uncased"
REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py's normalisation constants
MAX_LENGTH = 35
# BLIP's ViT-L/16 at 224 px (create_vit('large', 224) in BLIP)
VIT_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=224, patch_size=16)

# published (timm-style BLIP ViT) -> ours (transformers BlipVisionModel), applied to the key after the prefix
_VISION_RULES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embedding.\1"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.(fc[12])\.", r"encoder.layers.\1.mlp.\2."),
    (r"^norm\.(weight|bias)$", r"post_layernorm.\1"),
]
_VISION_INVERSE = [
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.position_embedding$", "pos_embed"),
    (r"^embeddings\.patch_embedding\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^post_layernorm\.(weight|bias)$", r"norm.\1"),
]
_IGNORED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids", "blip.itm_head.")


def _apply(rules, key: str) -> Optional[str]:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def published_to_ours(key: str) -> Optional[str]:
    """Our parameter name for a published ImageReward.pt key; None for keys the reward does not use."""
    if key.startswith(_IGNORED):
        return None
    if key.startswith("blip.visual_encoder."):
        new = _apply(_VISION_RULES, key[len("blip.visual_encoder."):])
        return None if new is None else "vision." + new
    if key.startswith("blip.text_encoder."):
        return "text." + key[len("blip.text_encoder."):]
    if key.startswith("mlp."):
        return key
    return None


def ours_to_published(key: str) -> str:
    if key.startswith("vision."):
        new = _apply(_VISION_INVERSE, key[len("vision."):])
        if new is None:
            raise KeyError(f"no published name for {key}")
        return "blip.visual_encoder." + new
    if key.startswith("text."):
        return "blip.text_encoder." + key[len("text."):]
    return key


def text_config_from_med(med: Dict[str, Any], vision_width: int):
    """transformers BlipTextConfig for BLIP's med_config.json (encoder_width := the ViT width, as BLIP does)."""
    from transformers import BlipTextConfig
    return BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
                          encoder_hidden_size=vision_width, intermediate_size=med["intermediate_size"],
                          num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
                          max_position_embeddings=med["max_position_embeddings"],
                          hidden_act=med.get("hidden_act", "gelu"), layer_norm_eps=med.get("layer_norm_eps", 1e-12),
                          hidden_dropout_prob=med.get("hidden_dropout_prob", 0.0),
                          attention_probs_dropout_prob=med.get("attention_probs_dropout_prob", 0.0),
                          pad_token_id=med.get("pad_token_id", 0), bos_token_id=None, sep_token_id=None,
                          # is_decoder builds the cross-attention layers; forward(is_decoder=False) keeps the
                          # self-attention bidirectional, as BLIP's text encoder in "multimodal" mode
                          eos_token_id=None, is_decoder=True)


def init_tokenizer(source: str, local_files_only: bool = False):
    """BLIP's tokenizer: BERT (uncased) plus bos [DEC] and the additional special token [ENC]."""
    from transformers import BertTokenizer
    tok = from_pretrained(BertTokenizer, source, "image_reward", how_to_download(source, "tokenizer"),
                          local_files_only=local_files_only)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageReward(Reward):
    name = "image_reward"
    reward_type = "image_reward"
    differentiable = True

    def __init__(self, med_config: Dict[str, Any], tokenizer, vision: Optional[Dict[str, Any]] = None,
                 mean: float = REWARD_MEAN, std: float = REWARD_STD, max_length: int = MAX_LENGTH):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel
        self.med_config, self.vision_config = dict(med_config), {**VIT_LARGE, **(vision or {})}
        vcfg = BlipVisionConfig(**self.vision_config, layer_norm_eps=1e-6, hidden_act="gelu", attention_dropout=0.0)
        self.vision = BlipVisionModel(vcfg)
        self.text = BlipTextModel(text_config_from_med(med_config, vcfg.hidden_size), add_pooling_layer=False)
        self.mlp = ScoreMLP(med_config["hidden_size"])
        self.tokenizer = tokenizer
        self.mean, self.std, self.max_length = float(mean), float(std), int(max_length)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(pixels, self.vision_config["image_size"], CLIP_MEAN, CLIP_STD)

    def text_features(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        """The [CLS] hidden state of the text encoder cross-attending to the image tokens (B, 768)."""
        image_embeds = self.vision(pixel_values=inputs).last_hidden_state
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        dev = self.device
        out = self.text(input_ids=tok["input_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev),
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts, is_decoder=False)
        return out.last_hidden_state[:, 0, :]

    def score(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        return ((self.mlp(self.text_features(inputs, prompts)) - self.mean) / self.std).squeeze(-1)

    def published_state_dict(self) -> Dict[str, torch.Tensor]:
        return {ours_to_published(k): v.detach().cpu() for k, v in self.state_dict().items()}

    def load_published_state_dict(self, sd: Dict[str, torch.Tensor], source: str = "ImageReward.pt") -> None:
        """Load ImageReward.pt's keys (see module doc); ValueError listing keys that are missing or unknown."""
        sd = sd.get("state_dict", sd.get("model", sd))
        mapped, unknown = {}, []
        for k, v in sd.items():
            k = k[len("module."):] if k.startswith("module.") else k
            new = published_to_ours(k)
            if new is None:
                if not k.startswith(_IGNORED):
                    unknown.append(k)
                continue
            mapped[new] = v
        missing = sorted(set(self.state_dict()) - set(mapped))
        if missing or unknown:
            raise ValueError(f"{source}: not an ImageReward checkpoint for this architecture: missing keys "
                             f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unknown keys {unknown[:8]}")
        self.load_state_dict(mapped, strict=True)

    def save_pretrained(self, directory: str) -> str:
        """ImageReward.pt + med_config.json (the published layout), tokenizer files and diffalign_reward.json."""
        os.makedirs(directory, exist_ok=True)
        torch.save(self.published_state_dict(), os.path.join(directory, CHECKPOINT_FILE))
        with open(os.path.join(directory, MED_CONFIG_FILE), "w") as f:
            json.dump({**self.med_config, "encoder_width": self.vision_config["hidden_size"]}, f, indent=2)
        self.tokenizer.save_pretrained(directory)
        extra = {"vision": self.vision_config} if self.vision_config != VIT_LARGE else {}
        return write_reward_config(directory, self.reward_type, **extra)


def load_image_reward(directory: Optional[str], device=None, dtype=None, model: Optional[str] = None,
                      tokenizer: Optional[str] = None, vision: Optional[Dict[str, Any]] = None,
                      mean: float = REWARD_MEAN, std: float = REWARD_STD,
                      local_files_only: bool = False) -> ImageReward:
    """ImageReward from ``model``: a folder with ImageReward.pt + med_config.json, the .pt file itself (med_config.json
    beside it), or a hub repo (default THUDM/ImageReward). ``tokenizer``: the folder's own tokenizer files if it has
    them, else bert-base-uncased. ``vision``: ViT dims when not BLIP's ViT-L/16 (tiny test models)."""
    source = resolve(directory, model) or directory or DEFAULT_MODEL
    how = how_to_download(DEFAULT_MODEL if source == DEFAULT_MODEL else source)
    ckpt = checkpoint_file(source, CHECKPOINT_FILE, "image_reward", how, local_files_only)
    med_src = os.path.dirname(ckpt) if os.path.isfile(source) else source
    med_path = checkpoint_file(med_src, MED_CONFIG_FILE, "image_reward", how, local_files_only)
    with open(med_path) as f:
        med = json.load(f)
    if tokenizer is None:
        folder = os.path.dirname(ckpt)
        has_tok = any(os.path.isfile(os.path.join(folder, f)) for f in ("vocab.txt", "tokenizer.json"))
        tokenizer = folder if has_tok else DEFAULT_TOKENIZER
    reward = ImageReward(med, init_tokenizer(resolve(directory, tokenizer), local_files_only), vision=vision,
                         mean=mean, std=std)
    reward.load_published_state_dict(load_state_dict_file(ckpt), ckpt)
    return reward


IMAGE_REWARD = RewardType(load_image_reward)  # registered as 'image_reward' in diffalign.registry.BUILTIN_REWARDS
