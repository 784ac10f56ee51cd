"""The threed modality: text-to-3D by score distillation of a radiance field (nerfstudio components) against a
frozen text-to-image prior (the image modality's adapter). nerfstudio comes with the ``threed`` extra
(scripts/install.sh) and is imported only when a field is built or rendered."""
from diffalign.modalities.threed.adapter import ThreeDAdapter
from diffalign.modalities.threed.options import ThreeDOptions

__all__ = ["ThreeDAdapter", "ThreeDOptions"]
