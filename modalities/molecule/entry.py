"""The molecule modality's registry entry (``diffalign.registry``; entry point ``molecule`` of group
diffalign.modalities). Rewards: ``pocket_contact`` (geometric, modalities/molecule/rewards.py); the docking and
drug-likeness rewards are diffalign's own (diffalign/rewards). Data: the ``molecule_jsonl`` preference layout."""
from __future__ import annotations

from diffalign.modalities.molecule.options import MoleculeOptions
from diffalign.registry import ModalityEntry


def build(options: MoleculeOptions, prompts, device):
    import torch

    from diffalign.modalities.molecule.adapter import MoleculeAdapter
    adapter = MoleculeAdapter(options.model, device=device, dtype=getattr(torch, options.dtype),
                              init_seed=options.init_seed, **options.overrides())
    if options.pretrain_steps:
        adapter.pretrain(prompts, options.pretrain_steps, seed=options.init_seed)
    return adapter


def rewards():
    from diffalign.modalities.molecule.rewards import MOLECULE_REWARDS
    return dict(MOLECULE_REWARDS)


def readers():
    from diffalign.modalities.molecule.data import FORMAT, load_molecule_preferences
    return {FORMAT: load_molecule_preferences}


MODALITY = ModalityEntry(options=MoleculeOptions, build=build, rewards=rewards, readers=readers, item_paths=("pocket",))
