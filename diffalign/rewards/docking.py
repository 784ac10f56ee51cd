"""Binding reward: AutoDock Vina (the ``vina`` package) with receptor and ligand preparation by ``meeko``.

``vina`` is a reward type (built once per kwargs, holding its worker processes)::

    reward:
      name: vina
      kwargs: {mode: minimize, workers: 2, timeout: 60, penalty: 0.0}

Samples are ``rdkit.Chem.Mol`` with one 3-D conformer, or None for an invalid sample; each prompt item is a
mapping with ``pocket`` (a pocket PDB path) and optionally ``receptor`` (a full receptor PDB or a prepared
PDBQT, used instead of the pocket for scoring), ``center`` and ``box`` (the search box, angstrom) and ``ligand``
(a reference ligand SDF, whose extent sets a docking box).

Modes (Vina's energies in kcal/mol, lower binds better; the reward is the negative):

- ``score``: the pose as generated (Vina's ``--score_only``);
- ``minimize``: after Vina's local optimisation of the pose (``--local_only``), TargetDiff's and AliDiff's
  "Vina Min";
- ``dock``: the best of a global search (``exhaustiveness``, ``n_poses``), "Vina Dock".

The search box: the prompt's ``center``/``box`` where given; otherwise, for score and minimize, the ligand's
own bounding box plus ``padding`` on each side (the pose stays where it is; ``pose_box="pocket"`` uses the
docking box instead); for dock, the reference ligand's bounding box plus ``padding``, else the whole pocket's
bounding box, centred on the item's ``center`` where it gives one. Workers keep the grid maps of recent
(receptor, box) pairs, so one box per pocket (``box`` in the prompt items, or ``pose_box="pocket"``) makes
scoring several times faster; a ligand atom outside the box is then a counted Vina error.

Receptor preparation (meeko: residue templates, polar hydrogens, Gasteiger charges, AD4 atom types) runs once
per receptor file content and is cached as a PDBQT (``cache_dir``, default a folder under the system's temp
directory). Ligands (hydrogens added with coordinates, then meeko) and Vina run in worker processes
(:class:`diffalign.rewards.worker_pool.TimeoutPool`), each molecule under ``timeout`` seconds.

Failures never score a silent 0. Each is counted by reason in ``reward.stats`` (``invalid_sample``, ``timeout``,
``crashed``, ``error:<ExceptionType>``, ``non_finite``; successes under ``ok``) and, with ``on_failure="penalty"`` (default),
scores ``penalty`` (a reward value, default 0.0: no binding); ``on_failure="raise"`` raises instead, naming
each failed sample and why. ``max_energy`` (kcal/mol) caps the energies of clashing poses (score mode can give
+10^3 and more) so that one outlier does not dominate a batch's normalisation.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import inspect
import math
import os
import tempfile
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from diffalign.registry import RewardType
from diffalign.rewards.molecule_properties import as_molecules, sanitized
from diffalign.rewards.worker_pool import TimeoutPool

__all__ = ["MODES", "VinaReward", "VINA", "prepare_receptor", "search_box", "vina_energy", "load_vina"]

MODES = ("score", "minimize", "dock")
ON_FAILURE = ("penalty", "raise")
POSE_BOXES = ("ligand", "pocket")  # the box of score / minimize without a prompt 'box'


class LigandPreparationError(RuntimeError):
    """meeko could not turn a molecule into a PDBQT ligand (odd valence, no 3-D conformer)."""


# ---- receptor preparation (in the calling process, cached) ----------------------------------------------
_RECEPTORS: Dict[Tuple[str, str], str] = {}  # (content sha256, cache_dir) -> prepared PDBQT path
_RECEPTOR_LOCK = threading.Lock()


def _default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "diffalign_receptors")


def prepare_receptor(path: str, cache_dir: Optional[str] = None, allow_bad_residues: bool = False) -> str:
    """A Vina-ready PDBQT of the receptor PDB ``path`` (a ``.pdbqt`` path is returned as is).

    Prepared by meeko once per file content (and meeko version), cached under ``cache_dir`` as
    ``<sha256[:16]>.pdbqt``.
    ``allow_bad_residues`` drops residues that match no template (missing atoms) instead of raising."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vina: receptor/pocket file {path!r} does not exist")
    if path.lower().endswith(".pdbqt"):
        return path
    with open(path, "rb") as f:
        content = f.read()
    cache_dir = cache_dir or _default_cache_dir()
    # keyed by what determines the output: the file, the option, and meeko's version (templates, charges)
    recipe = f"{bool(allow_bad_residues)} meeko {importlib.metadata.version('meeko')}".encode()
    key = (hashlib.sha256(content + recipe).hexdigest(), cache_dir)
    with _RECEPTOR_LOCK:
        if key in _RECEPTORS and os.path.isfile(_RECEPTORS[key]):
            return _RECEPTORS[key]
        out = os.path.join(cache_dir, key[0][:16] + ".pdbqt")
        if not os.path.isfile(out):  # content-addressed: a file there was made from the same input
            from meeko import MoleculePreparation, PDBQTWriterLegacy, Polymer, ResidueChemTemplates
            try:
                polymer = Polymer.from_pdb_string(content.decode(), ResidueChemTemplates.create_from_defaults(),
                                                  MoleculePreparation(), allow_bad_res=allow_bad_residues)
            except Exception as exc:
                raise ValueError(f"vina: meeko cannot prepare the receptor {path!r}: {type(exc).__name__}: {exc}"
                                 + ("" if allow_bad_residues else " (allow_bad_residues=True drops residues that "
                                    "match no template)")) from None
            written = PDBQTWriterLegacy.write_from_polymer(polymer)
            rigid = written[0] if isinstance(written, tuple) else written
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{out}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(rigid)
            os.replace(tmp, out)  # atomic: a concurrent reader sees a whole file or none
        _RECEPTORS[key] = out
        return out


# ---- the search box ---------------------------------------------------------------------------------------
def _pdb_heavy_coords(path: str) -> np.ndarray:
    xyz = [[float(l[30:38]), float(l[38:46]), float(l[46:54])] for l in open(path)
           if l.startswith(("ATOM", "HETATM")) and l[76:78].strip() not in ("H", "D")]
    if not xyz:
        raise ValueError(f"vina: {path!r} has no ATOM/HETATM heavy atoms to place a docking box on")
    return np.asarray(xyz)


def _sdf_coords(path: str) -> np.ndarray:
    from rdkit import Chem
    mol = next(iter(Chem.SDMolSupplier(path, removeHs=False, sanitize=False)), None)
    if mol is None or mol.GetNumConformers() == 0:
        raise ValueError(f"vina: reference ligand {path!r} has no readable 3-D molecule")
    return mol.GetConformer().GetPositions()


def _bounds(xyz: np.ndarray, padding: float) -> Tuple[List[float], List[float]]:
    lo, hi = xyz.min(0), xyz.max(0)
    return ((lo + hi) / 2).tolist(), (hi - lo + 2 * padding).tolist()


def search_box(item: Mapping[str, Any], mode: str, ligand_xyz: Optional[np.ndarray], padding: float,
               pose_box: str = "ligand") -> Tuple[List[float], List[float]]:
    """(center, size) of the Vina search box for one sample (see module doc for the order of sources)."""
    center = item.get("center")
    if center is not None and (not isinstance(center, (list, tuple)) or len(center) != 3):
        raise ValueError(f"vina: prompt item 'center' must be [x, y, z], got {center!r}")
    if "box" in item:
        size = item["box"]
        if center is None or not isinstance(size, (list, tuple)) or len(size) != 3:
            raise ValueError(f"vina: a prompt item with 'box' needs 'center' too, both as 3 numbers, got "
                             f"center={center!r} box={size!r}")
        if not all(float(s) > 0 for s in size):
            raise ValueError(f"vina: prompt item 'box' sizes must be positive angstroms, got {size!r}")
        return [float(c) for c in center], [float(s) for s in size]
    if mode in ("score", "minimize") and pose_box == "ligand":
        return _bounds(ligand_xyz, padding)
    if item.get("ligand"):
        box_center, size = _bounds(_sdf_coords(item["ligand"]), padding)
    else:
        box_center, size = _bounds(_pdb_heavy_coords(item["pocket"]), 0.0)
    return ([float(c) for c in center] if center is not None else box_center), size


# ---- the worker side ------------------------------------------------------------------------------------
def warm_up() -> None:
    """A worker's initializer: import the engines before the first timed call."""
    import meeko  # noqa: F401
    import rdkit.Chem  # noqa: F401
    import vina  # noqa: F401


def _ligand_pdbqt(molblock: str) -> str:
    from meeko import MoleculePreparation, PDBQTWriterLegacy
    from rdkit import Chem
    mol = Chem.MolFromMolBlock(molblock, removeHs=False)
    if mol is None:
        raise LigandPreparationError("RDKit cannot read the molecule back from its mol block")
    try:
        mol = Chem.AddHs(mol, addCoords=True)  # Vina's atom types need polar hydrogens in place
        setups = MoleculePreparation().prepare(mol)
        pdbqt, ok, message = PDBQTWriterLegacy.write_string(setups[0])
    except Exception as exc:
        raise LigandPreparationError(f"meeko: {type(exc).__name__}: {exc}") from None
    if not ok:
        raise LigandPreparationError(f"meeko: {message.strip()}")
    return pdbqt


_MAPS: "collections.OrderedDict[Tuple, Any]" = collections.OrderedDict()  # a worker's Vina objects with maps
_MAPS_KEPT = 4


def _vina_with_maps(receptor_pdbqt: str, ligand_pdbqt: str, center, size, seed: int, scoring: str):
    """A Vina object with ``ligand_pdbqt`` set and grid maps for (receptor, box), reused across calls in this
    worker: computing the maps takes about 3x as long as scoring and minimising a ligand in them (1s3v pocket,
    16x19x15 A box: 1.1 s against 0.35 s), and every molecule of a pocket given one box shares them."""
    from vina import Vina
    key = (receptor_pdbqt, os.path.getmtime(receptor_pdbqt), tuple(center), tuple(size), int(seed), scoring)
    v = _MAPS.pop(key, None)
    if v is None:
        v = Vina(sf_name=scoring, cpu=1, seed=int(seed), verbosity=0)  # one core: the pool gives the parallelism
        v.set_receptor(receptor_pdbqt)
        # maps before any ligand: Vina then computes every atom type's map; with a ligand set it computes only that
        # ligand's types, and a later ligand with another type fails ("Affinity map for atom type O_A is not present")
        v.compute_vina_maps(center=list(center), box_size=list(size))
    v.set_ligand_from_string(ligand_pdbqt)
    _MAPS[key] = v
    while len(_MAPS) > _MAPS_KEPT:
        _MAPS.popitem(last=False)
    return v


def vina_energy(molblock: str, receptor_pdbqt: str, mode: str, center: Sequence[float], size: Sequence[float],
                exhaustiveness: int = 8, n_poses: int = 1, seed: int = 0, scoring: str = "vina") -> float:
    """Vina's energy (kcal/mol) of one ligand (a mol block with 3-D coordinates) in ``mode``: the total of
    ``score()`` / ``optimize()``, or the best pose's energy after ``dock()``. Runs in a worker process."""
    v = _vina_with_maps(receptor_pdbqt, _ligand_pdbqt(molblock), center, size, seed, scoring)
    if mode == "score":
        return float(v.score()[0])
    if mode == "minimize":
        return float(v.optimize()[0])
    v.dock(exhaustiveness=int(exhaustiveness), n_poses=max(1, int(n_poses)))
    return float(v.energies(n_poses=1)[0][0])


# ---- the reward ---------------------------------------------------------------------------------------
class VinaReward:
    """``reward(samples, prompt_items) -> Tensor[B]`` = ``-energy`` per sample (see module doc).

    ``stats``: counts by reason over the reward's life; ``last_energies``: the last call's energies (kcal/mol,
    None where it failed); ``last_failures``: (sample index, reason, message) of the last call."""

    name = "vina"

    def __init__(self, mode: str = "minimize", exhaustiveness: int = 8, n_poses: int = 1, padding: float = 5.0,
                 pose_box: str = "ligand",
                 workers: int = 1, timeout: float = 120.0, on_failure: str = "penalty", penalty: float = 0.0,
                 max_energy: Optional[float] = None, seed: int = 0, scoring: str = "vina",
                 cache_dir: Optional[str] = None, allow_bad_residues: bool = False):
        check_vina_kwargs(dict(mode=mode, exhaustiveness=exhaustiveness, padding=padding, pose_box=pose_box,
                               workers=workers, timeout=timeout, on_failure=on_failure, scoring=scoring))
        self.mode, self.exhaustiveness, self.n_poses = mode, int(exhaustiveness), int(n_poses)
        self.padding, self.pose_box = float(padding), pose_box
        self.on_failure, self.penalty = on_failure, float(penalty)
        self.max_energy = None if max_energy is None else float(max_energy)
        self.seed, self.scoring = int(seed), scoring
        self.cache_dir, self.allow_bad_residues = cache_dir, bool(allow_bad_residues)
        self.pool = TimeoutPool(workers=workers, timeout=timeout, initializer=warm_up)
        # what the workers run per molecule, with the arguments of vina_energy; any module-level function the
        # workers can import fits (tests put a stand-in that sleeps here, to exercise the timeout path)
        self.energy_fn = vina_energy
        self.stats: collections.Counter = collections.Counter()
        self.last_energies: List[Optional[float]] = []
        self.last_failures: List[Tuple[int, str, str]] = []

    def _task(self, mol, item) -> Tuple:
        from rdkit import Chem
        if not isinstance(item, Mapping) or not item.get("pocket"):
            raise ValueError(f"vina: each prompt item must be a mapping with a 'pocket' PDB path, got {item!r}")
        receptor = prepare_receptor(item.get("receptor") or item["pocket"], self.cache_dir, self.allow_bad_residues)
        if mol.GetNumConformers() == 0:
            raise ValueError("vina: a molecule sample has no 3-D conformer")
        xyz = mol.GetConformer().GetPositions()
        center, size = search_box(item, self.mode, xyz, self.padding, self.pose_box)
        return (Chem.MolToMolBlock(mol), receptor, self.mode, center, size, self.exhaustiveness, self.n_poses,
                self.seed, self.scoring)

    def energies(self, samples, prompts) -> List[Optional[float]]:
        """Vina energies (kcal/mol) per sample, None where it failed (counted in ``stats``)."""
        mols = as_molecules(samples)
        prompts = list(prompts)
        if len(prompts) != len(mols):
            raise ValueError(f"vina: {len(mols)} samples but {len(prompts)} prompt items")
        energies: List[Optional[float]] = [None] * len(mols)
        failures: List[Tuple[int, str, str]] = []
        tasks, where = [], []
        for i, (mol, item) in enumerate(zip(mols, prompts)):
            if mol is None:
                failures.append((i, "invalid_sample", "the sample decoded to no molecule"))
                continue
            mol = sanitized(mol)
            if mol is None:
                failures.append((i, "invalid_sample", "RDKit cannot sanitise the molecule"))
                continue
            tasks.append(self._task(mol, item))
            where.append(i)
        for i, res in zip(where, self.pool.map(self.energy_fn, tasks)):
            if res.ok and not math.isfinite(res.value):
                failures.append((i, "non_finite", f"Vina returned {res.value}"))
            elif res.ok:
                energies[i] = res.value if self.max_energy is None else min(res.value, self.max_energy)
            else:
                reason = res.status if res.status != "error" else "error:" + res.message.split(":")[0]
                failures.append((i, reason, res.message))
        self.stats["ok"] += sum(e is not None for e in energies)
        self.stats.update(reason for _, reason, _ in failures)
        self.last_energies, self.last_failures = energies, sorted(failures)
        if failures and self.on_failure == "raise":
            raise RuntimeError("vina failed on " + "; ".join(f"sample {i}: {reason} ({msg})"
                                                              for i, reason, msg in self.last_failures))
        return energies

    def __call__(self, samples, prompts) -> torch.Tensor:
        return torch.tensor([self.penalty if e is None else -e for e in self.energies(samples, prompts)],
                            dtype=torch.float32)

    def close(self) -> None:
        self.pool.close()


def check_vina_kwargs(kwargs: Mapping[str, Any]) -> None:
    """ValueError naming the bad ``vina`` kwarg (config validation; loads nothing)."""
    if kwargs.get("mode", "minimize") not in MODES:
        raise ValueError(f"vina: mode must be one of {list(MODES)}, got {kwargs.get('mode')!r}")
    if kwargs.get("on_failure", "penalty") not in ON_FAILURE:
        raise ValueError(f"vina: on_failure must be one of {list(ON_FAILURE)}, got {kwargs.get('on_failure')!r}")
    if kwargs.get("pose_box", "ligand") not in POSE_BOXES:
        raise ValueError(f"vina: pose_box must be one of {list(POSE_BOXES)}, got {kwargs.get('pose_box')!r}")
    if kwargs.get("scoring", "vina") not in ("vina", "vinardo"):
        raise ValueError(f"vina: scoring must be 'vina' or 'vinardo', got {kwargs.get('scoring')!r}")
    for key, low in (("exhaustiveness", 1), ("workers", 1)):
        if key in kwargs and not int(kwargs[key]) >= low:
            raise ValueError(f"vina: {key} must be >= {low}, got {kwargs[key]!r}")
    for key in ("timeout", "padding"):
        if key in kwargs and not float(kwargs[key]) > 0:
            raise ValueError(f"vina: {key} must be > 0, got {kwargs[key]!r}")


def load_vina(directory=None, device=None, dtype=None, **kwargs) -> VinaReward:
    """The ``vina`` reward type's loader: ``VinaReward(**kwargs)`` (no weights; device and dtype unused)."""
    return VinaReward(**kwargs)


# the reward's keywords in the loader's signature, so a misspelt config kwarg fails before training
load_vina.__signature__ = inspect.Signature(
    [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in ("directory", "device", "dtype")]
    + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
       for p in list(inspect.signature(VinaReward.__init__).parameters.values())[1:]])

VINA = RewardType(load_vina, check=check_vina_kwargs)  # registered as 'vina' in diffalign.registry.BUILTIN_REWARDS
