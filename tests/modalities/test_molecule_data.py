"""Molecule decode / encode and data: bond perception on known molecules, SDF round trips, the complexes reader
on the posebusters package's complexes with bad rows counted by reason, the preference layout, PDB parsing and
the pocket_contact reward against direct computations."""
import json
import os
import shutil

import pytest
import torch

from diffalign.modalities.molecule import MoleculeAdapter, build_molecule, pocket_contact, read_complexes
from diffalign.modalities.molecule.data import load_molecule_preferences
from diffalign.modalities.molecule.pocket import cut_pocket, read_pdb_atoms
from diffalign.modalities.molecule.sdf import read_sdf

Chem = pytest.importorskip("rdkit.Chem")  # the molecule extra (scripts/install.sh installs it)
from rdkit.Chem import AllChem  # noqa: E402


def posebusters_dir():
    import posebusters
    return os.path.join(os.path.dirname(posebusters.__file__), "datasets", "pdb")


def embedded(smiles, seed=0):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(mol)
    return Chem.RemoveHs(mol)


def canonical(mol):
    return Chem.MolToSmiles(mol)


# ---- bond perception --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smiles", ["CCO", "c1ccccc1", "CC(=O)O", "CC#N", "c1ccncc1", "CC(=O)Nc1ccc(O)cc1",
                                    "CC(=O)Oc1ccccc1C(=O)O", "c1ccc2ccccc2c1"])
def test_bonds_perceived_from_embedded_coordinates_give_back_the_molecule(smiles):
    ref = embedded(smiles)
    mol, why = build_molecule(torch.tensor(ref.GetConformer().GetPositions()), [a.GetSymbol() for a in ref.GetAtoms()])
    assert why == "valid" and canonical(mol) == canonical(ref)
    torch.testing.assert_close(torch.tensor(mol.GetConformer().GetPositions()),
                               torch.tensor(ref.GetConformer().GetPositions()))


def test_unbuildable_geometry_is_none_and_counted():
    crowded = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0]])
    assert build_molecule(crowded, ["C"] * 6) == (None, "sanitization")  # a carbon with five neighbours
    assert build_molecule(torch.full((2, 3), float("nan")), ["C", "C"]) == (None, "nonfinite")
    a = MoleculeAdapter(max_atoms=6, min_atoms=2, max_pocket_atoms=8, hidden=8, layers=1)
    ethanol = embedded("CCO")
    x0 = torch.zeros(2, 6, a.num_features)
    x0[0, :6, :3], x0[0, :6, 3] = crowded, 1.0
    x0[1, :3, :3] = torch.tensor(ethanol.GetConformer().GetPositions(), dtype=torch.float32)
    x0[1, torch.arange(3), 3 + torch.tensor([0, 0, 2])] = 1.0  # C, C, O
    cond = {"mask": torch.tensor([[1.0] * 6, [1.0] * 3 + [0.0] * 3]), "pocket_center": torch.zeros(2, 3, dtype=torch.float64)}
    mols = a.decode(x0, cond)
    assert mols[0] is None and canonical(mols[1]) == "CCO"  # kept in batch order, the failure as None
    assert a.decode_stats == {"samples": 2, "valid": 1, "invalid_sanitization": 1}
    assert a.decode_stats.as_metrics() == {"decode/validity": 0.5, "decode/invalid_sanitization": 0.5}


# ---- encode / decode / SDF --------------------------------------------------------------------------------------
def test_encode_then_decode_gives_back_the_crystal_ligand_in_place(tmp_path):
    folder = os.path.join(posebusters_dir(), "1uou")
    a = MoleculeAdapter(max_atoms=20, hidden=8, layers=1)
    ligand = a.load_sample(os.path.join(folder, "1uou_ligand.sdf"))
    item = {"pocket": os.path.join(folder, "1uou_protein_one_lig_removed.pdb")}
    x0, cond = a.encode([ligand], [item])
    n = ligand.GetNumAtoms()
    assert cond["mask"].sum() == n and torch.all(x0[0, n:] == 0)
    assert x0[0, :n, :3].mean(0).abs().max() < 1e-5  # centred on the ligand: the frame's origin
    onehot = x0[0, :n, 3:] / a.feature_scale
    assert torch.equal(onehot.sum(-1), torch.ones(n)) and set(onehot.flatten().tolist()) == {0.0, 1.0}
    (mol,) = a.decode(x0, cond)
    torch.testing.assert_close(torch.tensor(mol.GetConformer().GetPositions()),
                               torch.tensor(ligand.GetConformer().GetPositions()), atol=1e-4, rtol=0)
    assert [x.GetSymbol() for x in mol.GetAtoms()] == [x.GetSymbol() for x in ligand.GetAtoms()]
    assert canonical(mol) == canonical(ligand)  # bonds perceived from the crystal pose
    name = a.save_sample(mol, str(tmp_path), "lig")
    back = a.load_sample(os.path.join(tmp_path, name))
    assert canonical(back) == canonical(mol)
    torch.testing.assert_close(torch.tensor(back.GetConformer().GetPositions()),
                               torch.tensor(mol.GetConformer().GetPositions()), atol=1e-4, rtol=0)  # SDF: 4 decimals
    with pytest.raises(ValueError, match="is None"):
        a.save_sample(None, str(tmp_path), "bad")
    with pytest.raises(ValueError, match=r"elements \['Br'\] outside"):
        a.encode([embedded("Brc1ccccc1")], [item])
    with pytest.raises(ValueError, match="16 heavy atoms; the model holds 1..12"):
        MoleculeAdapter(hidden=8, layers=1).encode([ligand], [item])


# ---- the complexes reader -----------------------------------------------------------------------------------
def test_complexes_reader_keeps_the_posebusters_complexes_and_counts_bad_rows(tmp_path):
    root = tmp_path / "complexes"
    shutil.copytree(posebusters_dir(), root)
    benzene = embedded("c1ccccc1")
    (root / "nopocket").mkdir()
    Chem.MolToMolFile(benzene, str(root / "nopocket" / "nopocket_ligand.sdf"))
    (root / "broken").mkdir()
    (root / "broken" / "broken_ligand.sdf").write_text("not an sdf\n$$$$\n")
    shutil.copy(root / "1uou" / "1uou_protein_one_lig_removed.pdb", root / "broken" / "broken_pocket.pdb")
    (root / "bromo").mkdir()
    Chem.MolToMolFile(embedded("Brc1ccccc1"), str(root / "bromo" / "bromo_ligand.sdf"))
    shutil.copy(root / "1uou" / "1uou_protein_one_lig_removed.pdb", root / "bromo" / "bromo_pocket.pdb")
    (root / "far").mkdir()
    far = Chem.Mol(benzene)
    for i in range(far.GetNumAtoms()):
        p = far.GetConformer().GetAtomPosition(i)
        far.GetConformer().SetAtomPosition(i, (p.x + 500.0, p.y, p.z))
    Chem.MolToMolFile(far, str(root / "far" / "far_ligand.sdf"))  # 500 A from the protein
    shutil.copy(root / "1uou" / "1uou_protein_one_lig_removed.pdb", root / "far" / "far_protein.pdb")
    # a CrossDocked-style target folder: <name>.sdf beside <name>_pocket10.pdb
    (root / "target").mkdir()
    shutil.copy(root / "1uou" / "1uou_ligand.sdf", root / "target" / "lig_a.sdf")
    lig = read_sdf(str(root / "1uou" / "1uou_ligand.sdf"))
    cut_pocket(str(root / "1uou" / "1uou_protein_one_lig_removed.pdb"), torch.tensor(lig.GetConformer().GetPositions()),
               str(root / "target" / "lig_a_pocket10.pdb"))
    complexes, report = read_complexes(str(root), max_atoms=20)
    assert sorted(c.id for c in complexes) == ["1ia1", "1of6", "1uou", "lig_a"]
    assert report.rows == 9 and report.kept == 4
    assert report.skipped == {"missing_pocket": 1, "unreadable_ligand": 1, "unknown_element": 1,
                              "too_many_atoms": 1, "unreadable_pocket": 0, "empty_pocket": 1}  # 1s3v: 27 atoms
    assert "nopocket" in report.summary() and "Br" in report.summary()
    one = next(c for c in complexes if c.id == "1uou")
    torch.testing.assert_close(torch.tensor(one.center, dtype=torch.float64), torch.tensor(lig.GetConformer().GetPositions()).mean(0))
    # each kept complex is a prompt item the adapter conditions on
    a = MoleculeAdapter(max_atoms=20, hidden=8, layers=1)
    cond = a.encode_conditions([c.item() for c in complexes], [torch.Generator().manual_seed(i) for i in range(4)])
    assert cond["pocket_mask"].sum(1).min() > 0
    with pytest.raises(ValueError, match="does not exist"):
        read_complexes(str(tmp_path / "nothing"))


def test_pdb_parsing_and_pocket_cutting_against_rdkit(tmp_path):
    path = os.path.join(posebusters_dir(), "1uou", "1uou_protein_one_lig_removed.pdb")
    coords, elements = read_pdb_atoms(path)
    ref = Chem.MolFromPDBFile(path, sanitize=False, removeHs=False)
    heavy = [i for i, atom in enumerate(ref.GetAtoms()) if atom.GetAtomicNum() > 1]
    torch.testing.assert_close(coords, torch.tensor(ref.GetConformer().GetPositions())[heavy])
    assert list(elements) == [ref.GetAtomWithIdx(i).GetSymbol() for i in heavy]
    center = coords[:50].mean(0, keepdim=True)
    cut_pocket(path, center, str(tmp_path / "p.pdb"), radius=6.0)
    kept, _ = read_pdb_atoms(str(tmp_path / "p.pdb"))
    near = coords[(coords - center).norm(dim=-1) <= 6.0]
    assert all(bool((kept - q).norm(dim=-1).min() < 1e-9) for q in near)  # every atom within the radius is kept
    assert kept.shape[0] > near.shape[0]  # with the rest of its residues


# ---- preferences and the reward ----------------------------------------------------------------------------
def test_preference_layout_resolves_paths_and_counts_bad_lines(tmp_path):
    shutil.copy(os.path.join(posebusters_dir(), "1uou", "1uou_ligand.sdf"), tmp_path / "a.sdf")
    Chem.MolToMolFile(embedded("CCO"), str(tmp_path / "b.sdf"))
    (tmp_path / "bad.sdf").write_text("nothing\n")
    shutil.copy(os.path.join(posebusters_dir(), "1uou", "1uou_protein_one_lig_removed.pdb"), tmp_path / "p.pdb")
    item = {"pocket": "p.pdb", "center": [0.0, 0.0, 0.0]}
    rows = [{"prompt": item, "chosen": "a.sdf", "rejected": "b.sdf", "chosen_reward": 1.0, "rejected_reward": 0.5},
            {"prompt": item, "chosen": "a.sdf", "rejected": "bad.sdf"},
            {"prompt": "text only", "chosen": "a.sdf", "rejected": "b.sdf"},
            {"prompt": item, "chosen": "a.sdf"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    with pytest.warns(UserWarning, match="preference data"):
        data = load_molecule_preferences(str(tmp_path / "pairs.jsonl"))
    assert len(data.pairs) == 1 and data.report.rows == 5
    assert (data.report.undecodable, data.report.missing_caption, data.report.malformed) == (1, 1, 2)
    pair = data.pairs[0]
    assert pair.prompt["pocket"] == str(tmp_path / "p.pdb") and pair.chosen == str(tmp_path / "a.sdf")
    assert (pair.chosen_reward, pair.rejected_reward) == (1.0, 0.5)


def test_pocket_contact_against_a_direct_computation():
    path = os.path.join(posebusters_dir(), "1uou", "1uou_protein_one_lig_removed.pdb")
    ligand = read_sdf(os.path.join(posebusters_dir(), "1uou", "1uou_ligand.sdf"))
    coords, _ = read_pdb_atoms(path)
    item = {"pocket": path}
    r = pocket_contact([ligand, None], [item, item], contact=4.0, invalid=-7.0)
    lig = ligand.GetConformer().GetPositions()
    expected = -sum(abs(min(float(((torch.tensor(p) - q) ** 2).sum().sqrt()) for q in coords) - 4.0)
                    for p in lig) / len(lig)
    assert r.shape == (2,) and abs(float(r[0]) - expected) < 1e-5 and float(r[1]) == -7.0
    with pytest.raises(ValueError, match="'pocket'"):
        pocket_contact([ligand], ["text"])
