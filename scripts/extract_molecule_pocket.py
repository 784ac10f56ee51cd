"""Cut the bundled docking pocket (diffalign/assets/molecule_pocket/) out of a complex the posebusters package ships.

The shipped files were made by exactly this command (posebusters 0.6.5, rdkit 2026.9.1, meeko 0.8.0, vina 1.2.7):

    python scripts/extract_molecule_pocket.py --complex 1s3v --cutoff 8.0 --output diffalign/assets/molecule_pocket

Complex 1s3v (PDB): dihydrofolate reductase with its crystal ligand TQD, the smallest protein of the four that
posebusters ships (1502 heavy atoms), a closed, buried pocket that docking scores well. The pocket keeps every
whole residue with any heavy atom within ``--cutoff`` angstrom of any ligand heavy atom (TargetDiff and
Pocket2Mol cut at 8-10 A), in the protein's order with its original numbering, so the PDB stays readable by
residue-template tools (meeko). Written: ``<id>_pocket.pdb``, ``<id>_ligand.sdf`` (the crystal ligand, copied
unchanged) and ``pocket.json`` (source, cutoff, residue list, ligand centre and box, which docking uses).

It then documents AutoDock Vina on the crystal ligand in the pocket (``pocket.json``'s ``vina_crystal_ligand``),
prepared with meeko's own command-line tools (``mk_prepare_receptor.py``, ``mk_prepare_ligand.py``; hydrogens
added by RDKit with coordinates) and scored with the ``vina`` Python API in the box above: score only, local
minimisation, and docking (exhaustiveness 8, seed 0), in kcal/mol. tests/rewards/test_molecule_docking.py checks
that diffalign's ``vina`` reward reproduces these numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np


def _posebusters_complex(name: str):
    import posebusters
    root = os.path.join(os.path.dirname(posebusters.__file__), "datasets", "pdb", name)
    protein = os.path.join(root, f"{name}_protein_one_lig_removed.pdb")
    ligand = os.path.join(root, f"{name}_ligand.sdf")
    for path in (protein, ligand):
        if not os.path.isfile(path):
            raise SystemExit(f"posebusters ships no complex {name!r}: {path} does not exist")
    return protein, ligand


def _ligand_coords(sdf: str) -> np.ndarray:
    from rdkit import Chem
    mol = next(iter(Chem.SDMolSupplier(sdf, removeHs=False)))
    if mol is None:
        raise SystemExit(f"{sdf}: RDKit cannot read the ligand")
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    return mol.GetConformer().GetPositions()[heavy]


def pocket_lines(pdb_path: str, ligand_xyz: np.ndarray, cutoff: float):
    """The ATOM lines of whole residues with a heavy atom within ``cutoff`` A of the ligand, and their ids."""
    residues = {}  # (chain, resseq, icode) -> list of lines, in file order
    for line in open(pdb_path):
        if line.startswith("ATOM"):
            residues.setdefault((line[21], int(line[22:26]), line[26]), []).append(line)
    keep = []
    for key, lines in residues.items():
        xyz = np.array([[float(l[30:38]), float(l[38:46]), float(l[46:54])] for l in lines
                        if l[76:78].strip() != "H"])
        d = np.sqrt(((xyz[:, None, :] - ligand_xyz[None, :, :]) ** 2).sum(-1)).min()
        if d <= cutoff:
            keep.append(key)
    return [l for k in keep for l in residues[k]], keep


def vina_run(pocket_pdb: str, ligand_sdf: str, center, box, seed: int = 0, exhaustiveness: int = 8) -> dict:
    """Vina energies (kcal/mol) of the crystal ligand: as posed, locally minimised, and re-docked."""
    from rdkit import Chem
    from vina import Vina
    bindir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([os.path.join(bindir, "mk_prepare_receptor.py"), "--read_pdb", pocket_pdb,
                        "-o", os.path.join(tmp, "receptor"), "-p"], check=True, capture_output=True)
        mol = Chem.AddHs(Chem.MolFromMolFile(ligand_sdf), addCoords=True)
        Chem.MolToMolFile(mol, os.path.join(tmp, "ligand_h.sdf"))
        subprocess.run([os.path.join(bindir, "mk_prepare_ligand.py"), "-i", os.path.join(tmp, "ligand_h.sdf"),
                        "-o", os.path.join(tmp, "ligand.pdbqt")], check=True, capture_output=True)
        out = {}
        for mode in ("score", "minimize", "dock"):
            v = Vina(sf_name="vina", cpu=1, seed=seed, verbosity=0)
            v.set_receptor(os.path.join(tmp, "receptor.pdbqt"))
            v.set_ligand_from_file(os.path.join(tmp, "ligand.pdbqt"))
            v.compute_vina_maps(center=list(center), box_size=list(box))
            if mode == "score":
                out[mode] = float(v.score()[0])
            elif mode == "minimize":
                out[mode] = float(v.optimize()[0])
            else:
                v.dock(exhaustiveness=exhaustiveness, n_poses=1)
                out[mode] = float(v.energies(n_poses=1)[0][0])
    return {"kcal_per_mol": out, "scoring": "vina", "dock_exhaustiveness": exhaustiveness, "seed": seed,
            "box": "center/box above", "prepared_with": "mk_prepare_receptor.py --read_pdb; RDKit AddHs(addCoords) "
            "then mk_prepare_ligand.py"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--complex", default="1s3v", help="a posebusters example complex id")
    ap.add_argument("--cutoff", type=float, default=8.0, help="angstrom, residue-to-ligand heavy-atom distance")
    ap.add_argument("--padding", type=float, default=4.0, help="angstrom added to the ligand's extent for the docking box")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    protein, ligand = _posebusters_complex(args.complex)
    xyz = _ligand_coords(ligand)
    lines, keep = pocket_lines(protein, xyz, args.cutoff)
    os.makedirs(args.output, exist_ok=True)
    pocket_pdb = os.path.join(args.output, f"{args.complex}_pocket.pdb")
    with open(pocket_pdb, "w") as f:
        f.write(f"REMARK   1 POCKET OF {args.complex.upper()} (POSEBUSTERS EXAMPLE), RESIDUES WITHIN {args.cutoff:.1f} A "
                f"OF THE CRYSTAL LIGAND\n")
        f.writelines(lines)
        f.write("END\n")
    shutil.copyfile(ligand, os.path.join(args.output, f"{args.complex}_ligand.sdf"))
    centre = (xyz.min(0) + xyz.max(0)) / 2
    box = xyz.max(0) - xyz.min(0) + 2 * args.padding
    meta = {"source": f"posebusters example complex {args.complex} ({os.path.basename(protein)})",
            "command": f"python scripts/extract_molecule_pocket.py --complex {args.complex} --cutoff {args.cutoff} "
                       f"--padding {args.padding} --output {args.output}",
            "cutoff_angstrom": args.cutoff, "n_residues": len(keep), "n_atoms": len(lines),
            "residues": [f"{c}:{r}{i.strip()}" for c, r, i in keep],
            "pocket": os.path.basename(pocket_pdb), "ligand": f"{args.complex}_ligand.sdf",
            "center": [round(float(v), 3) for v in centre], "box": [round(float(v), 3) for v in box],
            "box_padding_angstrom": args.padding}
    meta["vina_crystal_ligand"] = vina_run(pocket_pdb, ligand, meta["center"], meta["box"])
    with open(os.path.join(args.output, "pocket.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{pocket_pdb}: {len(keep)} residues, {len(lines)} atoms; Vina on the crystal ligand (kcal/mol): "
          f"{meta['vina_crystal_ligand']['kcal_per_mol']}")


if __name__ == "__main__":
    main()
