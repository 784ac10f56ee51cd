"""Options of the threed modality (config section ``modality.options``).

``prior`` holds the image modality's options (``modality.options.prior.*``: model ``demo``, ``tiny``, a hub id or a
folder, LoRA settings); ``prior_lora`` a folder of LoRA weights that diffalign trained for that prior
(``final/`` of an image run: pytorch_lora_weights.safetensors), loaded into it with ``prior.lora_rank`` /
``prior.lora_targets`` as they were trained. The rest configures the radiance field, its renderer and the random
cameras (degrees; scene units for bound and distance).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

ENCODINGS = ("frequency", "hash")
IMPLEMENTATIONS = ("torch", "tcnn")
BACKGROUNDS = ("white", "black", "random")
KEY = "config key 'modality.options."


def _range(name: str, value, low: float, high: float) -> None:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        raise ValueError(f"{KEY}{name}' must be a [low, high] pair of numbers, got {value!r}")
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{KEY}{name}' must satisfy {low} <= low <= high <= {high}, got {list(value)!r}")


@dataclasses.dataclass
class ThreeDOptions:
    prior: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"model": "demo"})
    prior_lora: Optional[str] = None
    # the field (nerfstudio encodings and MLPs)
    encoding: str = "frequency"            # "frequency" (NeRFEncoding) or "hash" (HashEncoding, Instant-NGP)
    num_frequencies: int = 6
    hash_levels: int = 8
    hash_max_res: int = 128
    log2_hashmap_size: int = 15
    hidden: int = 64
    num_layers: int = 2
    features: int = 16
    implementation: str = "torch"          # nerfstudio's "torch" path (CPU and GPU) or "tcnn" (tiny-cuda-nn, GPU)
    blob_density: float = 5.0              # the density bump at the centre at initialisation (0: none)
    blob_radius: float = 0.5
    bound: float = 1.0                     # the scene cube [-bound, bound]^3
    # the renderer
    render_resolution: Optional[int] = None  # render side in pixels; None: the prior's resolution (else resized)
    num_samples: int = 32                  # samples per ray
    background: Any = "white"              # "white", "black", "random" (one colour per render) or [r, g, b]
    # the random cameras
    azimuth: List[float] = dataclasses.field(default_factory=lambda: [-180.0, 180.0])
    elevation: List[float] = dataclasses.field(default_factory=lambda: [0.0, 30.0])
    distance: List[float] = dataclasses.field(default_factory=lambda: [2.5, 3.0])
    fov: List[float] = dataclasses.field(default_factory=lambda: [40.0, 50.0])
    view_dependent: bool = True            # "<prompt>, front view" / "side view" / "back view" (DreamFusion)
    overhead_elevation: Optional[float] = None  # above this elevation the view is "overhead view"; None: never

    def __post_init__(self):
        if not isinstance(self.prior, dict):
            raise ValueError(f"{KEY}prior' must be a mapping of image modality options, got {self.prior!r}")
        self.prior_options()  # checked now, with its keys named
        if self.prior_lora is not None and not os.path.isdir(os.path.expanduser(self.prior_lora)):
            raise ValueError(f"{KEY}prior_lora': {self.prior_lora!r} is not a folder")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"{KEY}encoding' must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"{KEY}implementation' must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")
        for name in ("num_frequencies", "hash_levels", "hash_max_res", "log2_hashmap_size", "hidden", "num_layers",
                     "features", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{KEY}{name}' must be >= 1, got {getattr(self, name)!r}")
        if self.blob_density < 0 or self.blob_radius <= 0 or self.bound <= 0:
            raise ValueError(f"{KEY}blob_density' must be >= 0 and 'blob_radius' / 'bound' > 0, got "
                             f"{self.blob_density!r} / {self.blob_radius!r} / {self.bound!r}")
        if self.render_resolution is not None and self.render_resolution < 4:
            raise ValueError(f"{KEY}render_resolution' must be >= 4, got {self.render_resolution!r}")
        if isinstance(self.background, str):
            if self.background not in BACKGROUNDS:
                raise ValueError(f"{KEY}background' must be one of {BACKGROUNDS} or [r, g, b], got {self.background!r}")
        elif not (isinstance(self.background, (list, tuple)) and len(self.background) == 3
                  and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in self.background)):
            raise ValueError(f"{KEY}background' must be one of {BACKGROUNDS} or [r, g, b] in [0, 1], "
                             f"got {self.background!r}")
        _range("azimuth", self.azimuth, -360.0, 360.0)
        _range("elevation", self.elevation, -90.0, 90.0)
        _range("fov", self.fov, 1.0, 179.0)
        _range("distance", self.distance, 0.0, float("inf"))
        if self.distance[0] <= self.bound * 3 ** 0.5:
            raise ValueError(f"{KEY}distance' must keep cameras outside the scene (low > bound * sqrt(3) = "
                             f"{self.bound * 3 ** 0.5:.3f}), got {list(self.distance)!r}")

    def prior_options(self):
        """``prior`` as the image modality's options (errors name ``modality.options.prior.<key>``)."""
        from diffalign.modalities.image.options import ImageOptions
        known = {f.name for f in dataclasses.fields(ImageOptions)}
        unknown = sorted(set(self.prior) - known)
        if unknown:
            raise ValueError(f"unknown config key 'modality.options.prior.{unknown[0]}'; the prior takes the image "
                             f"modality's options {sorted(known)}")
        try:
            return ImageOptions(**self.prior)
        except ValueError as exc:
            raise ValueError(str(exc).replace("'modality.options.", "'modality.options.prior.")) from None
