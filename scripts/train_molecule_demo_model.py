"""Train the shipped pocket-conditioned molecule model of ``diffalign demo molecule`` (diffalign/assets/molecule_demo_model).

Data, all shipped by installed packages or the repository:
- ligands: SMILES of the MOSES training set (``moses/dataset/data/train.csv.gz`` of the ``molsets`` package; only
  that file is read, the package is not imported), kept when every heavy atom is one of the model's atom types and
  there are at most ``--max-atoms`` of them; a seeded random subset of ``--molecules``;
- conformers: RDKit ETKDG (seeded) then MMFF, hydrogens removed;
- pockets: the two bundled posebusters cuts, 1s3v (diffalign/assets/molecule_pocket, the demo's) and 1uou
  (modalities/molecule/pockets), each centred on its crystal ligand's centroid.

Placement (no docking: it would cost seconds per ligand): each training ligand's centroid sits on the pocket
centre (the model's frame) and, of ``--rotations`` random orientations, the one whose closest ligand-pocket atom
distance is largest is kept, so the model learns poses that do not run into the pocket. The loss is the adapter's
x0 regression (modalities/molecule/pretrain.py's: masked mean squared error of the predicted clean ligand at a
uniformly drawn training index).

    python scripts/train_molecule_demo_model.py --minutes 20 --seed 0

(``--steps N`` instead of ``--minutes`` repeats a run step for step: the shipped model's exact command is in its
train_info.json.)

writes config.json + model.safetensors (a folder the molecule adapter loads) and train_info.json (command, seed,
wall time, CPU, threads, data counts, loss curve).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import os
import platform
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POCKETS = (  # (pocket PDB, crystal ligand SDF), relative to the repository root
    ("diffalign/assets/molecule_pocket/1s3v_pocket.pdb", "diffalign/assets/molecule_pocket/1s3v_ligand.sdf"),
    ("modalities/molecule/pockets/1uou_pocket10.pdb", "modalities/molecule/pockets/1uou_ligand.sdf"),
)


def moses_smiles_path() -> str:
    """The MOSES training SMILES file inside the installed molsets package (found without importing it: its
    __init__ pulls in dependencies this project does not install)."""
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the molsets package is not installed: pip install --no-deps molsets "
                         "(scripts/install.sh does it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "dataset", "data", "train.csv.gz")
    if not os.path.isfile(path):
        raise SystemExit(f"molsets is installed but has no {path}")
    return path


def read_smiles(path: str):
    with gzip.open(path, "rt") as f:
        return [row["SMILES"] for row in csv.DictReader(f)]


def conformers(smiles, atom_types, max_atoms: int, count: int, seed: int):
    """Up to ``count`` (coordinates (n, 3) centred float64, elements) from a seeded shuffle of ``smiles``; returns
    them and the reasons others were skipped."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem
    RDLogger.DisableLog("rdApp.*")
    order = torch.randperm(len(smiles), generator=torch.Generator().manual_seed(seed)).tolist()
    out, skipped = [], {"elements": 0, "too_many_atoms": 0, "embedding": 0}
    for i in order:
        if len(out) >= count:
            break
        mol = Chem.MolFromSmiles(smiles[i])
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        if not set(symbols) <= set(atom_types):
            skipped["elements"] += 1
            continue
        if len(symbols) > max_atoms:
            skipped["too_many_atoms"] += 1
            continue
        mol = Chem.AddHs(mol)
        if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
            skipped["embedding"] += 1
            continue
        AllChem.MMFFOptimizeMolecule(mol)
        mol = Chem.RemoveHs(mol)
        pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64)
        out.append((pos - pos.mean(0), [a.GetSymbol() for a in mol.GetAtoms()]))
    return out, skipped


def random_rotations(k: int, generator: torch.Generator) -> torch.Tensor:
    """(k, 3, 3) rotations, uniform (QR of a Gaussian matrix with the sign fix, determinant forced to +1)."""
    q, r = torch.linalg.qr(torch.randn(k, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    q[:, :, 0] *= torch.sign(torch.linalg.det(q)).unsqueeze(-1)  # a reflection becomes a rotation
    return q


def least_clashing_pose(pos: torch.Tensor, pocket: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``pos`` (n, 3) rotated by the rotation whose closest ligand-pocket distance is largest (pocket (P, 3), both
    in the pocket frame)."""
    posed = torch.einsum("kij,nj->kni", rotations, pos)                      # (k, n, 3)
    closest = torch.cdist(posed, pocket.expand(len(rotations), -1, -1)).amin((1, 2))
    return posed[int(closest.argmax())]


@torch.no_grad()
def update_average(average, params, decay: float) -> None:
    """average <- decay * average + (1 - decay) * params, tensor by tensor (the weights' moving average)."""
    for a, q in zip(average, params):
        a.lerp_(q.detach(), 1.0 - decay)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=os.path.join(REPO, "diffalign", "assets", "molecule_demo_model"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget (conformers excluded)")
    p.add_argument("--steps", type=int, default=0,
                   help="train exactly this many steps instead of for --minutes (reproduces a run: its "
                        "train_info.json records the steps it made)")
    p.add_argument("--molecules", type=int, default=3000)
    p.add_argument("--max-atoms", type=int, default=20)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rotations", type=int, default=16, help="orientations tried per placed ligand")
    p.add_argument("--ema", type=float, default=0.0,
                   help="decay of an exponential moving average of the weights, saved instead of the last weights "
                        "(E(3) diffusion uses 0.999); 0: no average")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    from diffalign.modalities.molecule.adapter import ATOM_TYPES, MoleculeAdapter
    from diffalign.modalities.molecule.sdf import read_sdf
    adapter = MoleculeAdapter("tiny", init_seed=args.seed, hidden=args.hidden, layers=args.layers,
                              max_atoms=args.max_atoms, min_atoms=4, max_pocket_atoms=64)
    mols, skipped = conformers(read_smiles(moses_smiles_path()), ATOM_TYPES, args.max_atoms, args.molecules, args.seed)
    items = []
    for pdb, sdf in POCKETS:
        lig = read_sdf(os.path.join(REPO, sdf))
        items.append({"pocket": os.path.join(REPO, pdb),
                      "center": [round(v, 3) for v in lig.GetConformer().GetPositions().mean(0).tolist()]})
    counts = [m[0].shape[0] for m in mols]
    # one size bin: both pockets share the MOSES atom-count histogram
    adapter.fit_sizes(items * len(counts), counts * len(items), bounds=[])
    pockets = [adapter.pocket_of(item) for item in items]
    conformer_seconds = time.perf_counter() - t0
    print(f"{len(mols)} conformers in {conformer_seconds:.0f} s (skipped {skipped})", flush=True)

    g = torch.Generator().manual_seed(args.seed)
    model = adapter.denoiser
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    if not 0.0 <= args.ema < 1.0:
        raise SystemExit(f"--ema must be in [0, 1), got {args.ema}")
    ema = [q.detach().clone() for q in model.parameters()] if args.ema else None
    ac = adapter.scheduler.alphas_cumprod.to(torch.float64)
    losses, step, t_train = [], 0, time.perf_counter()
    if args.steps < 0:
        raise SystemExit(f"--steps must be >= 0, got {args.steps}")

    def more() -> bool:
        return step < args.steps if args.steps else time.perf_counter() - t_train < args.minutes * 60
    while more():
        picks = torch.randint(len(mols), (args.batch,), generator=g).tolist()
        where = torch.randint(len(pockets), (args.batch,), generator=g).tolist()
        cond = adapter.pocket_conditions([pockets[w] for w in where], [mols[k][0].shape[0] for k in picks])
        x0 = torch.zeros(args.batch, adapter.max_atoms, adapter.num_features, dtype=torch.float64)
        for b, (k, w) in enumerate(zip(picks, where)):
            pos, symbols = mols[k]
            n = pos.shape[0]
            x0[b, :n, :3] = least_clashing_pose(pos, pockets[w][0] - pockets[w][2], random_rotations(args.rotations, g))
            x0[b, torch.arange(n), 3 + torch.tensor([ATOM_TYPES.index(s) for s in symbols])] = adapter.feature_scale
        x0 = adapter.project(x0.float(), cond)
        t = torch.randint(ac.numel(), (args.batch,), generator=g)
        a = ac[t].float().reshape(-1, 1, 1)
        noise = adapter.project_noise(torch.randn(x0.shape, generator=g), cond)
        pred = adapter.denoise(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, cond)
        m = cond["mask"].unsqueeze(-1)
        loss = (((pred - x0) ** 2) * m).sum() / (m.sum() * adapter.num_features)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            update_average(ema, model.parameters(), args.ema)
        losses.append(float(loss.detach()))
        step += 1
        if step % 200 == 0:
            print(f"step {step}: loss {sum(losses[-200:]) / 200:.4f} ({time.perf_counter() - t_train:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - t_train
    if ema is not None:
        with torch.no_grad():
            for q, e in zip(model.parameters(), ema):
                q.copy_(e)
    adapter.save_pretrained(args.output)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    window = 200
    info = {"command": "python scripts/train_molecule_demo_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "args": dict(vars(args), output=os.path.relpath(args.output, REPO)), "seed": args.seed, "steps": step,
            "seconds": {"conformers": conformer_seconds, "train": train_seconds,
                        "total": time.perf_counter() - t0},
            "cpu": cpu, "torch_threads": torch.get_num_threads(), "load_average_at_end": list(os.getloadavg()),
            "precision": "float32", "torch": torch.__version__,
            "data": {"source": "molsets " + os.path.relpath(moses_smiles_path(), os.path.dirname(os.path.dirname(
                os.path.dirname(moses_smiles_path())))), "molecules": len(mols), "skipped": skipped,
                "pockets": [{"pocket": pdb, "ligand": sdf, "center": it["center"]}
                            for (pdb, sdf), it in zip(POCKETS, items)]},
            "loss_every_200_steps": [sum(losses[i:i + window]) / len(losses[i:i + window])
                                     for i in range(0, len(losses), window)]}
    with open(os.path.join(args.output, "train_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"saved {args.output}: {step} steps in {train_seconds:.0f} s, final loss "
          f"{info['loss_every_200_steps'][-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
