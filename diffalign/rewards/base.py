"""The ``Reward`` interface that model rewards share, and the image helpers they use.

A reward scores a batch: ``reward(images, prompts) -> Tensor[B]`` (float32, one score per image).
Images are float tensors (B, 3, H, W) with values in [0, 1] (what a modality's ``decode`` returns), or
a list of PIL images, or a uint8 array / tensor (B, H, W, 3) in [0, 255]; ``as_pixels`` converts
them. Preprocessing (resize, crop, normalise) runs in torch, so where the model is differentiable
(``reward.differentiable``) gradients flow back to the input images (ReFL / DRaFT / AlignProp use this).

A ``Reward`` is a ``torch.nn.Module``: ``reward.to(device, dtype)`` moves it, and inputs are moved to
the reward's device and dtype inside ``forward``. Model rewards are frozen (parameters do not require
grad) and in eval mode. Plain callables ``(samples, prompts) -> Tensor[B]`` (``registry.REWARDS``)
remain valid rewards everywhere; ``FunctionReward`` wraps one as a ``Reward``.
"""
from __future__ import annotations

import json
import os
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from diffalign.rewards.prompts import prompt_text

ImageBatch = Union[torch.Tensor, np.ndarray, Sequence["object"]]

# the CLIP image normalisation (OpenAI CLIP, open_clip and BLIP all use these constants)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

REWARD_CONFIG_FILE = "diffalign_reward.json"  # {"type": <registered reward type>, ...} in a reward directory


def read_reward_meta(directory: Optional[str], model_type: str, how_to_train: str, kwargs: dict) -> dict:
    """The saved metadata (REWARD_CONFIG_FILE) of a trained reward folder of ``model_type``, checked: the folder is
    given and holds the file, the file names this type, and ``kwargs`` hold only 'aspect' (the caller's choice)
    or the file's own fields (which load_reward passes back). ``how_to_train`` ends the error for a missing folder."""
    if directory is None:
        raise ValueError(f"a {model_type} reward is a trained folder: give its directory ({how_to_train})")
    path = os.path.join(directory, REWARD_CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{directory!r} is not a saved reward model: {REWARD_CONFIG_FILE} is missing")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("type") != model_type:
        raise ValueError(f"{path}: type is {meta.get('type')!r}, expected {model_type!r}")
    unknown = sorted(k for k in kwargs if k != "aspect" and k not in meta)
    if unknown:
        raise ValueError(f"a {model_type} reward accepts only the keyword 'aspect', got {unknown}")
    return meta


class MissingRewardWeights(FileNotFoundError):
    """A reward's checkpoint could not be found locally or fetched from the hub."""


def missing_weights(reward: str, source: str, how: str, cause: Optional[BaseException] = None) -> MissingRewardWeights:
    """The one error every reward raises when its weights are missing: names the source and how to provide it."""
    why = f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
    return MissingRewardWeights(f"{reward}: cannot load weights from {source!r}{why}. {how}")


def looks_like_path(source: str) -> bool:
    """True where ``source`` is meant as a local path rather than a hub id ('org/name')."""
    return (os.path.exists(source) or os.path.isabs(source) or source.startswith(("./", "../", "~"))
            or source.count("/") > 1 or source.endswith((".pt", ".pth", ".bin", ".safetensors", ".json")))


def as_pixels(images: ImageBatch) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Images as float (B, 3, H, W) in [0, 1]; a list of (1, 3, H, W) tensors where PIL sizes differ.

    Accepts a float tensor (B, 3, H, W) in [0, 1] (returned as is, so gradients flow), a single
    (3, H, W) tensor, a uint8 tensor / numpy array (B, H, W, 3), or a list of PIL images.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (B, H, W, 3), got shape {tuple(images.shape)}")
            return images.permute(0, 3, 1, 2).float() / 255.0
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"rewards want RGB images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        return images if images.is_floating_point() else images.float()
    if isinstance(images, (list, tuple)) and all(hasattr(im, "convert") for im in images):
        tensors = [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)[None]
                   .float() / 255.0 for im in images]
        if not tensors:
            raise ValueError("rewards got an empty list of images")
        if len({t.shape for t in tensors}) == 1:
            return torch.cat(tensors)
        return tensors
    raise ValueError(f"rewards want a float tensor (B, 3, H, W) in [0, 1], a uint8 array (B, H, W, 3) or a list "
                     f"of PIL images, got {type(images).__name__}")


def resize_center_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased, as PIL) and crop the centre square."""
    h, w = pixels.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        pixels = F.interpolate(pixels, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        pixels = pixels[..., top:top + size, left:left + size]
    return pixels


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - m) / s


def clip_preprocess(pixels: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """CLIP's image transform in torch: resize shorter side + centre crop to ``size``, clamp, normalise."""
    return normalize(resize_center_crop(pixels, size).clamp(0, 1), mean, std)


class Reward(torch.nn.Module):
    """Base class of model rewards. Subclasses set ``differentiable`` and implement ``preprocess`` and ``score``.

    ``forward(images, prompts)`` converts the images (``as_pixels``), moves them to the reward's
    device, preprocesses them in float32 (``preprocess``: (B, 3, H, W) in [0, 1] -> model input),
    casts to the reward's dtype and returns ``score(inputs, prompts)`` as float32 (B,).
    """

    name: str = "reward"
    differentiable: bool = True

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def score(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def freeze(self) -> "Reward":
        """Eval mode and no parameter gradients: rewards are critics, never trained by the aligner."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def forward(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        pixels = as_pixels(images)
        batch = pixels if isinstance(pixels, list) else [pixels]
        n = sum(p.shape[0] for p in batch)
        # score() reads texts: a mapping item (an edit, a molecule's pocket) gives its "text" (prompt_text); a
        # reward that needs the whole item (the input image of an edit) overrides forward
        prompts = [""] * n if prompts is None else [prompt_text(p) for p in prompts]
        if len(prompts) != n:
            raise ValueError(f"{self.name}: {n} images but {len(prompts)} prompts")
        dev = self.device
        inputs = torch.cat([self.preprocess(p.to(dev, torch.float32)) for p in batch]).to(self.dtype)
        out = self.score(inputs, prompts)
        if out.shape != (n,):
            raise RuntimeError(f"{self.name}: score returned shape {tuple(out.shape)}, expected ({n},)")
        return out.float()


class FunctionReward(Reward):
    """A plain callable ``(samples, prompts) -> Tensor[B]`` as a ``Reward`` (images passed as tensors)."""

    def __init__(self, fn: Callable, name: Optional[str] = None, differentiable: bool = False):
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        self.differentiable = differentiable

    def forward(self, images, prompts=None) -> torch.Tensor:
        pixels = as_pixels(images) if not isinstance(images, torch.Tensor) else images
        if isinstance(pixels, list):
            raise ValueError(f"{self.name}: images of different sizes; pass a tensor (B, 3, H, W)")
        prompts = [""] * pixels.shape[0] if prompts is None else list(prompts)
        return torch.as_tensor(self.fn(pixels, prompts)).float()


def as_reward(fn) -> Reward:
    """``fn`` as a ``Reward`` (returned as is if it already is one)."""
    return fn if isinstance(fn, Reward) else FunctionReward(fn)
