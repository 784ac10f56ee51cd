"""The Vina reward: worker pool timeout / error / crash paths (fast), failure accounting, the search box, and
(slow) Vina on the bundled pocket's crystal ligand against the documented run in pocket.json."""
import functools
import json
import math
import os
import time

import pytest
import torch

Chem = pytest.importorskip("rdkit.Chem")

from rdkit.Chem import AllChem  # noqa: E402

from diffalign.rewards import docking  # noqa: E402
from diffalign.rewards.worker_pool import TimeoutPool, WorkerStartError  # noqa: E402

ASSET = os.path.join(os.path.dirname(docking.__file__), "..", "assets", "molecule_pocket")
POCKET = os.path.join(ASSET, "1s3v_pocket.pdb")
LIGAND = os.path.join(ASSET, "1s3v_ligand.sdf")
META = json.load(open(os.path.join(ASSET, "pocket.json")))


def sleepy_energy(molblock, receptor, mode, center, size, *rest):
    """A stand-in for vina_energy run in the workers: molecules of more than 3 heavy atoms hang, of 1 fail, of 2
    get NaN; others score minus their atom count."""
    atoms = int(molblock.splitlines()[3][:3])
    if atoms > 3:
        time.sleep(60)
    if atoms == 1:
        raise ValueError("no pose")
    if atoms == 2:
        return float("nan")
    return -float(atoms)


def embedded(smiles):
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=0)
    return Chem.RemoveHs(m)


def test_pool_reports_timeout_error_crash_and_keeps_going():
    t0 = time.monotonic()
    with TimeoutPool(workers=1, timeout=1.0) as pool:
        res = pool.map(time.sleep, [(60,)])  # a stuck call: killed after 1 s, not 60
        assert [r.status for r in res] == ["timeout"] and 1.0 <= res[0].seconds < 10
        res = pool.map(math.sqrt, [(-1.0,), (4.0,)])
        assert [r.status for r in res] == ["error", "ok"]
        assert res[0].message.startswith("ValueError") and res[1].value == 2.0
        res = pool.map(os._exit, [(3,)])  # the worker dies without answering
        assert res[0].status == "crashed" and "code 3" in res[0].message
        assert pool.map(math.sqrt, [(9.0,)])[0].value == 3.0  # a fresh worker took over
        assert pool.restarts == 2
    assert time.monotonic() - t0 < 45


def test_pool_refuses_bad_settings_and_reports_a_failed_start():
    with pytest.raises(ValueError, match="workers"):
        TimeoutPool(workers=0)
    with pytest.raises(ValueError, match="timeout"):
        TimeoutPool(timeout=0)
    failing = functools.partial(int, "no engine here")  # a builtin: the worker imports nothing to run it
    with pytest.raises(WorkerStartError, match="failed to start: ValueError: invalid literal"):
        TimeoutPool(initializer=failing).map(math.sqrt, [(1.0,)])


def test_vina_reward_counts_timeouts_and_invalid_samples_as_penalties(tmp_path):
    receptor = tmp_path / "prepared.pdbqt"  # a .pdbqt is used as given: no meeko run in this test
    receptor.write_text("REMARK stand-in\n")
    item = {"pocket": POCKET, "receptor": str(receptor)}
    reward = docking.VinaReward(mode="score", timeout=1.0, penalty=-3.0)
    reward.energy_fn = sleepy_energy
    try:
        t0 = time.monotonic()
        pentavalent = Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False)
        r = reward([embedded("CCO"), None, embedded("c1ccccc1"), pentavalent, embedded("C"), embedded("CC")],
                   [item] * 6)
        assert time.monotonic() - t0 < 40
        assert r.tolist() == [3.0] + [-3.0] * 5  # -energy for ethanol; the penalty, never a silent 0, otherwise
        assert reward.stats == {"ok": 1, "invalid_sample": 2, "timeout": 1, "error:ValueError": 1, "non_finite": 1}
        assert reward.last_energies == [-3.0, None, None, None, None, None]
        assert [f[:2] for f in reward.last_failures] == [(1, "invalid_sample"), (2, "timeout"), (3, "invalid_sample"),
                                                         (4, "error:ValueError"), (5, "non_finite")]
        assert reward.last_failures[3][2] == "ValueError: no pose"
        reward.on_failure = "raise"
        with pytest.raises(RuntimeError, match="sample 0: invalid_sample"):
            reward([None], [item])
    finally:
        reward.close()


def test_vina_kwargs_are_checked_before_anything_runs():
    for bad, match in [({"mode": "redock"}, "mode"), ({"on_failure": "ignore"}, "on_failure"),
                       ({"timeout": 0}, "timeout"), ({"workers": 0}, "workers"), ({"scoring": "ad4"}, "scoring"), ({"pose_box": "cube"}, "pose_box")]:
        with pytest.raises(ValueError, match=match):
            docking.check_vina_kwargs(bad)
    from diffalign.rewards.registry import bind_reward_kwargs, resolve_reward
    with pytest.raises(ValueError, match="mode"):
        bind_reward_kwargs(resolve_reward("vina"), "vina", {"mode": "redock"})
    with pytest.raises(ValueError, match="exhaustivness"):
        bind_reward_kwargs(resolve_reward("vina"), "vina", {"exhaustivness": 8})


def test_search_box_sources():
    xyz = torch.tensor([[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]]).numpy()
    assert docking.search_box({"pocket": POCKET}, "minimize", xyz, 5.0) == ([1.0, 2.0, 3.0], [12.0, 14.0, 16.0])
    given = {"pocket": POCKET, "center": [1, 2, 3], "box": [20, 20, 20]}
    assert docking.search_box(given, "dock", xyz, 5.0) == ([1.0, 2.0, 3.0], [20.0, 20.0, 20.0])
    center, size = docking.search_box({"pocket": POCKET, "ligand": LIGAND}, "dock", None, 4.0)
    assert center == pytest.approx(META["center"], abs=1e-3) and size == pytest.approx(META["box"], abs=1e-3)
    center, size = docking.search_box({"pocket": POCKET}, "dock", None, 4.0)  # the whole pocket
    assert all(s > b for s, b in zip(size, META["box"]))
    # a centre alone (the molecule adapter's prompt items) moves the docking box, not a pose's own box
    assert docking.search_box({"pocket": POCKET, "center": [9, 9, 9]}, "dock", None, 4.0) == ([9.0, 9.0, 9.0], size)
    assert docking.search_box({"pocket": POCKET, "center": [9, 9, 9]}, "score", xyz, 5.0)[0] == [1.0, 2.0, 3.0]
    assert docking.search_box({"pocket": POCKET, "ligand": LIGAND}, "score", xyz, 4.0, pose_box="pocket") == (
        pytest.approx(META["center"], abs=1e-3), pytest.approx(META["box"], abs=1e-3))
    with pytest.raises(ValueError, match="needs 'center' too"):
        docking.search_box({"pocket": POCKET, "box": [20, 20, 20]}, "dock", None, 4.0)
    with pytest.raises(ValueError, match="must be"):
        docking.search_box({"pocket": POCKET, "center": [0, 0]}, "dock", None, 4.0)
    with pytest.raises(ValueError, match="positive"):
        docking.search_box({"pocket": POCKET, "center": [0, 0, 0], "box": [0, 1, 1]}, "dock", None, 4.0)


def test_prompt_items_must_name_a_pocket():
    reward = docking.VinaReward()
    try:
        with pytest.raises(ValueError, match="'pocket'"):
            reward([embedded("CCO")], ["a text prompt"])
        with pytest.raises(FileNotFoundError, match="does not exist"):
            reward([embedded("CCO")], [{"pocket": "/nonexistent/pocket.pdb"}])
        with pytest.raises(ValueError, match="2 prompt items"):
            reward([embedded("CCO")], [{"pocket": POCKET}] * 2)
    finally:
        reward.close()


def test_vina_energy_matches_the_documented_run_and_reuses_its_maps(tmp_path):
    """In this process (the workers run the same function): the score and the minimisation of the crystal ligand
    in pocket.json's box, the second from the maps the first computed."""
    receptor = docking.prepare_receptor(POCKET, cache_dir=str(tmp_path))
    assert docking.prepare_receptor(POCKET, cache_dir=str(tmp_path)) == receptor  # cached
    block = Chem.MolToMolBlock(Chem.MolFromMolFile(LIGAND))
    want = META["vina_crystal_ligand"]["kcal_per_mol"]
    docking._MAPS.clear()
    assert docking.vina_energy(block, receptor, "score", META["center"], META["box"]) == pytest.approx(
        want["score"], abs=0.01)
    maps = list(docking._MAPS.values())
    assert docking.vina_energy(block, receptor, "minimize", META["center"], META["box"]) == pytest.approx(
        want["minimize"], abs=0.01)
    assert list(docking._MAPS.values()) == maps and len(maps) == 1
    docking._MAPS.clear()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["score", "minimize"])
def test_vina_reproduces_the_documented_crystal_ligand_run(mode, tmp_path):
    """pocket.json's energies come from meeko's command-line tools and the vina API (scripts/extract_molecule_pocket.py)."""
    want = META["vina_crystal_ligand"]["kcal_per_mol"][mode]
    ligand = Chem.MolFromMolFile(LIGAND)
    boxed = {"pocket": POCKET, "center": META["center"], "box": META["box"]}
    reward = docking.VinaReward(mode=mode, cache_dir=str(tmp_path))
    try:
        r = reward([ligand, ligand], [boxed, {"pocket": POCKET}])  # the documented box; the ligand's own box
    finally:
        reward.close()
    assert reward.stats == {"ok": 2}
    assert -r[0].item() == pytest.approx(want, abs=0.01)
    assert -r[1].item() == pytest.approx(want, abs=0.3)  # another box: a slightly different local optimum
    assert len(os.listdir(tmp_path)) == 1  # the receptor was prepared once


@pytest.mark.slow
def test_vina_docks_into_the_reference_ligand_box(tmp_path):
    reward = docking.VinaReward(mode="dock", exhaustiveness=4, cache_dir=str(tmp_path))
    try:
        r = reward([Chem.MolFromMolFile(LIGAND)], [{"pocket": POCKET, "ligand": LIGAND}])
    finally:
        reward.close()
    # re-docking the crystal ligand finds a pose at least about as good as the crystal one minimised
    assert -r[0].item() <= META["vina_crystal_ligand"]["kcal_per_mol"]["minimize"] + 0.5


def docs_reward_config():
    import re

    import yaml
    text = open(os.path.join(os.path.dirname(docking.__file__), "..", "..", "docs", "molecule_rewards.md")).read()
    block = re.findall(r"```yaml\n(.*?)```", text, re.S)[-1]
    return yaml.safe_load(block)["reward"]


def test_the_documented_multi_objective_config_validates():
    from diffalign.rewards.registry import bind_reward_kwargs, resolve_reward
    cfg = docs_reward_config()
    bind_reward_kwargs(resolve_reward(cfg["name"]), cfg["name"], cfg["kwargs"])  # raises on a bad component
    bad = {"components": [{**cfg["kwargs"]["components"][0], "kwargs": {"mode": "redock"}}]}
    with pytest.raises(ValueError, match="mode"):
        bind_reward_kwargs(resolve_reward("weighted_sum"), "weighted_sum", bad)


@pytest.mark.slow
def test_the_documented_multi_objective_scores_molecules(tmp_path):
    from diffalign.rewards import molecule_properties as mp
    from diffalign.rewards.loading import load_reward
    cfg = docs_reward_config()
    for c in cfg["kwargs"]["components"]:  # first batch standardised by itself; keep the raw sum to compare
        c["normalize"] = "none"
    reward = load_reward(cfg["name"], **cfg["kwargs"])
    ligand = Chem.MolFromMolFile(LIGAND)
    try:
        got = reward([ligand, None], [{"pocket": POCKET}] * 2)
    finally:
        reward.rewards[0].close()
    vina = reward.last_components["vina"]
    assert vina[0].item() > 9.0 and vina[1].item() == 0.0  # -(-9.5 kcal/mol); the invalid sample's penalty
    want = vina + 0.5 * (mp.qed([ligand, None]) + mp.sa_score([ligand, None]) + mp.mol_connectivity([ligand, None]))
    assert torch.allclose(got, want, atol=1e-5)
