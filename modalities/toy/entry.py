"""The toy modality's registry entry (``diffalign.registry``; entry point ``toy`` of group diffalign.modalities)."""
from __future__ import annotations

from diffalign.modalities.toy.options import ToyOptions
from diffalign.registry import ModalityEntry


def build(options: ToyOptions, prompts, device):
    from diffalign.modalities.toy.adapter import ToyAdapter
    return ToyAdapter(prompts, dim=options.dim, hidden=options.hidden, scheduler=options.scheduler,
                      init_seed=options.init_seed, device=device, pretrain_steps=options.pretrain_steps)


def rewards():
    from diffalign.modalities.toy.rewards import TOY_REWARDS
    return dict(TOY_REWARDS)


MODALITY = ModalityEntry(options=ToyOptions, build=build, rewards=rewards)
