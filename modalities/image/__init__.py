"""Image modality: diffusers text-to-image models (SD 1.x/2.x, SDXL, SD3) and a tiny random preset."""
from diffalign.modalities.image.adapter import ImageAdapter
from diffalign.modalities.image.options import ImageOptions
from diffalign.modalities.image.tiny import CharTokenizer, tiny_components

__all__ = ["ImageAdapter", "ImageOptions", "CharTokenizer", "tiny_components"]
