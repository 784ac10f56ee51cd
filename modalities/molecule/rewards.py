"""A cheap geometric reward on decoded molecules, for tests and tiny configs: no docking, no chemistry.

``pocket_contact`` scores how snugly a ligand's atoms sit against its pocket's atoms: the negative mean, over
ligand atoms, of |d - contact|, d the distance from the atom to its nearest pocket heavy atom (from the item's
``pocket`` PDB) and ``contact`` 4 A (a typical heavy-atom van der Waals contact distance; closer is a clash,
farther is empty space). It is a shape proxy, not a binding affinity: the Vina rewards in diffalign/rewards are
what the molecule demo aligns to. A sample that decoded to None scores ``invalid`` (a counted penalty, never
dropped: the reward stays aligned with the batch).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from diffalign.modalities.molecule.pocket import read_pdb_atoms

__all__ = ["pocket_contact", "MOLECULE_REWARDS"]


def pocket_contact(samples: Sequence[Any], prompts: Sequence[Any], contact: float = 4.0,
                   invalid: float = -10.0) -> torch.Tensor:
    """(B,) -mean_i |min_j |x_i - p_j| - contact| per molecule (angstrom); ``invalid`` for a None sample."""
    if len(samples) != len(prompts):
        raise ValueError(f"pocket_contact: {len(samples)} molecules for {len(prompts)} prompt items")
    out = []
    for mol, item in zip(samples, prompts):
        if mol is None:
            out.append(float(invalid))
            continue
        if not isinstance(item, dict) or "pocket" not in item:
            raise ValueError(f"pocket_contact needs prompt items with 'pocket' (a PDB file), got {item!r}")
        pocket, _ = read_pdb_atoms(item["pocket"])
        lig = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64)
        nearest = torch.cdist(lig, pocket).min(1).values
        out.append(-float((nearest - contact).abs().mean()))
    return torch.tensor(out, dtype=torch.float32)


MOLECULE_REWARDS = {"pocket_contact": pocket_contact}
