"""The toy modality's ``modality.options`` (checked by the config before any compute)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ToyOptions:
    dim: int = 2
    hidden: int = 64
    scheduler: str = "ddim"      # "ddim" | "ddpm" | "flow"
    init_seed: int = 0
    pretrain_steps: int = 200    # fit the base model to N(0, I) first (a stand-in for pretraining)

    def __post_init__(self):
        from diffalign.modalities.toy.adapter import SCHEDULERS
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"config key 'modality.options.scheduler' must be one of {SCHEDULERS}, "
                             f"got {self.scheduler!r}")
        if self.dim < 1 or self.hidden < 1:
            raise ValueError(f"config keys 'modality.options.dim'/'hidden' must be >= 1, got {self.dim}/{self.hidden}")
