"""Pocket atoms from a PDB file: parsing, selection around a centre, element features.

A pocket is the protein's heavy atoms within ``radius`` of a centre (TargetDiff's "pocket10" keeps residues
within 10 A of the ligand; atoms within the radius are the same idea without residue bookkeeping), the nearest
``max_atoms`` of them when more fall inside, so every batch has a fixed pocket width. The centre is the item's
``center`` (the crystal ligand's centroid, or a docking box centre), else the centroid of every heavy atom in
the file (right for a file that already is a cut pocket).

PDB ATOM/HETATM records are fixed-column (wwPDB format 3.3: x, y, z in columns 31-54, the element in 77-78);
they are read here directly: a protein of thousands of atoms parses in milliseconds, and parsed files are cached
by path and modification time (every rollout batch re-reads the same few pockets).
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["POCKET_ELEMENTS", "read_pdb_atoms", "select_pocket", "pocket_features", "space_size", "cut_pocket"]

#: pocket atom features: one-hot over these elements, the last slot for any other heavy element (metals, Se)
POCKET_ELEMENTS: Tuple[str, ...] = ("C", "N", "O", "S")


def _element(line: str) -> str:
    elem = line[76:78].strip()
    if not elem:  # old files without the element columns: the atom name's leading letters
        elem = "".join(c for c in line[12:16] if c.isalpha())[:1]
    return elem.capitalize()


@functools.lru_cache(maxsize=64)
def _read_cached(path: str, mtime: float) -> Tuple[torch.Tensor, Tuple[str, ...]]:
    coords, elements = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.startswith(("ATOM", "HETATM")):
                continue
            elem = _element(line)
            if elem in ("H", "D"):
                continue
            try:
                coords.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
            except ValueError:
                raise ValueError(f"pocket file {path!r} line {n}: unreadable coordinates {line[30:54]!r}") from None
            elements.append(elem)
    if not coords:
        raise ValueError(f"pocket file {path!r} has no heavy ATOM/HETATM records")
    return torch.tensor(coords, dtype=torch.float64), tuple(elements)


def read_pdb_atoms(path: str) -> Tuple[torch.Tensor, Tuple[str, ...]]:
    """(coordinates (A, 3) float64 in angstrom, elements) of the heavy atoms of a PDB file."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"pocket file {path!r} does not exist")
    path = os.path.abspath(path)
    return _read_cached(path, os.path.getmtime(path))


def select_pocket(coords: torch.Tensor, elements: Sequence[str], center: Optional[Sequence[float]],
                  radius: float, max_atoms: int) -> Tuple[torch.Tensor, Tuple[str, ...], torch.Tensor]:
    """The atoms within ``radius`` of ``center`` (None: the centroid of ``coords``), nearest first, at most
    ``max_atoms``: (coordinates (P, 3), elements, the centre (3,)), absolute coordinates."""
    c = coords.mean(0) if center is None else torch.as_tensor(center, dtype=coords.dtype).reshape(3)
    dist = (coords - c).norm(dim=-1)
    order = torch.argsort(dist)
    order = order[dist[order] <= radius][:max_atoms]
    return coords[order], tuple(elements[i] for i in order.tolist()), c


def pocket_features(elements: Sequence[str]) -> torch.Tensor:
    """(P, len(POCKET_ELEMENTS) + 1) one-hot element features (the last column: any other element)."""
    index = {e: i for i, e in enumerate(POCKET_ELEMENTS)}
    feat = torch.zeros(len(elements), len(POCKET_ELEMENTS) + 1)
    for i, e in enumerate(elements):
        feat[i, index.get(e, len(POCKET_ELEMENTS))] = 1.0
    return feat


def space_size(coords: torch.Tensor) -> float:
    """A pocket's spatial extent as TargetDiff bins it: the median of its 10 largest pairwise atom distances."""
    if coords.shape[0] < 2:
        return 0.0
    d = torch.pdist(coords.double())
    return float(torch.quantile(torch.sort(d, descending=True).values[:10], 0.5))  # numpy's median (averages a tie)


def cut_pocket(pdb_path: str, ligand_coords: torch.Tensor, out_path: str, radius: float = 10.0) -> int:
    """Write the residues of ``pdb_path`` with any heavy atom within ``radius`` of any ligand atom (CrossDocked's
    "pocket10" files, as TargetDiff cuts them) to ``out_path``, their ATOM/HETATM lines unchanged; returns the
    number of atom lines written."""
    lig = torch.as_tensor(ligand_coords, dtype=torch.float64).reshape(-1, 3)
    with open(pdb_path, encoding="utf-8", errors="replace") as f:
        lines = [ln for ln in f if ln.startswith(("ATOM", "HETATM"))]
    residue = lambda ln: (ln[21], ln[22:27], ln[17:20])  # noqa: E731  chain, number + insertion code, name
    near = set()
    for ln in lines:
        if _element(ln) in ("H", "D"):
            continue
        xyz = torch.tensor([float(ln[30:38]), float(ln[38:46]), float(ln[46:54])], dtype=torch.float64)
        if float((lig - xyz).norm(dim=-1).min()) <= radius:
            near.add(residue(ln))
    kept = [ln for ln in lines if residue(ln) in near]
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(f"REMARK   cut from {os.path.basename(pdb_path)}: residues within {radius} A of the ligand\n")
        f.writelines(kept)
        f.write("END\n")
    return len(kept)
