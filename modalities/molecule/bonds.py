"""Heavy-atom coordinates and elements -> an RDKit molecule, bonds perceived from 3-D geometry.

Generated ligands have heavy atoms only. RDKit's ``rdDetermineBonds.DetermineBondOrders`` (xyz2mol) assumes
every hydrogen is present, so only its connectivity step serves here:

1. connectivity: ``rdDetermineBonds.DetermineConnectivity`` (two atoms bond when their distance is below the
   sum of their covalent radii plus a tolerance);
2. bond orders from lengths: a bond shorter than the midpoint of the element pair's typical single and double
   bond lengths can be multiple (triple below the double/triple midpoint), and among those candidates the
   multiple bonds are a maximum-weight matching (networkx), each atom taking at most one extra order, as a
   Kekule structure does; an atom only takes one when its largest allowed valence
   has room (hydrogens then fill the rest implicitly);
3. ``Chem.SanitizeMol``; a molecule that fails (an over-valent atom, say) is None, with the reason counted.

Typical bond lengths (angstrom) are Allen et al. 1987's (J. Chem. Soc. Perkin Trans. 2, S1) averages rounded;
a pair not tabulated has only single bonds. Known limit: an atom takes at most one multiple bond, so a
sulfone's S keeps one S=O (the other O single, S then carries an implicit H).
"""
from __future__ import annotations

import collections
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = ["build_molecule", "DecodeStats"]

# (single, double, triple) typical lengths in angstrom; None: no such bond
_LENGTHS: Dict[frozenset, Tuple[float, Optional[float], Optional[float]]] = {
    frozenset(["C"]): (1.54, 1.34, 1.20),
    frozenset(["C", "N"]): (1.47, 1.28, 1.16),
    frozenset(["C", "O"]): (1.43, 1.21, None),
    frozenset(["C", "S"]): (1.82, 1.67, None),
    frozenset(["C", "P"]): (1.84, 1.66, None),
    frozenset(["N"]): (1.45, 1.25, 1.10),
    frozenset(["N", "O"]): (1.40, 1.21, None),
    frozenset(["O", "P"]): (1.60, 1.48, None),
    frozenset(["O", "S"]): (1.58, 1.45, None),
}


class DecodeStats(collections.Counter):
    """Counts of decoded samples: ``samples``, ``valid`` and one key per failure reason (``invalid_<reason>``)."""

    def as_metrics(self, prefix: str = "decode/") -> Dict[str, float]:
        n = max(self["samples"], 1)
        out = {f"{prefix}validity": self["valid"] / n}
        out.update({f"{prefix}{k}": v / n for k, v in self.items() if k.startswith("invalid_")})
        return out


def _multiple_candidates(mol, pos: torch.Tensor):
    """(a, b, order, weight) for bonds short enough to be double (order 2) or triple (order 3)."""
    out = []
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        pair = frozenset([mol.GetAtomWithIdx(a).GetSymbol(), mol.GetAtomWithIdx(b).GetSymbol()])
        if pair not in _LENGTHS:
            continue
        single, double, triple = _LENGTHS[pair]
        d = float((pos[a] - pos[b]).norm())
        if double is None:
            continue
        if triple is not None and d < (double + triple) / 2:
            out.append((a, b, 3, single - d))
        elif d < (single + double) / 2:
            out.append((a, b, 2, single - d))
    return out


def _assign_orders(mol, pos: torch.Tensor) -> None:
    """Set double / triple bonds on ``mol`` (an RWMol with single bonds) from the bond lengths."""
    import networkx as nx
    from rdkit import Chem

    pt = Chem.GetPeriodicTable()
    room = {}
    for atom in mol.GetAtoms():
        valence = max(pt.GetValenceList(atom.GetAtomicNum()))  # S and P: their hypervalent maximum (sulfones)
        room[atom.GetIdx()] = max(valence - atom.GetDegree(), 0) if valence > 0 else 0
    graph = nx.Graph()
    for a, b, order, weight in _multiple_candidates(mol, pos):
        extra = order - 1
        if room[a] >= extra and room[b] >= extra:
            graph.add_edge(a, b, weight=1.0 + weight, order=order)
    for a, b in nx.max_weight_matching(graph, maxcardinality=True):
        order = graph.edges[a, b]["order"]
        mol.GetBondBetweenAtoms(a, b).SetBondType(Chem.BondType.DOUBLE if order == 2 else Chem.BondType.TRIPLE)


def build_molecule(coords: torch.Tensor, elements: Sequence[str]) -> Tuple[Optional[object], str]:
    """(an RDKit Mol with one 3-D conformer, "valid") or (None, the failure reason) for heavy atoms at
    ``coords`` (n, 3) angstrom with ``elements`` (n,) symbols."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    block = rdBase.BlockLogs()  # failures are returned and counted; RDKit's stderr lines would flood rollouts

    pos = torch.as_tensor(coords, dtype=torch.float64).cpu()
    if pos.shape[0] == 0:
        return None, "empty"
    if not bool(torch.isfinite(pos).all()):
        return None, "nonfinite"
    rw = Chem.RWMol()
    conf = Chem.Conformer(len(elements))
    for i, sym in enumerate(elements):
        atom = Chem.Atom(sym)
        rw.AddAtom(atom)
        conf.SetAtomPosition(i, Point3D(*pos[i].tolist()))
    rw.AddConformer(conf, assignId=True)
    try:
        rdDetermineBonds.DetermineConnectivity(rw, useHueckel=False)
    except Exception:  # RDKit raises its own exception types for geometry it cannot read
        return None, "connectivity"
    for atom in rw.GetAtoms():  # hydrogens are implicit: RDKit fills each atom's valence after the bonds
        atom.SetNoImplicit(False)
        atom.SetNumRadicalElectrons(0)
    _assign_orders(rw, pos)
    mol = rw.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception:
        return None, "sanitization"
    return mol, "valid"
