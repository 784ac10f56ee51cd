"""The threed modality's registry entry (``diffalign.registry``; entry point ``threed`` of group diffalign.modalities).

Rewards: the image rewards resolve by name and score each rendered view (the compositional reward for the demo
prior's shapes world)."""
from __future__ import annotations

from diffalign.modalities.threed.options import ThreeDOptions
from diffalign.registry import ModalityEntry


def build(options: ThreeDOptions, prompts, device):
    from diffalign.modalities.threed.adapter import ThreeDAdapter
    return ThreeDAdapter.from_options(options, device=device)


MODALITY = ModalityEntry(options=ThreeDOptions, build=build)
