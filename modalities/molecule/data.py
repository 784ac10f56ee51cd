"""Molecule data: pocket-ligand complexes in the CrossDocked / PDBbind folder layouts, and preference pairs.

Complexes (``read_complexes(root)``): every folder under ``root`` (the root itself and its subfolders, two
levels deep) is searched for ligand SDF files, each one row:

- PDBbind (and the posebusters package's complexes): ``<id>/<id>_ligand.sdf`` beside ``<id>_pocket.pdb``, else
  ``<id>_protein.pdb`` or any ``<id>_protein*.pdb`` (posebusters: ``<id>_protein_one_lig_removed.pdb``);
- CrossDocked as TargetDiff ships it (``crossdocked_pocket10``): ``<target>/<name>.sdf`` beside
  ``<name>_pocket10.pdb``.

Other SDF files (``<id>_ligands.sdf`` with every copy of a ligand, say) are not rows. A row that cannot be used
is counted by reason in the :class:`ComplexReport` with a few examples, never dropped silently: ``missing_pocket``,
``unreadable_ligand`` (RDKit cannot read or sanitise it), ``unknown_element`` (outside the model's atom types),
``too_many_atoms``, ``unreadable_pocket`` and ``empty_pocket`` (no pocket atom within the radius of the ligand).
Each kept complex gives a prompt item ``{"pocket": pdb, "center": ligand centroid, "ligand": sdf, "id": id}``.

Preferences (``data.format: molecule_jsonl``): JSONL, one pair per line, as ``diffalign feedback``'s
``write_feedback`` writes them: ``{"prompt": item, "chosen": sdf, "rejected": sdf, "chosen_reward": float,
"rejected_reward": float}`` (rewards optional), the item a pocket mapping; a side may be an invalid sample's
stored model state (``.state.pt``, diffalign.data.StoredState: x0 and conditions) instead of an SDF; paths (the SDFs and the item's
``pocket``) relative to the file's folder. Unusable lines are counted in the LoadReport (malformed lines,
undecodable ligands).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

from diffalign.data.types import (LoadReport, PreferenceDataError, PreferenceDataset, PreferencePair, is_state_ref,
                                  jsonl_objects, load_state, pair_rewards, resolve_path)
from diffalign.modalities.molecule.pocket import read_pdb_atoms

__all__ = ["Complex", "ComplexReport", "read_complexes", "load_molecule_preferences", "FORMAT", "REASONS"]

FORMAT = "molecule_jsonl"
REASONS = ("missing_pocket", "unreadable_ligand", "unknown_element", "too_many_atoms", "unreadable_pocket",
           "empty_pocket")


@dataclasses.dataclass
class Complex:
    id: str
    pocket: str                 # PDB path
    ligand: str                 # SDF path
    center: List[float]         # the ligand's centroid (where generated ligands go)
    num_atoms: int              # the ligand's heavy atoms

    def item(self) -> Dict[str, object]:
        return {"pocket": self.pocket, "center": self.center, "ligand": self.ligand, "id": self.id}


@dataclasses.dataclass
class ComplexReport:
    """Rows found, kept, and skipped by reason (with up to 3 examples each)."""

    root: str
    rows: int = 0
    kept: int = 0
    skipped: Dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in REASONS})
    examples: Dict[str, List[str]] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(detail)

    def summary(self) -> str:
        parts = [f"{self.root}: {self.rows} complexes -> {self.kept} usable"]
        parts += [f"{n} {r.replace('_', ' ')} (e.g. {'; '.join(self.examples[r])})" for r, n in self.skipped.items() if n]
        return ", ".join(parts)


def _pocket_for(sdf: str) -> Tuple[Optional[str], str]:
    """(the pocket PDB paired with a ligand SDF or None, the complex id); id None when the SDF is not a row."""
    folder, name = os.path.split(sdf)
    stem = name[:-4]
    crossdocked = os.path.join(folder, f"{stem}_pocket10.pdb")
    if os.path.isfile(crossdocked):
        return crossdocked, stem
    if not stem.endswith("_ligand"):
        return None, ""
    cid = stem[:-len("_ligand")]
    for pattern in (f"{cid}_pocket.pdb", f"{cid}_protein.pdb", f"{cid}_protein*.pdb"):
        found = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
        if found:
            return found[0], cid
    return None, cid


def read_complexes(root: str, atom_types: Sequence[str] = ("C", "N", "O", "F", "P", "S", "Cl"),
                   max_atoms: Optional[int] = None, pocket_radius: float = 10.0) -> Tuple[List[Complex], ComplexReport]:
    """The usable complexes under ``root`` (sorted by path) and the report of every row (module docstring)."""
    import torch

    from diffalign.modalities.molecule.sdf import read_sdf
    if not os.path.isdir(root):
        raise ValueError(f"complex folder {root!r} does not exist")
    sdfs = sorted(set(glob.glob(os.path.join(glob.escape(root), "*.sdf")) +
                      glob.glob(os.path.join(glob.escape(root), "*", "*.sdf")) +
                      glob.glob(os.path.join(glob.escape(root), "*", "*", "*.sdf"))))
    report, kept = ComplexReport(root), []
    for sdf in sdfs:
        pocket, cid = _pocket_for(sdf)
        if not cid:
            continue  # not a ligand row (e.g. <id>_ligands.sdf)
        report.rows += 1
        rel = os.path.relpath(sdf, root)
        if pocket is None:
            report.skip("missing_pocket", rel)
            continue
        try:
            mol = read_sdf(sdf)
        except ValueError as exc:
            report.skip("unreadable_ligand", f"{rel}: {exc}")
            continue
        symbols = {a.GetSymbol() for a in mol.GetAtoms()}
        unknown = sorted(symbols - set(atom_types))
        if unknown:
            report.skip("unknown_element", f"{rel}: {unknown}")
            continue
        if max_atoms is not None and mol.GetNumAtoms() > max_atoms:
            report.skip("too_many_atoms", f"{rel}: {mol.GetNumAtoms()} > {max_atoms}")
            continue
        try:
            coords, _ = read_pdb_atoms(pocket)
        except ValueError as exc:
            report.skip("unreadable_pocket", str(exc))
            continue
        center = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64).mean(0)
        if not bool(((coords - center).norm(dim=-1) <= pocket_radius).any()):
            report.skip("empty_pocket", f"{rel}: no atom of {os.path.basename(pocket)} within {pocket_radius} A")
            continue
        kept.append(Complex(cid, os.path.abspath(pocket), os.path.abspath(sdf), center.tolist(), mol.GetNumAtoms()))
        report.kept += 1
    return kept, report


def _check_ligand(path: str) -> Optional[str]:
    from diffalign.modalities.molecule.sdf import read_sdf
    try:
        load_state(path) if is_state_ref(path) else read_sdf(path)  # an invalid sample is stored as its state
    except ValueError as exc:
        return str(exc)
    return None


def load_molecule_preferences(path: str, verify: bool = True, max_records: Optional[int] = None) -> PreferenceDataset:
    """Pairs from a molecule preference JSONL (module docstring). ``verify`` reads every ligand at load."""
    if not os.path.isfile(path):
        raise PreferenceDataError(f"molecule preference file {path!r} does not exist")
    root = os.path.dirname(os.path.abspath(path))
    report = LoadReport(path, FORMAT)
    pairs = []
    for where, row in jsonl_objects(path, report, max_records):
        item = row.get("prompt")
        if not isinstance(item, dict) or not isinstance(item.get("pocket"), str):
            report.skip("missing_caption", f"{where}: 'prompt' must be a mapping with 'pocket'")
            continue
        ligands = [row.get("chosen"), row.get("rejected")]
        if not all(isinstance(p, str) and p for p in ligands):
            report.skip("malformed", f"{where}: needs 'chosen' and 'rejected' paths (SDF or .state.pt)")
            continue
        try:
            rewards = pair_rewards(row)
        except ValueError as exc:
            report.skip("malformed", f"{where}: {exc}")
            continue
        ligands = [resolve_path(p, root) for p in ligands]
        item = dict(item, pocket=resolve_path(item["pocket"], root))
        why = next((w for w in map(_check_ligand, ligands) if w is not None), None) if verify else None
        if why is None and verify and not os.path.isfile(item["pocket"]):
            why = f"pocket file {item['pocket']!r} does not exist"
        if why is not None:
            report.skip("undecodable", f"{where}: {why}")
            continue
        pairs.append(PreferencePair(item, ligands[0], ligands[1], *rewards))
        report.kept += 1
    if report.kept == 0:
        raise PreferenceDataError(f"no usable preference data in {path}: {report.summary()}")
    if report.skipped:
        warnings.warn(f"preference data: {report.summary()}", stacklevel=2)
    return PreferenceDataset(pairs, [], report)
