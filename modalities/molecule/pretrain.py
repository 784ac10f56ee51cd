"""A stand-in for pretraining the tiny model: a few hundred denoising steps on small drug-like fragments placed
in the configured pockets, so that an untrained EGNN's samples are compact molecules rather than exploded
clouds (a random x0-predictor returns x_T, a cloud of atoms on top of each other). The toy modalities
pretrain the same way; a real base model is trained by a script on real complexes and loaded from its folder.

Fragments: ``FRAGMENTS`` (SMILES of at most 12 heavy atoms over the model's atom types), each embedded once
with RDKit's ETKDG (fixed seed) and MMFF-optimised, then in every batch randomly rotated and centred on the
pocket centre. The loss is the masked mean squared error of the predicted clean ligand (the model predicts
x0, as TargetDiff's), at a training index drawn uniformly.
"""
from __future__ import annotations

import functools
from typing import Any, List, Sequence, Tuple

import torch

__all__ = ["FRAGMENTS", "fragment_conformers", "pretrain"]

FRAGMENTS = ("c1ccccc1", "c1ccncc1", "Oc1ccccc1", "Nc1ccccc1", "Cc1ccccc1", "OC(=O)c1ccccc1", "c1ccc2ccccc2c1",
             "c1cc[nH]c1", "c1c[nH]cn1", "CC(=O)Nc1ccccc1", "CC(=O)O", "CCO", "CC(C)=O", "CNC(C)=O",
             "OCC(O)CO", "c1ccsc1", "Clc1ccccc1", "Fc1ccccc1", "O=C1CCCN1", "C1CCOC1", "CS(C)=O", "NC(=O)c1ccncc1")


@functools.lru_cache(maxsize=4)
def fragment_conformers(max_atoms: int, atom_types: Tuple[str, ...]) -> List[Tuple[torch.Tensor, List[str]]]:
    """(heavy-atom coordinates (n, 3) centred, elements) of every fragment that fits the model."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    out = []
    for smi in FRAGMENTS:
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        if AllChem.EmbedMolecule(mol, randomSeed=0) != 0:
            continue
        AllChem.MMFFOptimizeMolecule(mol)
        mol = Chem.RemoveHs(mol)
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        if len(symbols) > max_atoms or not set(symbols) <= set(atom_types):
            continue
        pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64)
        out.append((pos - pos.mean(0), symbols))
    return out


def _random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def pretrain(adapter, items: Sequence[Any], steps: int, batch: int = 16, lr: float = 3e-3, seed: int = 0) -> List[float]:
    """Fit ``adapter.denoiser`` to fragments in the pockets of ``items`` (mappings with ``pocket``); returns the
    losses. Run before the frozen reference is taken, so the reference is this pretrained model."""
    frags = fragment_conformers(adapter.max_atoms, tuple(adapter.atom_types))
    if not frags:
        raise ValueError(f"no pretraining fragment fits max_atoms = {adapter.max_atoms}")
    pockets = [adapter.pocket_of(item) for item in items]
    g = torch.Generator().manual_seed(seed)
    model = adapter.denoiser
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ac = adapter.scheduler.alphas_cumprod.to(torch.float64)
    losses = []
    for _ in range(int(steps)):
        picks = torch.randint(len(frags), (batch,), generator=g).tolist()
        where = torch.randint(len(pockets), (batch,), generator=g).tolist()
        cond = adapter.pocket_conditions([pockets[w] for w in where], [frags[k][0].shape[0] for k in picks])
        x0 = torch.zeros(batch, adapter.max_atoms, adapter.num_features, dtype=torch.float64)
        for b, k in enumerate(picks):
            pos, symbols = frags[k]
            n = pos.shape[0]
            x0[b, :n, :3] = pos @ _random_rotation(g).T
            x0[b, torch.arange(n), 3 + torch.tensor([adapter.atom_types.index(s) for s in symbols])] = adapter.feature_scale
        x0 = x0.to(adapter.device, adapter.dtype)
        t = torch.randint(ac.numel(), (batch,), generator=g)
        a = ac[t].to(adapter.device, adapter.dtype).reshape(-1, 1, 1)
        noise = adapter.project_noise(torch.randn(x0.shape, generator=g, dtype=torch.float64).to(x0), cond)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = adapter.denoise(x_t, t.to(adapter.device), cond)
        m = cond["mask"].unsqueeze(-1)
        loss = (((pred - x0) ** 2) * m).sum() / (m.sum() * adapter.num_features)  # the model predicts x0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    return losses
