"""PoseBusters checks (Buttenschoen et al. 2024, the ``posebusters`` package) of generated ligands in their pocket.

A pose "passes" when every check of the chosen PoseBusters configuration holds: with ``config="dock"`` (the
default; no reference ligand needed) chemical sanity (sanitisation, InChI round trip, one fragment, no
radicals), intramolecular geometry (bond lengths and angles, clashes, planarity, internal energy against
RDKit-generated conformers) and intermolecular fit (distance to and volume overlap with the protein, its
cofactors and waters); ``config="mol"`` checks the ligand alone.

- :func:`posebusters_report` runs the checks: one row of check -> pass per sample (``None`` for an invalid one).
  A ligand in several fragments fails PoseBusters' ``all_atoms_connected`` check whatever else holds, so its row
  is that one failed check and the rest are not run: on such ligands the energy-ratio check's conformer search
  took most of a demo's evaluation (18 of 30 minutes for 96 fragmented ligands).
- :func:`posebusters_pass_rate` is the evaluation metric: the share of all samples (invalid ones count as
  failures) that pass every check, with the pass rate of each check.
- ``posebusters`` (registered reward): 1 per sample that passes every check, else 0.

Samples are ``rdkit.Chem.Mol`` with one 3-D conformer or None; each prompt item names its ``pocket`` (or
``receptor``) PDB, as for the ``vina`` reward.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from diffalign.rewards.molecule_properties import as_molecules

__all__ = ["CONFIGS", "posebusters_report", "posebusters_pass_rate", "posebusters"]

CONFIGS = ("dock", "mol")
DISCONNECTED_CHECK = "all_atoms_connected"  # PoseBusters' check (both configs) that a fragmented ligand fails


def _protein(item: Any, config: str) -> Optional[str]:
    if config == "mol":
        return None
    if not isinstance(item, Mapping) or not (item.get("receptor") or item.get("pocket")):
        raise ValueError(f"posebusters: config 'dock' needs prompt items with a 'pocket' (or 'receptor') PDB path, "
                         f"got {item!r}")
    path = item.get("receptor") or item["pocket"]
    if str(path).lower().endswith(".pdbqt"):  # PoseBusters reads PDB; fall back to the pocket
        path = item.get("pocket") or path
    return str(path)


def posebusters_report(samples, prompts: Sequence[Any], config: str = "dock") -> List[Optional[Dict[str, bool]]]:
    """Per sample: {check name: passed} from PoseBusters' ``config``, or None for an invalid sample."""
    if config not in CONFIGS:
        raise ValueError(f"posebusters: config must be one of {list(CONFIGS)}, got {config!r}")
    mols = as_molecules(samples)
    prompts = list(prompts)
    if len(prompts) != len(mols):
        raise ValueError(f"posebusters: {len(mols)} samples but {len(prompts)} prompt items")
    from posebusters import PoseBusters
    buster = PoseBusters(config=config)
    rows: List[Optional[Dict[str, bool]]] = []
    from rdkit import Chem
    for mol, item in zip(mols, prompts):
        if mol is None:
            rows.append(None)
            continue
        if len(Chem.GetMolFrags(mol)) > 1:
            rows.append({DISCONNECTED_CHECK: False})
            continue
        table = buster.bust([mol], None, _protein(item, config), full_report=False)
        rows.append({str(k): bool(v) for k, v in table.iloc[0].items()})
    return rows


def posebusters_pass_rate(samples, prompts: Sequence[Any], config: str = "dock") -> Dict[str, Any]:
    """``pass_rate``: share of all samples passing every check (an invalid sample fails); ``checks``: each
    check's pass rate over the molecules it ran on (a fragmented ligand runs only the connectivity check);
    ``n``, ``n_invalid``, ``n_disconnected``, ``n_passed``."""
    rows = posebusters_report(samples, prompts, config)
    checked = [r for r in rows if r is not None]
    passed = sum(all(r.values()) for r in checked)
    names = sorted({k for r in checked for k in r})
    return {"n": len(rows), "n_invalid": len(rows) - len(checked), "n_passed": passed,
            "n_disconnected": sum(r.get(DISCONNECTED_CHECK) is False for r in checked),
            "pass_rate": passed / len(rows) if rows else None,
            "checks": {k: sum(r[k] for r in checked if k in r) / sum(k in r for r in checked) for k in names}}


def posebusters(samples, prompts, config: str = "dock") -> torch.Tensor:
    """1 per sample passing every PoseBusters check of ``config``, 0 otherwise (an invalid sample: 0)."""
    return torch.tensor([0.0 if r is None else float(all(r.values()))
                         for r in posebusters_report(samples, prompts, config)], dtype=torch.float32)
