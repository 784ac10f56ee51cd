"""The molecule modality's ``modality.options`` (checked by the config before any compute)."""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass
class MoleculeOptions:
    """``model``: "tiny" (a random EGNN from the sizes below) or a folder with config.json + model.safetensors.
    A size left None keeps the model's own (the tiny preset's, or the folder config's)."""

    model: str = "tiny"
    init_seed: int = 0
    dtype: str = "float32"              # "float32" | "float64"
    hidden: Optional[int] = None
    layers: Optional[int] = None
    max_atoms: Optional[int] = None
    min_atoms: Optional[int] = None
    max_pocket_atoms: Optional[int] = None
    pocket_radius: Optional[float] = None
    pretrain_steps: int = 0             # fit the model to fragments in the prompts' pockets first (pretrain.py)

    def __post_init__(self):
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"config key 'modality.options.dtype' must be 'float32' or 'float64', got {self.dtype!r}")
        for key in ("hidden", "layers", "max_atoms", "min_atoms", "max_pocket_atoms"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"config key 'modality.options.{key}' must be an integer >= 1, got {value!r}")
        if isinstance(self.pretrain_steps, bool) or not isinstance(self.pretrain_steps, int) or self.pretrain_steps < 0:
            raise ValueError(f"config key 'modality.options.pretrain_steps' must be an integer >= 0, "
                             f"got {self.pretrain_steps!r}")
        if self.pocket_radius is not None and not self.pocket_radius > 0:
            raise ValueError(f"config key 'modality.options.pocket_radius' must be > 0, got {self.pocket_radius!r}")
        if self.min_atoms is not None and self.max_atoms is not None and self.min_atoms > self.max_atoms:
            raise ValueError(f"config keys 'modality.options.min_atoms'/'max_atoms' need min_atoms <= max_atoms, "
                             f"got {self.min_atoms}/{self.max_atoms}")

    def overrides(self):
        """The model-config keys this config sets."""
        keys = ("hidden", "layers", "max_atoms", "min_atoms", "max_pocket_atoms", "pocket_radius")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
