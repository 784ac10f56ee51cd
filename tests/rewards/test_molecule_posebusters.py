"""PoseBusters as an evaluation metric and a reward, on the bundled pocket's crystal ligand (a real pose that
passes) and a copy pushed into the protein (that fails the intermolecular checks)."""
import os

import pytest

Chem = pytest.importorskip("rdkit.Chem")
pytest.importorskip("posebusters")

from diffalign.rewards import posebusters_checks as pb  # noqa: E402
from diffalign.rewards.registry import resolve_reward  # noqa: E402

ASSET = os.path.join(os.path.dirname(pb.__file__), "..", "assets", "molecule_pocket")
ITEM = {"pocket": os.path.join(ASSET, "1s3v_pocket.pdb")}


def crystal_and_clashing():
    from rdkit.Geometry import Point3D
    crystal = Chem.MolFromMolFile(os.path.join(ASSET, "1s3v_ligand.sdf"))
    moved = Chem.Mol(crystal)
    conf = moved.GetConformer()
    # the pocket's residue 7 (ALA) CA: put the ligand's centre on a protein atom
    ca = next(l for l in open(ITEM["pocket"]) if l.startswith("ATOM") and l[12:16].strip() == "CA")
    target = [float(ca[30:38]), float(ca[38:46]), float(ca[46:54])]
    centre = conf.GetPositions().mean(0)
    for i in range(moved.GetNumAtoms()):
        p = conf.GetAtomPosition(i)
        conf.SetAtomPosition(i, Point3D(p.x - centre[0] + target[0], p.y - centre[1] + target[1],
                                        p.z - centre[2] + target[2]))
    return crystal, moved


def test_pass_rate_counts_invalid_samples_as_failures():
    crystal, clashing = crystal_and_clashing()
    out = pb.posebusters_pass_rate([crystal, clashing, None], [ITEM] * 3)
    assert (out["n"], out["n_invalid"], out["n_passed"]) == (3, 1, 1)
    assert out["pass_rate"] == pytest.approx(1 / 3)
    # the moved copy keeps its internal geometry and fails only on the protein
    assert out["checks"]["bond_lengths"] == 1.0 and out["checks"]["internal_steric_clash"] == 1.0
    assert out["checks"]["minimum_distance_to_protein"] == 0.5
    assert pb.posebusters_report([None], [ITEM]) == [None]


def test_reward_and_ligand_only_config():
    crystal, clashing = crystal_and_clashing()
    assert resolve_reward("posebusters") is pb.posebusters
    assert pb.posebusters([crystal, clashing, None], [ITEM] * 3).tolist() == [1.0, 0.0, 0.0]
    # the ligand-only checks cannot see the protein: the moved copy passes them
    assert pb.posebusters([clashing], [None], config="mol").tolist() == [1.0]


def test_bad_inputs_are_named():
    crystal, _ = crystal_and_clashing()
    with pytest.raises(ValueError, match="config must be one of"):
        pb.posebusters_report([crystal], [ITEM], config="redock")
    with pytest.raises(ValueError, match="'pocket'"):
        pb.posebusters_report([crystal], ["a text prompt"])
    with pytest.raises(ValueError, match="1 samples but 2"):
        pb.posebusters_report([crystal], [ITEM, ITEM])


def test_a_fragmented_ligand_fails_the_connectivity_check_without_the_rest():
    """Two copies of the crystal ligand far apart make one two-fragment molecule: its row is PoseBusters' failed
    all_atoms_connected alone (the slow checks are not run), and the per-check rates count only where a check ran."""
    from rdkit.Chem import rdmolops
    crystal, _ = crystal_and_clashing()
    far = Chem.Mol(crystal)
    conf = far.GetConformer()
    from rdkit.Geometry import Point3D
    for i in range(far.GetNumAtoms()):
        p = conf.GetAtomPosition(i)
        conf.SetAtomPosition(i, Point3D(p.x + 30.0, p.y, p.z))
    pair = rdmolops.CombineMols(crystal, far)
    assert len(Chem.GetMolFrags(pair)) == 2
    assert pb.posebusters_report([pair], [ITEM]) == [{"all_atoms_connected": False}]
    out = pb.posebusters_pass_rate([crystal, pair], [ITEM] * 2)
    assert (out["n_passed"], out["n_disconnected"], out["pass_rate"]) == (1, 1, 0.5)
    assert out["checks"]["all_atoms_connected"] == 0.5 and out["checks"]["bond_lengths"] == 1.0
    assert pb.posebusters([pair, crystal], [ITEM] * 2).tolist() == [0.0, 1.0]
