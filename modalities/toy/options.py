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


@dataclasses.dataclass
class ToyPointsOptions:
    """``modality.options`` of toy_points (point sets of min_points..max_points points in R^3)."""

    max_points: int = 6
    min_points: int = 2
    hidden: int = 64
    scheduler: str = "ddpm"      # "ddim" | "ddpm"
    init_seed: int = 0
    pretrain_steps: int = 200

    def __post_init__(self):
        from diffalign.modalities.toy.points import POINT_SCHEDULERS
        if self.scheduler not in POINT_SCHEDULERS:
            raise ValueError(f"config key 'modality.options.scheduler' must be one of {POINT_SCHEDULERS}, "
                             f"got {self.scheduler!r}")
        if not 2 <= self.min_points <= self.max_points:
            raise ValueError(f"config keys 'modality.options.min_points'/'max_points' need 2 <= min_points <= "
                             f"max_points, got {self.min_points}/{self.max_points}")
        if self.hidden < 1:
            raise ValueError(f"config key 'modality.options.hidden' must be >= 1, got {self.hidden}")


@dataclasses.dataclass
class ToyDualOptions(ToyOptions):
    """``modality.options`` of toy_dual: the toy's, plus the source guidance scale s_I."""

    image_guidance_scale: float = 1.5

    def __post_init__(self):
        super().__post_init__()
        if not self.image_guidance_scale >= 0:
            raise ValueError(f"config key 'modality.options.image_guidance_scale' must be >= 0, "
                             f"got {self.image_guidance_scale}")
