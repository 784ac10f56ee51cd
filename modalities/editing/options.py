"""Options of the editing modality (config section ``modality.options``): the image modality's, plus the image
guidance scale of InstructPix2Pix's dual classifier-free guidance."""
from __future__ import annotations

import dataclasses

from diffalign.modalities.image.options import ImageOptions


@dataclasses.dataclass
class EditingOptions(ImageOptions):
    # "tiny" (a random tiny InstructPix2Pix UNet built from configs), "demo" (the shipped pixel-space shapes
    # editor, modalities/editing/demo_model.py), or a hub id / local folder in the timbrooks/instruct-pix2pix
    # layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/)
    model: str = "tiny"
    # s_I of InstructPix2Pix (Brooks et al. 2023, Eq. 3): how strongly samples follow the input image; the text
    # scale s_T is the run's sampling.guidance_scale. 1.5: diffusers' StableDiffusionInstructPix2PixPipeline default
    image_guidance_scale: float = 1.5

    def __post_init__(self):
        if self.architecture != "sd":
            raise ValueError("config key 'modality.options.architecture': the editing modality runs InstructPix2Pix "
                             f"UNets ('sd'), got {self.architecture!r}")
        if not self.image_guidance_scale >= 0:
            raise ValueError(f"config key 'modality.options.image_guidance_scale' must be >= 0, "
                             f"got {self.image_guidance_scale}")
        super().__post_init__()
