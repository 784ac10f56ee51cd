"""The image modality's registry entry (``diffalign.registry``; entry point ``image`` of group diffalign.modalities).

Its rewards are the generic ones (``diffalign.registry.rewards``), which every name lookup reaches anyway, so
the entry lists no rewards of its own."""
from __future__ import annotations

from diffalign.modalities.image.options import ImageOptions
from diffalign.registry import ModalityEntry


def build(options: ImageOptions, prompts, device):
    from diffalign.modalities.image.adapter import ImageAdapter
    return ImageAdapter.from_options(options, device=device)


MODALITY = ModalityEntry(options=ImageOptions, build=build)
