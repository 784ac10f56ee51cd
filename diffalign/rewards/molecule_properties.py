"""Drug-likeness and structural-rationality rewards for molecules, and set-level metrics for evaluation.

Samples are what the molecule modality decodes: a sequence of ``rdkit.Chem.Mol`` (one 3-D conformer each) or
``None`` for a sample that decoded to no valid molecule. Each reward returns one float per sample, so the list
keeps its length: an invalid sample (``None``, or a molecule RDKit cannot sanitise) is scored ``invalid``,
an explicit keyword whose default is the bottom of the reward's range, and it is counted by
:func:`molecule_metrics`; it is never dropped.

Rewards (registered by name in diffalign.registry):

- ``qed``: quantitative estimate of drug-likeness (Bickerton et al. 2012, RDKit's ``QED.qed``), in [0, 1].
- ``sa_score``: synthetic accessibility (Ertl & Schuffenhauer 2009, RDKit Contrib ``sascorer``), raw 1 (easy)
  to 10 (hard); the reward is ``(10 - SA) / 9`` in [0, 1], higher is easier, as TargetDiff and AliDiff report it
  (``normalize=False`` gives the raw score).
- ``lipinski``: how many of the drug-likeness rules a molecule obeys (0-5): molecular weight < 500, H-bond
  donors <= 5, H-bond acceptors <= 10, -2 <= logP <= 5 and rotatable bonds <= 10, the five TargetDiff and
  AliDiff count; ``rotatable=False`` gives the four of Lipinski's original rule of five (0-4).
- ``mol_validity``: 1 for a molecule RDKit sanitises, 0 otherwise.
- ``mol_connectivity``: 1 for a valid molecule in one fragment, 0 otherwise (disconnected outputs are a
  common failure of 3-D generators).
- ``mol_ring_size``: the share of a molecule's rings whose size is in ``allowed`` (default 5 and 6; 3-, 4- and
  7+-membered rings are rare in drugs and frequent in generated ligands); 1 for an acyclic molecule.

The weighted multi-objective of AliDiff goes through the existing ``weighted_sum`` reward type; see
docs/molecule_rewards.md for a config.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

__all__ = ["as_molecules", "sanitized", "qed", "sa_score", "lipinski", "lipinski_rules", "mol_validity",
           "mol_connectivity", "mol_ring_size", "ring_sizes", "raw_sa_score", "diversity", "molecule_metrics"]


def as_molecules(samples) -> List[Any]:
    """``samples`` as a list of ``rdkit.Chem.Mol`` or None; ValueError naming the first element of another type."""
    from rdkit import Chem
    if isinstance(samples, Chem.Mol):
        samples = [samples]
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Iterable):
        raise ValueError(f"molecule rewards take a sequence of rdkit.Chem.Mol (or None for an invalid sample), "
                         f"got {type(samples).__name__}")
    mols = list(samples)
    for i, m in enumerate(mols):
        if m is not None and not isinstance(m, Chem.Mol):
            raise ValueError(f"molecule rewards take rdkit.Chem.Mol or None per sample; sample {i} is "
                             f"{type(m).__name__}")
    return mols


def sanitized(mol) -> Optional[Any]:
    """A sanitised copy of ``mol``, or None if it is None or RDKit rejects it (valence, aromaticity)."""
    if mol is None:
        return None
    from rdkit import Chem
    copy = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(copy)
    except Exception:  # RDKit raises several types (AtomValenceException, KekulizeException, ...)
        return None
    return copy


def _score(samples, fn, invalid: float) -> torch.Tensor:
    values = []
    for mol in as_molecules(samples):
        m = sanitized(mol)
        values.append(float(invalid) if m is None else float(fn(m)))
    return torch.tensor(values, dtype=torch.float32)


def qed(samples, prompts=None, invalid: float = 0.0) -> torch.Tensor:
    """QED of each molecule, in [0, 1]; ``invalid`` for an invalid sample."""
    from rdkit.Chem import QED
    return _score(samples, QED.qed, invalid)


@functools.lru_cache(maxsize=1)
def _sascorer():
    from rdkit.Chem import RDConfig
    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if not os.path.isfile(os.path.join(path, "sascorer.py")):
        raise ImportError(f"RDKit's Contrib SA_Score/sascorer.py is not at {path}; install RDKit from PyPI or "
                          "conda-forge (both ship Contrib)")
    # loaded from its file, not by putting Contrib on sys.path (it reads fpscores.pkl.gz beside its __file__)
    spec = importlib.util.spec_from_file_location("rdkit_contrib_sascorer", os.path.join(path, "sascorer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw_sa_score(mol) -> float:
    """Ertl & Schuffenhauer's synthetic accessibility of one sanitised molecule: 1 (easy) to 10 (hard)."""
    return float(_sascorer().calculateScore(mol))


def sa_score(samples, prompts=None, normalize: bool = True, invalid: Optional[float] = None) -> torch.Tensor:
    """``(10 - SA) / 9`` per molecule (``normalize=False``: the raw SA score). ``invalid`` defaults to the worst
    value: 0 normalised, 10 raw."""
    if invalid is None:
        invalid = 0.0 if normalize else 10.0
    return _score(samples, (lambda m: (10.0 - raw_sa_score(m)) / 9.0) if normalize else raw_sa_score, invalid)


def lipinski_rules(mol, rotatable: bool = True) -> Dict[str, bool]:
    """Each drug-likeness rule (see module doc) for one sanitised molecule: rule name -> obeyed."""
    from rdkit.Chem import Crippen, Descriptors, Lipinski, rdMolDescriptors
    logp = Crippen.MolLogP(mol)
    rules = {"weight_below_500": Descriptors.ExactMolWt(mol) < 500,
             "donors_at_most_5": Lipinski.NumHDonors(mol) <= 5,
             "acceptors_at_most_10": Lipinski.NumHAcceptors(mol) <= 10,
             "logp_within_-2_5": -2 <= logp <= 5}
    if rotatable:
        rules["rotatable_bonds_at_most_10"] = rdMolDescriptors.CalcNumRotatableBonds(mol) <= 10
    return rules


def lipinski(samples, prompts=None, rotatable: bool = True, invalid: float = 0.0) -> torch.Tensor:
    """How many rules each molecule obeys (0-5, or 0-4 with ``rotatable=False``)."""
    return _score(samples, lambda m: sum(lipinski_rules(m, rotatable).values()), invalid)


def mol_validity(samples, prompts=None) -> torch.Tensor:
    """1 per molecule RDKit sanitises, 0 per invalid sample."""
    return _score(samples, lambda m: 1.0, 0.0)


def _one_fragment(mol) -> bool:
    from rdkit import Chem
    return len(Chem.GetMolFrags(mol)) == 1


def mol_connectivity(samples, prompts=None) -> torch.Tensor:
    """1 per valid molecule in one connected fragment, 0 otherwise."""
    return _score(samples, _one_fragment, 0.0)


def ring_sizes(mol) -> List[int]:
    """The size of each ring of RDKit's smallest set of smallest rings."""
    return [len(r) for r in mol.GetRingInfo().AtomRings()]


def mol_ring_size(samples, prompts=None, allowed: Sequence[int] = (5, 6), invalid: float = 0.0) -> torch.Tensor:
    """The share of each molecule's rings with a size in ``allowed``; 1 for an acyclic molecule."""
    allowed = {int(a) for a in allowed}
    if not allowed:
        raise ValueError("mol_ring_size: allowed must name at least one ring size")

    def share(m):
        sizes = ring_sizes(m)
        return sum(s in allowed for s in sizes) / len(sizes) if sizes else 1.0
    return _score(samples, share, invalid)


def diversity(mols: Sequence[Any], radius: int = 2, bits: int = 2048) -> Optional[float]:
    """1 - mean pairwise Tanimoto similarity of Morgan fingerprints over the valid molecules (the diversity
    TargetDiff and AliDiff report); None with fewer than two valid molecules."""
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    fps = [gen.GetFingerprint(m) for m in (sanitized(m) for m in as_molecules(mols)) if m is not None]
    if len(fps) < 2:
        return None
    total, pairs = 0.0, 0
    for i in range(1, len(fps)):
        sims = DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i])
        total += sum(sims)
        pairs += len(sims)
    return 1.0 - total / pairs


def molecule_metrics(samples) -> Dict[str, Any]:
    """Set-level drug-likeness metrics of a batch of samples, for evaluation reports.

    ``n`` samples, ``n_invalid``; ``validity`` and ``connectivity`` are shares of all samples (invalid ones
    included); ``qed_mean``, ``sa_mean`` (normalised, see ``sa_score``), ``lipinski_mean`` and
    ``ring_size_ok`` (share of valid molecules whose rings are all 5- or 6-membered) average the valid
    molecules only (None when there is none); ``diversity`` as :func:`diversity`."""
    mols = as_molecules(samples)
    valid = [m for m in (sanitized(m) for m in mols) if m is not None]
    n = len(mols)

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None
    return {"n": n, "n_invalid": n - len(valid),
            "validity": len(valid) / n if n else None,
            "connectivity": sum(_one_fragment(m) for m in valid) / n if n else None,
            "qed_mean": mean(qed(valid).tolist()),
            "sa_mean": mean(sa_score(valid).tolist()),
            "lipinski_mean": mean(lipinski(valid).tolist()),
            "ring_size_ok": mean(float(v == 1.0) for v in mol_ring_size(valid).tolist()),
            "diversity": diversity(valid)}
