"""The molecule adapter: pocket-conditioned E(3)-equivariant diffusion over ligand atoms (TargetDiff / DiffSBDD
style), with the same contract as every modality.

State x (B, N_max, 3 + K): each ligand atom's coordinates (angstrom) and its K continuous type features (the
one-hot over ``atom_types`` times ``feature_scale``: E(3) diffusion and TargetDiff diffuse atom types as
scaled one-hots with the same Gaussian noise as the coordinates; EDM scales them by 1/4). Atoms beyond a
sample's count are padding, marked by ``cond["mask"]`` (B, N_max).

The frame: every coordinate is relative to the pocket's centre (the item's ``center``, else the centroid of
its PDB atoms), and the ligand is centre-of-mass free in it: its centroid sits on the pocket centre (DiffSBDD's
conditional frame). ``initial_noise``, ``project_noise`` and ``project`` remove the coordinates' masked mean
and zero padded atoms, so every state, noise draw and model output lives in that subspace, and log-probs are
densities there: ``logprob_dims`` = 3 (n - 1) + K n.

Conditions (all batch-first): ``mask`` (B, N_max); ``pocket_pos`` (B, P, 3) pocket atoms in the frame,
``pocket_feat`` (B, P, F) their element one-hots, ``pocket_mask`` (B, P); ``pocket_center`` (B, 3) the frame's
origin in the PDB's coordinates (decode adds it back, so molecules sit in the pocket the rewards dock into).
The atom count is the item's ``num_atoms``, else drawn from the pocket-size-conditioned
:class:`~diffalign.modalities.molecule.sizes.SizeDistribution` with the item's generator.

A prompt item is a mapping with ``pocket`` (a PDB file: a cut pocket or a whole protein) and optionally
``center`` ([x, y, z]: where the ligand goes, e.g. the crystal ligand's centroid) and ``num_atoms``.

``decode`` gives a list of RDKit molecules with one conformer each, in batch order, None where bonds could not
be perceived into a sanitisable molecule; ``decode_stats`` counts them by reason (bonds.DecodeStats), and
``metrics`` reports each epoch's shares to the trainer's log.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from diffalign.modalities.base import (Conditions, Generators, ModalityAdapter, PeftOrFrozenReference,
                                       item_generators, unwrap)
from diffalign.modalities.molecule.bonds import DecodeStats, build_molecule
from diffalign.modalities.molecule.egnn import EGNNDenoiser
from diffalign.modalities.molecule.pocket import (POCKET_ELEMENTS, pocket_features, read_pdb_atoms, select_pocket,
                                                  space_size)
from diffalign.modalities.molecule.sizes import SizeDistribution

__all__ = ["MoleculeAdapter", "ModelConfig", "make_scheduler", "center_ligand", "ATOM_TYPES", "CONFIG_NAME", "WEIGHTS_NAME"]

#: TargetDiff's heavy ligand elements (its atom-type set without hydrogen)
ATOM_TYPES = ("C", "N", "O", "F", "P", "S", "Cl")
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def make_scheduler(num_train_timesteps: int):
    """DDIM over the cosine schedule (Nichol & Dhariwal 2021, diffusers' "squaredcos_cap_v2"), the network
    predicting the clean ligand x0 as TargetDiff's does (egnn.py says why not the noise). A diffusers scheduler
    chosen when modalities could not import diffalign.mdp's VPSchedule (E(3) diffusion's polynomial schedule); it
    now lives in diffalign.schedules, which a modality may import, but the tiny configs are tuned on this one."""
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=False, set_alpha_to_one=False)


def center_ligand(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, N, 3 + K) with the coordinates' masked mean removed and padded atoms zeroed (mask (B, N))."""
    m = mask.to(x.dtype).unsqueeze(-1)
    pos = x[..., :3]
    com = (pos * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    return torch.cat([pos - com, x[..., 3:]], -1) * m


class ModelConfig(dict):
    """What a saved model folder's config.json holds (every key has the tiny preset's default)."""

    DEFAULTS = {"atom_types": list(ATOM_TYPES), "hidden": 32, "layers": 3, "max_atoms": 12, "min_atoms": 4,
                "max_pocket_atoms": 48, "pocket_radius": 10.0, "feature_scale": 0.25, "num_train_timesteps": 500,
                "size_distribution": None}

    POSITIVE_INTS = ("hidden", "layers", "max_atoms", "min_atoms", "max_pocket_atoms", "num_train_timesteps")

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"unknown molecule model config keys {unknown}; known: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **kwargs})
        for key in self.POSITIVE_INTS:
            if isinstance(self[key], bool) or not isinstance(self[key], int) or self[key] < 1:
                raise ValueError(f"molecule model config key {key!r} must be an integer >= 1, got {self[key]!r}")
        for key in ("pocket_radius", "feature_scale"):
            if isinstance(self[key], bool) or not isinstance(self[key], (int, float)) or not self[key] > 0:
                raise ValueError(f"molecule model config key {key!r} must be a number > 0, got {self[key]!r}")
        types = self["atom_types"]
        if not isinstance(types, (list, tuple)) or not types or not all(isinstance(t, str) for t in types) \
                or len(set(types)) != len(types):
            raise ValueError(f"molecule model config key 'atom_types' must be a list of distinct element symbols, "
                             f"got {types!r}")

    @classmethod
    def read(cls, folder: str) -> "ModelConfig":
        path = os.path.join(folder, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"molecule model folder {folder!r} has no {CONFIG_NAME}")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not JSON ({exc.msg})") from None
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


class MoleculeAdapter(PeftOrFrozenReference, ModalityAdapter):
    """Ligands for protein pockets. ``model``: "tiny" (a random EGNN built from ``config``) or a folder with
    config.json + model.safetensors (what :meth:`save_pretrained` writes)."""

    default_step_rule = "ddim"

    def __init__(self, model: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 init_seed: int = 0, **overrides):
        folder = None if model == "tiny" else model
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"molecule model {model!r} is neither 'tiny' nor a folder")
        base = ModelConfig.read(folder) if folder else ModelConfig()
        self.config = ModelConfig(**{**base, **overrides})  # overrides: options given beside the model
        c = self.config
        self.atom_types = tuple(c["atom_types"])
        self.max_atoms, self.min_atoms = int(c["max_atoms"]), int(c["min_atoms"])
        self.max_pocket_atoms, self.pocket_radius = int(c["max_pocket_atoms"]), float(c["pocket_radius"])
        self.feature_scale = float(c["feature_scale"])
        self.sizes = (SizeDistribution.from_dict(c["size_distribution"]) if c["size_distribution"]
                      else SizeDistribution(self.min_atoms, self.max_atoms))
        if not (self.sizes.min_atoms >= 1 and self.sizes.max_atoms <= self.max_atoms):
            raise ValueError(f"the size distribution's counts {self.sizes.min_atoms}..{self.sizes.max_atoms} must lie "
                             f"within 1..max_atoms = {self.max_atoms}")
        self.device, self.dtype = torch.device(device), dtype
        self.scheduler = make_scheduler(int(c["num_train_timesteps"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            net = EGNNDenoiser(len(self.atom_types), len(POCKET_ELEMENTS) + 1, int(c["hidden"]), int(c["layers"]))
        if folder:
            from safetensors.torch import load_file
            weights = os.path.join(folder, WEIGHTS_NAME)
            if not os.path.isfile(weights):
                raise ValueError(f"molecule model folder {folder!r} has no {WEIGHTS_NAME}")
            try:
                net.load_state_dict(load_file(weights))
            except RuntimeError as exc:
                raise ValueError(f"{weights} does not match its {CONFIG_NAME}: {exc}") from None
        self.denoiser = net.to(self.device, dtype)
        self._frozen_copy = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        self._in_reference = False
        self.decode_stats = DecodeStats()
        self._reported = DecodeStats()  # decode_stats at the last metrics() call

    def pretrain(self, items: Sequence[Any], steps: int, seed: int = 0) -> List[float]:
        """Fit the denoiser to fragments in the pockets of ``items`` (pretrain.py: a stand-in for a pretrained base
        model), then take the frozen reference from the result; returns the losses."""
        from diffalign.modalities.molecule.pretrain import pretrain
        losses = pretrain(self, items, steps, seed=seed)
        self._frozen_copy = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        return losses

    def fit_sizes(self, items: Sequence[Any], atom_counts: Sequence[int], bounds: Sequence[float]) -> SizeDistribution:
        """Fit the atom-count distribution to training complexes (their pocket items and ligand atom counts, as
        data.read_complexes gives them), binned by pocket size at ``bounds``; it becomes the model's and is saved
        with it."""
        sizes = [space_size(self.pocket_of(item)[0]) for item in items]
        self.sizes = SizeDistribution.fit(sizes, atom_counts, bounds, self.min_atoms, self.max_atoms)
        return self.sizes

    @property
    def num_features(self) -> int:
        return 3 + len(self.atom_types)

    # ---- conditions ----------------------------------------------------------------------------------------
    def pocket_of(self, item: Any):
        """(pocket coordinates (P, 3), elements, centre (3,)) of an item, absolute coordinates."""
        if not isinstance(item, dict) or "pocket" not in item:
            raise ValueError(f"molecule prompt item {item!r} must be a mapping with 'pocket' (a PDB file)")
        center = item.get("center")
        if center is not None and (not isinstance(center, (list, tuple)) or len(center) != 3):
            raise ValueError(f"molecule prompt item {item!r}: 'center' must be [x, y, z]")
        coords, elements = read_pdb_atoms(item["pocket"])
        pos, elem, c = select_pocket(coords, elements, center, self.pocket_radius, self.max_pocket_atoms)
        if pos.shape[0] == 0:
            raise ValueError(f"pocket {item['pocket']!r} has no atom within pocket_radius = {self.pocket_radius} A "
                             f"of the centre {c.tolist()}")
        return pos, elem, c

    def num_atoms(self, item: Any, pocket_pos: torch.Tensor, generator: Optional[torch.Generator]) -> int:
        n = item.get("num_atoms")
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_atoms:
                raise ValueError(f"molecule prompt item {item!r}: num_atoms must be an integer in 1..{self.max_atoms}")
            return n
        return self.sizes.sample(space_size(pocket_pos), generator)

    def pocket_conditions(self, pockets: Sequence[tuple], sizes: Sequence[int]) -> Conditions:
        """Conditions from (coordinates, elements, centre) per sample and atom counts (absolute coordinates in)."""
        b, p = len(pockets), self.max_pocket_atoms
        pos, feat, pmask = torch.zeros(b, p, 3, dtype=torch.float64), torch.zeros(b, p, len(POCKET_ELEMENTS) + 1), \
            torch.zeros(b, p)
        centers = torch.zeros(b, 3, dtype=torch.float64)
        for i, (coords, elements, c) in enumerate(pockets):
            k = min(coords.shape[0], p)
            pos[i, :k] = coords[:k] - c
            feat[i, :k] = pocket_features(elements[:k])
            pmask[i, :k] = 1
            centers[i] = c
        mask = (torch.arange(self.max_atoms)[None] < torch.tensor(list(sizes))[:, None]).float()
        to = lambda t: t.to(self.device, self.dtype)  # noqa: E731
        return {"mask": to(mask), "pocket_pos": to(pos), "pocket_feat": to(feat), "pocket_mask": to(pmask),
                # the centre stays float64: absolute PDB coordinates (tens of angstrom) lose digits in bf16
                "pocket_center": centers.to(self.device)}

    def encode_conditions(self, items: Sequence[Any], generator: Generators = None) -> Conditions:
        pockets = [self.pocket_of(item) for item in items]
        sizes = [self.num_atoms(item, pos, g)
                 for item, (pos, _, _), g in zip(items, pockets, item_generators(generator, len(items)))]
        return self.pocket_conditions(pockets, sizes)

    # ---- noise and the subspace ----------------------------------------------------------------------------
    def initial_noise(self, cond: Conditions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = cond["mask"].shape[0]
        gen_device = generator.device if generator is not None else self.device
        noise = torch.randn((b, self.max_atoms, self.num_features), generator=generator, device=gen_device)
        return self.project_noise(noise.to(self.device, self.dtype), cond)

    def project_noise(self, noise: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return center_ligand(noise, cond["mask"])

    def project(self, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return center_ligand(x, cond["mask"])

    def logprob_mask(self, cond: Conditions, x: torch.Tensor) -> torch.Tensor:
        return cond["mask"].to(x.dtype).unsqueeze(-1)  # (B, N, 1): every feature of each atom present

    def logprob_dims(self, cond: Conditions, x: torch.Tensor) -> torch.Tensor:
        n = cond["mask"].sum(1)
        return 3 * (n - 1) + len(self.atom_types) * n  # the centroid is fixed; type features are free

    # ---- the denoiser --------------------------------------------------------------------------------------
    def denoise(self, x, timesteps, cond):
        model = self._frozen_copy if self._in_reference else self.denoiser  # both in self.dtype
        dtype = self.dtype
        t = timesteps.to(self.device, torch.float64) / self.scheduler.config.num_train_timesteps  # in [0, 1)
        out = model(x.to(dtype), t, cond["mask"], cond["pocket_pos"].to(dtype),
                    cond["pocket_feat"].to(dtype), cond["pocket_mask"])
        # projected output: the posterior mean stays in the subspace, where the log-prob is a density
        return center_ligand(out, cond["mask"]).to(x.dtype)

    # ---- decode / encode -----------------------------------------------------------------------------------
    def absolute_coordinates(self, x0: torch.Tensor, cond: Conditions) -> List[torch.Tensor]:
        """Each sample's atoms (n, 3) in the pocket PDB's coordinates (float64)."""
        sizes = cond["mask"].sum(1).long().tolist()
        center = cond["pocket_center"].to(torch.float64)
        return [x0[b, :n, :3].detach().to(torch.float64) + center[b] for b, n in enumerate(sizes)]

    def atom_elements(self, x0: torch.Tensor, cond: Conditions) -> List[List[str]]:
        """Each sample's elements: the argmax of its type features."""
        sizes = cond["mask"].sum(1).long().tolist()
        return [[self.atom_types[k] for k in x0[b, :n, 3:].argmax(-1).tolist()] for b, n in enumerate(sizes)]

    @torch.no_grad()
    def decode(self, x0, cond):
        out = []
        for pos, elements in zip(self.absolute_coordinates(x0, cond), self.atom_elements(x0, cond)):
            mol, why = build_molecule(pos, elements)
            self.decode_stats["samples"] += 1
            self.decode_stats["valid" if mol is not None else f"invalid_{why}"] += 1
            out.append(mol)
        return out

    def metrics(self) -> Dict[str, float]:
        """Decode validity since the last call: ``decode/validity`` and ``decode/invalid_<reason>`` (shares of the
        samples decoded) and ``decode/samples`` (their count); ``decode_stats`` itself keeps the running totals."""
        since = DecodeStats(self.decode_stats - self._reported)
        self._reported = DecodeStats(self.decode_stats)
        if not since["samples"]:
            return {}
        return {**since.as_metrics(), "decode/samples": float(since["samples"])}

    def load_sample(self, ref: Any):
        """An SDF file (its first molecule) or an RDKit Mol -> the Mol, hydrogens removed."""
        from diffalign.modalities.molecule.sdf import read_sdf
        return read_sdf(ref) if isinstance(ref, (str, os.PathLike)) else ref

    def save_sample(self, sample: Any, folder: str, name: str) -> str:
        from diffalign.modalities.molecule.sdf import write_sdf
        if sample is None:
            raise ValueError(f"molecule sample {name!r} is None (its bonds could not be perceived): no SDF to write")
        os.makedirs(folder, exist_ok=True)
        write_sdf(sample, os.path.join(folder, f"{name}.sdf"))
        return f"{name}.sdf"

    def ligand_tensor(self, mol) -> torch.Tensor:
        """(n, 3 + K) absolute coordinates and scaled one-hot types of a molecule's heavy atoms."""
        from rdkit import Chem
        mol = Chem.RemoveHs(mol, sanitize=False)
        if mol.GetNumConformers() == 0:
            raise ValueError("molecule has no 3-D conformer")
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        unknown = sorted(set(symbols) - set(self.atom_types))
        if unknown:
            raise ValueError(f"molecule has elements {unknown} outside the model's atom_types {list(self.atom_types)}")
        if not 1 <= len(symbols) <= self.max_atoms:
            raise ValueError(f"molecule has {len(symbols)} heavy atoms; the model holds 1..{self.max_atoms}")
        pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64)
        types = torch.zeros(len(symbols), len(self.atom_types), dtype=torch.float64)
        types[torch.arange(len(symbols)), torch.tensor([self.atom_types.index(s) for s in symbols])] = self.feature_scale
        return torch.cat([pos, types], -1)

    def encode(self, samples, items):
        """Stored ligands (RDKit Mols with a conformer, as load_sample gives) and their pocket items -> (x0 in
        the pocket frame, conditions with each ligand's atom count). An item without ``center`` is centred on
        its ligand's centroid, so the stored pose keeps its place in the pocket."""
        bad = [item for item in items if not isinstance(item, dict)]
        if bad:
            raise ValueError(f"molecule prompt items must be mappings with 'pocket'; got {bad[0]!r}")
        rows = [self.ligand_tensor(m) for m in samples]
        items = [dict(item, num_atoms=r.shape[0], center=item.get("center") or r[:, :3].mean(0).tolist())
                 for item, r in zip(items, rows)]
        cond = self.encode_conditions(items)
        x0 = torch.zeros(len(rows), self.max_atoms, self.num_features, dtype=torch.float64)
        for b, r in enumerate(rows):
            x0[b, :r.shape[0]] = r
            x0[b, :r.shape[0], :3] -= cond["pocket_center"][b].cpu()
        return self.project(x0.to(self.device, self.dtype), cond), cond

    def rewards(self):
        from diffalign.modalities.molecule.rewards import MOLECULE_REWARDS
        return dict(MOLECULE_REWARDS)

    # ---- training state ------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in unwrap(self.denoiser).state_dict().items()}

    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        unwrap(self.denoiser).load_state_dict(state)

    def save_pretrained(self, directory: str) -> None:
        """config.json + model.safetensors: a folder ``model:`` loads back."""
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        config = dict(self.config, size_distribution=self.sizes.to_dict())
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.trainable_state_dict().items()},
                  os.path.join(directory, WEIGHTS_NAME))
