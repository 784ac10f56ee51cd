"""Molecule modality: ligands generated for a protein pocket by an E(3)-equivariant diffusion model over atom
coordinates and continuous atom types (TargetDiff / DiffSBDD style), decoded to RDKit molecules.

- adapter.py: the adapter (state, frame, conditions, decode / encode, model folders);
- egnn.py: the EGNN denoiser over ligand + pocket atoms;
- bonds.py: bond perception from 3-D heavy-atom coordinates; sdf.py: SDF files;
- pocket.py: pocket atoms from PDB files; sizes.py: the pocket-conditioned atom-count distribution;
- data.py: complexes in the CrossDocked / PDBbind layouts and the molecule preference layout;
- rewards.py: a cheap geometric reward (pocket_contact) for tests; options.py, entry.py: the registry entry.
"""
from diffalign.modalities.molecule.adapter import ATOM_TYPES, MoleculeAdapter, center_ligand
from diffalign.modalities.molecule.bonds import DecodeStats, build_molecule
from diffalign.modalities.molecule.data import (Complex, ComplexReport, load_molecule_preferences,
                                                read_complexes)
from diffalign.modalities.molecule.egnn import EGNNDenoiser
from diffalign.modalities.molecule.rewards import pocket_contact
from diffalign.modalities.molecule.sizes import SizeDistribution

__all__ = ["MoleculeAdapter", "ATOM_TYPES", "center_ligand", "DecodeStats", "build_molecule", "Complex",
           "ComplexReport", "read_complexes", "load_molecule_preferences", "EGNNDenoiser", "pocket_contact",
           "SizeDistribution"]
