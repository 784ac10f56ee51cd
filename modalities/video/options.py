"""Options of the video modality (config section ``modality.options``)."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

ARCHITECTURES = ("animatediff", "wan")
LORA_LAYERS = ("motion", "image", "both")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class VideoOptions:
    # "tiny" (random tiny models built from configs), "demo" (the shipped pixel-space image demo model plus a
    # motion adapter), or a hub id / local diffusers pipeline folder (AnimateDiff: an SD 1.5 pipeline; Wan 2.1)
    model: str = "tiny"
    architecture: str = "animatediff"  # "animatediff" (UNet + MotionAdapter, epsilon/v) or "wan" (flow transformer)
    # animatediff only: the MotionAdapter (hub id or folder). Pretrained SD folders need one; "demo" starts from
    # a freshly initialised adapter (output projections zeroed) unless a folder of trained weights is given
    motion_adapter: Optional[str] = None
    resolution: int = 32               # frame side in pixels
    num_frames: int = 8                # frames per clip (wan: 1 + 4k, as its VAE compresses time by 4)
    lora_rank: int = 4                 # 0: full fine-tuning of lora_layers (the demo trains its motion modules so)
    lora_alpha: float = 4.0
    # animatediff: which layers train, "motion" (the temporal modules, as AnimateDiff trains them), "image" (the
    # image UNet's layers) or "both"; wan has no such split (every layer is spatio-temporal)
    lora_layers: str = "motion"
    # peft target names within those layers (a module matches when its dotted name equals a name or ends with
    # "." + name); None: the attention projections to_q/k/v/out.0
    lora_targets: Optional[List[str]] = None
    gradient_checkpointing: bool = False
    dtype: str = "float32"             # weights of the frozen parts (VAE, text encoder, base weights under LoRA)
    negative_prompt: str = ""
    seed: int = 0                      # initialisation of the tiny preset, a fresh motion adapter and LoRA
    # direct reward fine-tuning (VADER's decode_frame): decode_with_grad decodes only this many frames per clip,
    # drawn at random each call (sorted), so the VAE's activations for the reward's backward pass shrink with it;
    # animatediff only (its 2-D VAE decodes frames independently; wan's causal 3-D VAE does not); None: every frame
    reward_frames: Optional[int] = None
    # wan: the flow-matching shift of the sampling schedule; None: the pipeline's flow_shift (3.0 for 480p Wan 2.1,
    # its model card's value), 3.0 for the tiny preset
    flow_shift: Optional[float] = None
    # PYoCo's mixed noise (modalities/video/noise.py) on x_T: frames share alpha / (1 + alpha) of their initial
    # noise's variance (19: 95%), so a deterministic sampler (eta 0) starts every frame from nearly the same
    # noise and objects stay in place between frames. x_T only: step noise stays independent, so step
    # log-probs (DDPO/GRPO) are unchanged. None: independent frames
    frame_noise_alpha: Optional[float] = None

    def __post_init__(self):
        key = "config key 'modality.options."
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"{key}architecture' must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{key}dtype' must be one of {DTYPES}, got {self.dtype!r}")
        if self.lora_layers not in LORA_LAYERS:
            raise ValueError(f"{key}lora_layers' must be one of {LORA_LAYERS}, got {self.lora_layers!r}")
        if self.architecture == "wan" and self.lora_layers != "motion":
            raise ValueError(f"{key}lora_layers' applies to animatediff only (wan's layers are all spatio-temporal), "
                             f"got {self.lora_layers!r}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"{key}resolution' must be a multiple of 8, got {self.resolution}")
        if self.num_frames < 1:
            raise ValueError(f"{key}num_frames' must be >= 1, got {self.num_frames}")
        if self.architecture == "wan" and (self.num_frames - 1) % 4:
            raise ValueError(f"{key}num_frames' must be 1 + 4k for wan (its VAE compresses time by 4), "
                             f"got {self.num_frames}")
        if self.lora_rank < 0:
            raise ValueError(f"{key}lora_rank' must be >= 0, got {self.lora_rank}")
        if self.lora_targets is not None and (not self.lora_targets or not all(
                isinstance(t, str) and t.strip() for t in self.lora_targets)):
            raise ValueError(f"{key}lora_targets' must be a non-empty list of module names (or null for the "
                             f"attention projections), got {self.lora_targets!r}")
        if self.flow_shift is not None and (self.architecture != "wan" or not self.flow_shift > 0):
            raise ValueError(f"{key}flow_shift' is a positive number for wan only, got {self.flow_shift!r} with "
                             f"architecture {self.architecture!r}")
        if self.frame_noise_alpha is not None and (isinstance(self.frame_noise_alpha, bool) or not isinstance(
                self.frame_noise_alpha, (int, float)) or not 0 <= self.frame_noise_alpha < float("inf")):
            raise ValueError(f"{key}frame_noise_alpha' must be a finite number >= 0 (or null: independent frames), "
                             f"got {self.frame_noise_alpha!r}")
        if self.model == "demo":
            if self.architecture != "animatediff" or self.resolution != 32:
                raise ValueError(f"{key}model' 'demo' is the 32x32 pixel-space animatediff preset, got architecture "
                                 f"{self.architecture!r}, resolution {self.resolution}")
        if self.reward_frames is not None and (self.architecture != "animatediff" or isinstance(self.reward_frames, bool)
                                               or not 1 <= self.reward_frames <= self.num_frames):
            raise ValueError(f"{key}reward_frames' is a frame count in [1, num_frames = {self.num_frames}] for "
                             f"animatediff only, got {self.reward_frames!r} with architecture {self.architecture!r}")
        if self.motion_adapter is not None and self.architecture != "animatediff":
            raise ValueError(f"{key}motion_adapter' applies to animatediff only, got {self.motion_adapter!r}")
        for name in ("model", "motion_adapter"):
            value = getattr(self, name)
            if value is None or value in ("tiny", "demo"):
                continue
            looks_local = value.startswith((".", "/", "~")) or os.sep in value and value.count("/") > 1
            if looks_local and not os.path.isdir(os.path.expanduser(value)):
                raise ValueError(f"{key}{name}': path {value!r} does not exist")
