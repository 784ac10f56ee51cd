"""Options of the image modality (config section ``modality.options``)."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

ARCHITECTURES = ("sd", "sdxl", "sd3")
DTYPES = ("float32", "bfloat16", "float16")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclasses.dataclass
class ImageOptions:
    model: str = "tiny"              # "tiny" (random tiny models built from configs), a hub id or a local path
    architecture: str = "sd"         # "sd" (SD 1.x/2.x UNet), "sdxl" (UNet + pooled/time ids), "sd3" (flow transformer)
    resolution: int = 32             # image side in pixels
    lora_rank: int = 4               # 0: full fine-tuning
    lora_alpha: float = 4.0
    # modules that get LoRA adapters, as peft target names (a module matches when its dotted name equals a
    # name or ends with "." + name); None: the attention projections to_q/k/v/out.0 (what SD LoRAs train).
    # The demo model has one 8x8 cross-attention block, so its configs also adapt the convolutions.
    lora_targets: Optional[List[str]] = None
    gradient_checkpointing: bool = False
    dtype: str = "float32"           # weights of the frozen parts (VAE, text encoders, base weights under LoRA)
    negative_prompt: str = ""
    seed: int = 0                    # initialisation of the tiny preset and of the LoRA weights
    # tiny UNet preset only: its scheduler's prediction type (default "epsilon"); a pretrained model keeps its own.
    # A random v-prediction UNet samples x0 of std ~0.8 that follows its output; a random epsilon UNet's x0 has
    # std ~9, dominated by amplified noise (see tiny.tiny_components), which rewards barely let it move.
    prediction_type: Optional[str] = None
    # torch.compile the denoiser in place (nn.Module.compile: state-dict keys and LoRA saving unchanged). At
    # SD sizes the UNet is most of a step's time, so this, not the fused step ops, is what can speed a loop up.
    compile: bool = False
    compile_backend: str = "inductor"  # any torch._dynamo backend; "aot_eager" checks tracing without codegen
    compile_mode: Optional[str] = None  # inductor only: "default", "reduce-overhead", "max-autotune", ...

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"config key 'modality.options.architecture' must be one of {ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"config key 'modality.options.dtype' must be one of {DTYPES}, got {self.dtype!r}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"config key 'modality.options.resolution' must be a multiple of 8, got {self.resolution}")
        if self.lora_rank < 0:
            raise ValueError(f"config key 'modality.options.lora_rank' must be >= 0, got {self.lora_rank}")
        if self.lora_targets is not None and (not self.lora_targets or not all(
                isinstance(t, str) and t.strip() for t in self.lora_targets)):
            raise ValueError("config key 'modality.options.lora_targets' must be a non-empty list of module names "
                             f"(or null for the attention projections), got {self.lora_targets!r}")
        if self.prediction_type is not None:
            if self.prediction_type not in PREDICTION_TYPES:
                raise ValueError(f"config key 'modality.options.prediction_type' must be one of {PREDICTION_TYPES}, "
                                 f"got {self.prediction_type!r}")
            if self.model != "tiny" or self.architecture == "sd3":
                raise ValueError("config key 'modality.options.prediction_type' applies to the tiny UNet preset only "
                                 f"(model 'tiny', architecture 'sd' or 'sdxl'), got {self.prediction_type!r} with "
                                 f"model {self.model!r}, architecture {self.architecture!r}")
        if self.compile:
            import torch._dynamo as dynamo
            backends = dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in backends:
                raise ValueError(f"config key 'modality.options.compile_backend' must be one of {sorted(backends)}, "
                                 f"got {self.compile_backend!r}")
            if self.compile_mode is not None and self.compile_backend != "inductor":
                raise ValueError("config key 'modality.options.compile_mode' applies to the inductor backend only, "
                                 f"got {self.compile_mode!r} with backend {self.compile_backend!r}")
        looks_local = self.model.startswith((".", "/", "~")) or os.sep in self.model and self.model.count("/") > 1
        if self.model != "tiny" and looks_local and not os.path.isdir(os.path.expanduser(self.model)):
            raise ValueError(f"config key 'modality.options.model': model path {self.model!r} does not exist")
