"""SDF files: one molecule with its 3-D conformer per file (what ``save_sample`` writes and ``load_sample`` reads)."""
from __future__ import annotations

import os

__all__ = ["read_sdf", "write_sdf"]


def read_sdf(path: str):
    """The first molecule of an SDF file, sanitised, hydrogens removed; ValueError naming the file otherwise."""
    from rdkit import Chem
    if not os.path.isfile(path):
        raise ValueError(f"ligand file {path!r} does not exist")
    supplier = Chem.SDMolSupplier(str(path), sanitize=True, removeHs=True)
    mol = next(iter(supplier), None) if len(supplier) else None
    if mol is None:
        raise ValueError(f"ligand file {path!r} holds no molecule RDKit can read and sanitise")
    if mol.GetNumConformers() == 0:
        raise ValueError(f"ligand file {path!r}: its molecule has no conformer")
    return mol


def write_sdf(mol, path: str) -> None:
    """Write ``mol`` (with its conformer) as a one-record SDF file."""
    from rdkit import Chem
    writer = Chem.SDWriter(str(path))
    try:
        writer.write(mol)
    finally:
        writer.close()
