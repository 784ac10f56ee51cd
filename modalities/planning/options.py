"""The planning modality's ``modality.options`` (checked by the config before any compute)."""
from __future__ import annotations

import dataclasses
from typing import List, Optional


@dataclasses.dataclass
class PlanningOptions:
    env: str = "Hopper-v5"            # Hopper-v5 | Walker2d-v5 | HalfCheetah-v5
    model: str = "tiny"               # "tiny" (random, from architecture) or a folder saved by save_pretrained
    architecture: str = "unet1d"      # tiny preset: "unet1d" (Diffuser's temporal U-Net) or "dit" (AlignDiff's)
    horizon: int = 16
    attributes: List[str] = dataclasses.field(default_factory=list)  # requestable attribute names (tiny)
    dataset: Optional[str] = None     # tiny: fit the normaliser to this D4RL/Minari file (else identity)
    num_train_timesteps: int = 100
    prediction_type: str = "epsilon"  # "epsilon" | "sample" (Diffuser predicts x0)
    init_seed: int = 0

    def __post_init__(self):
        from diffalign.modalities.planning.adapter import PREDICTION_TYPES
        from diffalign.modalities.planning.denoisers import DENOISER_ARCHITECTURES
        from diffalign.modalities.planning.env import ENV_SPECS
        if self.env not in ENV_SPECS:
            raise ValueError(f"config key 'modality.options.env' must be one of {sorted(ENV_SPECS)}, got {self.env!r}")
        if self.architecture not in DENOISER_ARCHITECTURES:
            raise ValueError(f"config key 'modality.options.architecture' must be one of {DENOISER_ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"config key 'modality.options.prediction_type' must be one of {PREDICTION_TYPES}, "
                             f"got {self.prediction_type!r}")
        if self.architecture == "unet1d" and (self.horizon < 2 or self.horizon % 2):
            raise ValueError(f"config key 'modality.options.horizon' must be even and >= 2 for the U-Net "
                             f"(it halves the horizon once), got {self.horizon}")
        if self.horizon < 2:
            raise ValueError(f"config key 'modality.options.horizon' must be >= 2, got {self.horizon}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"config key 'modality.options.num_train_timesteps' must be >= 2, "
                             f"got {self.num_train_timesteps}")
        if not isinstance(self.attributes, list) or not all(isinstance(a, str) for a in self.attributes):
            raise ValueError(f"config key 'modality.options.attributes' must be a list of names, "
                             f"got {self.attributes!r}")
