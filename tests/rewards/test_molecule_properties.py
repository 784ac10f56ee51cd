"""Drug-likeness rewards on known molecules (published values, hand-counted rules, the SA reference set that RDKit
Contrib ships), invalid samples kept and scored explicitly, set metrics, and the weighted multi-objective."""
import csv
import os

import pytest
import torch

Chem = pytest.importorskip("rdkit.Chem")

from diffalign.rewards import molecule_properties as mp  # noqa: E402
from diffalign.rewards.loading import load_reward  # noqa: E402
from diffalign.rewards.registry import resolve_reward  # noqa: E402

SMILES = {"aspirin": "CC(=O)Oc1ccccc1C(=O)O", "caffeine": "Cn1c(=O)c2c(ncn2C)n(C)c1=O", "benzene": "c1ccccc1",
          "glucose": "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O", "tetracontane": "C" * 40,
          "cyclopropylbenzene": "C1CC1c1ccccc1", "two_fragments": "CCO.CC"}


def mols(*names):
    return [None if n is None else Chem.MolFromSmiles(SMILES[n]) for n in names]


def test_qed_matches_published_values_and_scores_invalid_explicitly():
    # Bickerton et al. 2012's QED: aspirin 0.55 (RDKit 0.5501); benzene 0.443 (RDKit's QED.qed)
    r = mp.qed(mols("aspirin", "benzene", None))
    assert r.dtype == torch.float32 and r.shape == (3,)
    assert r[0].item() == pytest.approx(0.5501, abs=1e-3)
    assert r[1].item() == pytest.approx(0.4426, abs=1e-3)
    assert r[2].item() == 0.0
    assert mp.qed(mols(None), invalid=-1.0).tolist() == [-1.0]


def test_sa_score_reproduces_the_contrib_reference_set():
    from rdkit.Chem import RDConfig
    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "data", "zim.100.txt")
    rows = list(csv.DictReader(open(path), delimiter="\t"))[:20]  # Ertl's scores for ZINC compounds, 3 decimals
    got = mp.sa_score([Chem.MolFromSmiles(r["smiles"]) for r in rows], normalize=False)
    want = torch.tensor([float(r["sa_score"]) for r in rows])
    assert torch.allclose(got, want, atol=1e-3)
    # the reward is (10 - SA) / 9; an invalid sample gets the worst value of each scale
    norm = mp.sa_score(mols("benzene", None))
    assert norm[0].item() == pytest.approx((10 - mp.raw_sa_score(mols("benzene")[0])) / 9, abs=1e-6)
    assert norm[1].item() == 0.0 and mp.sa_score(mols(None), normalize=False).tolist() == [10.0]


def test_lipinski_counts_hand_checked_rules():
    # glucose: logP about -3 breaks only the logP rule; tetracontane: MW 562, logP ~15.8, 37 rotatable bonds
    r = mp.lipinski(mols("aspirin", "caffeine", "glucose", "tetracontane", None))
    assert r.tolist() == [5.0, 5.0, 4.0, 2.0, 0.0]
    assert mp.lipinski(mols("tetracontane"), rotatable=False).tolist() == [2.0]
    rules = mp.lipinski_rules(mols("glucose")[0])
    assert [k for k, ok in rules.items() if not ok] == ["logp_within_-2_5"]


def test_validity_connectivity_and_ring_sizes():
    broken = Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False)  # a pentavalent carbon: sanitisation fails
    samples = mols("aspirin", "two_fragments", "cyclopropylbenzene", None) + [broken]
    assert mp.mol_validity(samples).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert mp.mol_connectivity(samples).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    # cyclopropylbenzene: one 3-ring, one 6-ring; an acyclic molecule has no bad ring
    assert mp.mol_ring_size(samples).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert mp.mol_ring_size(mols("cyclopropylbenzene"), allowed=[3, 6]).tolist() == [1.0]
    assert sorted(mp.ring_sizes(mols("cyclopropylbenzene")[0])) == [3, 6]
    with pytest.raises(ValueError, match="allowed"):
        mp.mol_ring_size(samples, allowed=[])


def test_non_molecule_samples_are_refused_by_name():
    with pytest.raises(ValueError, match="sample 1 is str"):
        mp.qed([Chem.MolFromSmiles("C"), "CCO"])
    with pytest.raises(ValueError, match="sequence of rdkit.Chem.Mol"):
        mp.qed("CCO")


def test_diversity_against_set_based_tanimoto():
    from rdkit.Chem import rdFingerprintGenerator
    ms = mols("aspirin", "caffeine", "glucose")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    bits = [set(gen.GetFingerprint(m).GetOnBits()) for m in ms]
    sims = [len(a & b) / len(a | b) for i, a in enumerate(bits) for b in bits[:i]]
    assert mp.diversity(ms + [None]) == pytest.approx(1 - sum(sims) / len(sims), abs=1e-12)
    assert mp.diversity(mols("aspirin", "aspirin")) == pytest.approx(0.0)
    assert mp.diversity(mols("aspirin", None)) is None


def test_molecule_metrics_counts_invalid_samples():
    m = mp.molecule_metrics(mols("aspirin", "two_fragments", None, None))
    assert (m["n"], m["n_invalid"]) == (4, 2)
    assert m["validity"] == 0.5 and m["connectivity"] == 0.25
    assert m["qed_mean"] == pytest.approx(mp.qed(mols("aspirin", "two_fragments")).mean().item(), abs=1e-6)
    empty = mp.molecule_metrics([None])
    assert empty["validity"] == 0.0 and empty["qed_mean"] is None and empty["diversity"] is None


def test_property_rewards_resolve_by_name():
    for name, fn in [("qed", mp.qed), ("sa_score", mp.sa_score), ("lipinski", mp.lipinski),
                     ("mol_validity", mp.mol_validity), ("mol_connectivity", mp.mol_connectivity),
                     ("mol_ring_size", mp.mol_ring_size)]:
        assert resolve_reward(name) is fn


def test_weighted_multi_objective_through_weighted_sum():
    # AliDiff-style: drug-likeness terms mixed with fixed weights (the docking term is in the slow test)
    reward = load_reward("weighted_sum", components=[
        {"name": "qed", "weight": 1.0}, {"name": "sa_score", "weight": 0.5},
        {"name": "lipinski", "weight": 0.1, "kwargs": {"rotatable": False}}])
    samples = mols("aspirin", "glucose", None)
    got = reward(samples, [{"pocket": "unused.pdb"}] * 3)
    want = mp.qed(samples) + 0.5 * mp.sa_score(samples) + 0.1 * mp.lipinski(samples, rotatable=False)
    assert torch.allclose(got, want, atol=1e-6)
    assert set(reward.last_components) == {"qed", "sa_score", "lipinski"}
