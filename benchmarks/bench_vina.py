"""Throughput of the ``vina`` reward on the bundled pocket (diffalign/assets/molecule_pocket), per worker count.

    OMP_NUM_THREADS=1 python benchmarks/bench_vina.py --molecules 16 --workers 1 2 --mode minimize

The molecules are the crystal ligand TQD with every atom moved by N(0, 0.3 A) noise (seeded): poses as a
generator might give them, all valid, so the numbers time Vina and meeko, not failure paths. Prompt items carry
pocket.json's box, so each worker computes the grid maps once; a warm-up call (one molecule per worker)
starts the workers and computes the maps before the clock starts. Prints one JSON line per worker count:
seconds, seconds per molecule, mean reward, the reward's failure counts, the CPU and its load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

ASSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "diffalign", "assets", "molecule_pocket")


def perturbed_ligands(n: int, sigma: float = 0.3, seed: int = 0):
    """``n`` copies of the crystal ligand, every atom moved by N(0, sigma) angstrom noise."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D
    base = Chem.MolFromMolFile(os.path.join(ASSET, "1s3v_ligand.sdf"))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mol = Chem.Mol(base)
        conf = mol.GetConformer()
        for j in range(mol.GetNumAtoms()):
            p, d = conf.GetAtomPosition(j), rng.normal(0.0, sigma, 3)
            conf.SetAtomPosition(j, Point3D(p.x + d[0], p.y + d[1], p.z + d[2]))
        out.append(mol)
    return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(molecules: int, workers: int, mode: str) -> dict:
    from diffalign.rewards.docking import VinaReward
    meta = json.load(open(os.path.join(ASSET, "pocket.json")))
    item = {"pocket": os.path.join(ASSET, meta["pocket"]), "center": meta["center"], "box": meta["box"]}
    mols = perturbed_ligands(molecules)
    reward = VinaReward(mode=mode, workers=workers)
    try:
        reward(mols[:workers], [item] * min(workers, molecules))  # start the workers, compute the maps
        t0 = time.perf_counter()
        r = reward(mols, [item] * molecules)
        seconds = time.perf_counter() - t0
    finally:
        reward.close()
    return {"mode": mode, "workers": workers, "molecules": molecules, "seconds": round(seconds, 3),
            "seconds_per_molecule": round(seconds / molecules, 3), "reward_mean": round(float(r.mean()), 3),
            "stats": dict(reward.stats), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--molecules", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mode", default="minimize", choices=["score", "minimize", "dock"])
    args = ap.parse_args(argv)
    rows = [run(args.molecules, w, args.mode) for w in args.workers]
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
