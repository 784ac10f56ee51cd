"""The shipped tiny InstructPix2Pix-style editor: the image demo model with the input image as 3 more UNet inputs.

Pixel space, as the image demo (:mod:`diffalign.modalities.image.demo_model`): no VAE, so the input image's
"latents" are the input image itself scaled to [-1, 1], concatenated channel-wise after the noisy sample (6 UNet
input channels, InstructPix2Pix's layout: sample first, then image latents). The unconditional image of dual
classifier-free guidance is zeros, as InstructPix2Pix's null image latents.

:func:`editor_from_image_demo` builds the untrained editor as InstructPix2Pix (Brooks et al. 2023, section 3.2)
initialises one from a text-to-image model: ``conv_in`` widened with zero weights on the new input channels (so
the widened UNet computes exactly what the text-to-image one did), and the tokenizer and text embedding extended
with the instruction words the shapes captions lack (new rows appended, so every old token keeps its id and row).

Folder layout (``save_editing_demo_model`` / ``load_editing_demo_model``; :data:`EDITING_DEMO_MODEL_DIR` is the
shipped copy): ``unet/``, ``text_encoder/``, ``scheduler/`` (diffusers / transformers folders), ``tokenizer.json``
(WordTokenizer) and ``diffalign_editing_demo.json`` (marker + metadata: command, seed, steps, wall time, CPU, load).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

import diffalign
from diffalign.modalities.image.demo_model import RESOLUTION, WordTokenizer, load_model_folder, save_model_folder

EDITING_DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(diffalign.__file__)), "assets",
                                      "editing_demo_model")
MARKER = "diffalign_editing_demo.json"
IMAGE_CHANNELS = 3  # RGB input image, scaled to [-1, 1]

__all__ = ["EDITING_DEMO_MODEL_DIR", "MARKER", "RESOLUTION", "IMAGE_CHANNELS", "image_latents",
           "editor_from_image_demo", "save_editing_demo_model", "load_editing_demo_model",
           "is_editing_demo_model_dir", "resolve_editing_demo_path"]


def image_latents(images: torch.Tensor) -> torch.Tensor:
    """The editor's image condition of images (B, 3, H, W) in [0, 1]: the pixels scaled to [-1, 1]."""
    if images.dim() != 4 or images.shape[1] != IMAGE_CHANNELS:
        raise ValueError(f"image_latents: expected images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    return images * 2 - 1


def _widen_conv_in(unet, extra: int):
    """A copy of ``unet`` whose conv_in takes ``extra`` more input channels, their weights zero."""
    from diffusers import UNet2DConditionModel

    config = dict(unet.config)
    config["in_channels"] = unet.config.in_channels + extra
    wide = UNet2DConditionModel.from_config(config)
    state = dict(unet.state_dict())
    old = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([old, old.new_zeros(old.shape[0], extra, *old.shape[2:])], dim=1)
    wide.load_state_dict(state)
    return wide


def _extend_vocabulary(text_encoder, tokenizer: WordTokenizer, words: Sequence[str], seed: int):
    """(text_encoder, tokenizer) knowing ``words`` too: appended ids, new embedding rows drawn like the old ones
    (normal with the old rows' mean and std, seeded), old rows unchanged."""
    new_words = [w for w in dict.fromkeys(words) if w not in tokenizer.vocab]
    old_words = sorted(tokenizer.vocab, key=tokenizer.vocab.get)[4:]  # after the 4 special tokens
    extended = WordTokenizer(old_words + new_words, tokenizer.model_max_length)
    emb = text_encoder.get_input_embeddings().weight.data
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(new_words), emb.shape[1], generator=gen) * emb.std() + emb.mean(0)
    text_encoder.resize_token_embeddings(extended.vocab_size, mean_resizing=False)
    text_encoder.get_input_embeddings().weight.data[emb.shape[0]:] = rows
    text_encoder.config.vocab_size = extended.vocab_size
    return text_encoder, extended


def editor_from_image_demo(words: Sequence[str], image_demo_dir: Optional[str] = None, seed: int = 0):
    """(unet, text_encoder, tokenizer, scheduler) of the untrained editor, from the shipped image demo model."""
    from diffalign.modalities.image.demo_model import DEMO_MODEL_DIR, load_demo_model

    unet, text_encoder, tokenizer, scheduler, _ = load_demo_model(image_demo_dir or DEMO_MODEL_DIR)
    unet = _widen_conv_in(unet, IMAGE_CHANNELS)
    text_encoder, tokenizer = _extend_vocabulary(text_encoder, tokenizer, words, seed)
    return unet, text_encoder, tokenizer, scheduler


def save_editing_demo_model(directory: str, unet, text_encoder, tokenizer: WordTokenizer, scheduler,
                            metadata: Optional[dict] = None) -> None:
    save_model_folder(directory, unet, text_encoder, tokenizer, scheduler, metadata, MARKER)


def is_editing_demo_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(path), MARKER))


def resolve_editing_demo_path(model: str) -> Optional[str]:
    """``"demo"`` -> the shipped folder; a folder holding the marker file -> itself; else None."""
    if model == "demo":
        return EDITING_DEMO_MODEL_DIR
    path = os.path.expanduser(model)
    return path if os.path.isdir(path) and is_editing_demo_model_dir(path) else None


def load_editing_demo_model(directory: str = EDITING_DEMO_MODEL_DIR):
    """(unet, text_encoder, tokenizer, scheduler, metadata) from a saved folder (offline), in eval mode."""
    unet, text_encoder, tokenizer, scheduler, metadata = load_model_folder(
        directory, MARKER, "editing demo model", "scripts/train_editing_demo_model.py")
    if unet.config.in_channels != unet.config.out_channels + IMAGE_CHANNELS:
        raise ValueError(f"{directory}/unet/config.json: in_channels {unet.config.in_channels} must be "
                         f"out_channels {unet.config.out_channels} + {IMAGE_CHANNELS} image channels")
    return unet, text_encoder, tokenizer, scheduler, metadata
