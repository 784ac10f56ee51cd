"""Decoded samples that are not a tensor batch (a list of molecules, None where a sample is invalid) through AI
feedback, `diffalign sample` and `diffalign eval samples`, and invalid samples stored as their model state so that
preference pairs can teach validity."""
import json
import os

import pytest
import torch

from diffalign.cli import main
from diffalign.data import StoredState, is_state_ref, load_preference_data, load_sample, load_state, save_state
from diffalign.inference.feedback import label_samples, select_pairs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POCKET = {"pocket": os.path.join(REPO, "modalities", "molecule", "pockets", "1uou_pocket10.pdb"),
          "center": [-3.483, 2.004, 29.185]}
# the untrained tiny EGNN, 2 steps: fast, and many of its samples are invalid (None), which is what these tests need
MOLECULE = ["modality.options.pretrain_steps=0", "sampling.num_steps=2", "sampling.batch_size=8", "train.batch_size=8",
            "prompts.list=" + json.dumps([POCKET]), "reward.kwargs={}", "logging.tensorboard=false",
            "logging.progress_bar=false"]


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_stored_state_round_trips_exactly(tmp_path):
    x0 = torch.randn(3, 5, dtype=torch.float64)
    cond = {"mask": torch.tensor([1.0, 1.0, 0.0]), "center": torch.randn(3, dtype=torch.float64)}
    name = save_state(x0, cond, str(tmp_path), "000007")
    assert name == "000007.state.pt" and is_state_ref(str(tmp_path / name)) and not is_state_ref("a.pt")
    for state in (load_state(str(tmp_path / name)), load_sample(name, root=str(tmp_path))):
        assert isinstance(state, StoredState) and torch.equal(state.x0, x0) and state.x0.dtype == torch.float64
        assert state.cond.keys() == cond.keys() and all(torch.equal(state.cond[k], cond[k]) for k in cond)
    torch.save({"x0": [1.0]}, tmp_path / "bad.state.pt")
    with pytest.raises(ValueError, match="bad.state.pt"):
        load_state(str(tmp_path / "bad.state.pt"))
    with pytest.raises(ValueError, match="does not exist"):
        load_state(str(tmp_path / "missing.state.pt"))


def test_list_samples_with_an_invalid_one_are_labelled_and_the_invalid_one_stored_as_its_state(tmp_path):
    samples = [[0.0, 1.0], None, [2.0, 2.0], [0.5, 0.5]]  # a list-valued decode: no torch.stack possible
    items = [{"pocket": "p.pdb"}] * 2 + [{"pocket": "q.pdb"}] * 2  # mapping items group by their key
    states = [StoredState(torch.full((2,), float(i)), {"mask": torch.ones(2)}) for i in range(4)]
    reward = lambda s, p: torch.tensor([-10.0 if v is None else sum(v) for v in s])  # noqa: E731
    saved = []

    def save(sample, folder, name):
        saved.append(sample)
        with open(os.path.join(folder, name + ".json"), "w") as f:
            json.dump(sample, f)
        return name + ".json"

    rep = label_samples(str(tmp_path), samples, items, reward, save=save, states=states)
    rows = [json.loads(line) for line in open(rep.path)]
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("samples/000000.json", "samples/000001.state.pt"),
                                                           ("samples/000002.json", "samples/000003.json")]
    assert rows[0]["rejected_reward"] == -10.0 and None not in saved
    stored = load_state(str(tmp_path / rows[0]["rejected"]))
    assert torch.equal(stored.x0, states[1].x0)  # the invalid sample's own x0
    with pytest.raises(ValueError, match="sample 1 is invalid"):
        label_samples(str(tmp_path / "no_states"), samples, items, reward, save=save)


def test_select_pairs_groups_mapping_items_by_their_key():
    items = [{"pocket": "a", "center": [0, 0, 0]}, {"center": [0, 0, 0], "pocket": "a"}, {"pocket": "b"}]
    pairs, rep = select_pairs(items, torch.tensor([1.0, 0.0, 5.0]))
    assert pairs == [(0, 1)] and rep.candidate_pairs == 1


def test_offline_trainer_uses_a_stored_state_as_is_beside_encoded_samples(tmp_path):
    """Toy DPO pairs whose rejected sides are stored states: the batch holds their exact x0, the chosen sides
    go through the adapter's encode, and a training epoch runs."""
    from diffalign.config import load_config
    from diffalign.trainer import make_trainer
    folder = tmp_path / "data"
    rows = []
    for i in range(4):
        x0 = torch.tensor([0.1 * i, -0.2 * i])
        rejected = save_state(x0, {"prompt_id": torch.tensor(0)}, str(folder / "samples"), f"{i:06d}")
        rows.append({"prompt": "a", "chosen": [1.0, float(i)], "rejected": f"samples/{rejected}"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_preference_data(str(folder / "pairs.jsonl"))
    assert ds.report.kept == 4 and ds.report.skipped == 0
    cfg = load_config(data={
        "output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 1,
        "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 0}},
        "prompts": {"list": ["a"]}, "data": {"path": str(folder / "pairs.jsonl")},
        "algorithm": {"name": "dpo", "beta": 10.0}, "train": {"batch_size": 2},
        "logging": {"tensorboard": False, "progress_bar": False}})
    trainer = make_trainer(cfg)
    x0_l, cond_l = trainer._encoded([1, 3], [p.rejected for p in trainer.items[:2]], ["a", "a"])
    assert torch.allclose(x0_l, torch.tensor([[0.0, 0.0], [0.1, -0.2]])) and set(cond_l) == {"prompt_id"}
    x0_w, _ = trainer._encoded([0, 2], [p.chosen for p in trainer.items[:2]], ["a", "a"])
    assert torch.allclose(x0_w, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    (m,) = trainer.train()
    assert torch.isfinite(torch.tensor(m["loss"]))


def test_state_from_another_model_is_refused_by_name(tmp_path):
    from diffalign.config import load_config
    from diffalign.data.types import PreferenceDataError
    from diffalign.trainer import make_trainer
    bad = save_state(torch.zeros(3), {"prompt_id": torch.tensor(0)}, str(tmp_path), "wrong")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "a", "chosen": [1.0, 0.0], "rejected": bad}) + "\n")
    cfg = load_config(data={
        "output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 1,
        "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 0}},
        "prompts": {"list": ["a"]}, "data": {"path": str(tmp_path / "pairs.jsonl"), "cache_latents": False},
        "algorithm": {"name": "dpo"}, "train": {"batch_size": 1},
        "logging": {"tensorboard": False, "progress_bar": False}})
    trainer = make_trainer(cfg)
    with pytest.raises(PreferenceDataError, match="wrong.state.pt"):
        trainer._encoded([0, 1], [trainer.items[0].chosen, trainer.items[0].rejected], ["a", "a"])


@pytest.fixture(scope="module")
def molecule_feedback(tmp_path_factory):
    out = tmp_path_factory.mktemp("molecule_feedback")
    code = _run(["feedback", "molecule_dpo_tiny", str(out / "fb"), *MOLECULE, f"output_dir={out / 'unused'}",
                 "--samples-per-prompt", "8"])
    assert code == 0
    return out / "fb" / "pairs.jsonl"


def test_feedback_cli_on_molecules_stores_valid_sdfs_and_invalid_states(molecule_feedback):
    from rdkit import Chem

    from diffalign.modalities.molecule.data import load_molecule_preferences
    rows = [json.loads(line) for line in open(molecule_feedback)]
    sides = [(r["chosen"], r["chosen_reward"]) for r in rows] + [(r["rejected"], r["rejected_reward"]) for r in rows]
    states = {f for f, r in sides if f.endswith(".state.pt")}
    sdfs = {f for f, r in sides if f.endswith(".sdf")}
    assert states and sdfs  # the untrained model gives both
    assert all(r == -10.0 for f, r in sides if f in states)  # pocket_contact's penalty for an invalid sample
    assert all(r["chosen"] in sdfs for r in rows if r["rejected"] in states)  # valid over invalid
    ds = load_molecule_preferences(str(molecule_feedback))
    assert ds.report.kept == len(rows) and ds.report.skipped == 0
    root = os.path.dirname(molecule_feedback)
    assert all(isinstance(load_sample(os.path.join(root, f)), StoredState) for f in states)
    assert all(Chem.MolFromMolFile(os.path.join(root, f)) is not None for f in sdfs)


def test_molecule_dpo_batches_a_stored_invalid_sample_as_the_x0_that_decodes_to_none(molecule_feedback, tmp_path):
    from diffalign.config import load_config, resolve_config_path
    from diffalign.trainer import make_trainer
    cfg = load_config(resolve_config_path("molecule_dpo_tiny"),
                      overrides=MOLECULE + [f"output_dir={tmp_path}", f"data.path={molecule_feedback}",
                                            "data.eval_samples=0", "train.batch_size=4"])
    trainer = make_trainer(cfg)
    i = next(n for n, p in enumerate(trainer.items) if p.rejected.endswith(".state.pt"))
    x0, cond = trainer._encoded([2 * i + 1], [trainer.items[i].rejected], [trainer.items[i].prompt])
    state = load_state(trainer.items[i].rejected)
    assert torch.equal(x0[0], state.x0) and torch.equal(cond["mask"][0], state.cond["mask"])
    assert trainer.adapter.decode(x0, cond) == [None]  # it is the invalid sample itself
    batch = trainer.make_batch(0, list(range(4)), list(range(4)))
    assert batch.x_t.shape[0] == 8 and torch.isfinite(batch.x_t).all()


def test_sample_cli_on_molecules_saves_valid_ones_and_marks_invalid_ones(tmp_path):
    out = tmp_path / "sample"
    assert _run(["sample", "molecule_ddpo_tiny", *MOLECULE, "--method", "best_of_n", "--budget", "2",
                 "--samples-per-prompt", "6", "--output", str(out), "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["samples"]
    assert len(rows) == 6 and all(r["prompt"] == POCKET for r in rows)
    for r in rows:
        if r["file"] is None:
            assert r["reward"] == -10.0  # only an invalid molecule has no file
        else:
            assert r["file"].endswith(".sdf") and (out / r["file"]).is_file() and r["reward"] > -10.0
    assert report["reward_mean"] == pytest.approx(sum(r["reward"] for r in rows) / 6, rel=1e-6)


def test_eval_samples_on_molecules_scores_a_list_of_molecules(tmp_path):
    out = tmp_path / "eval"
    assert _run(["eval", "samples", "--model", "molecule_ddpo_tiny", "--samples-per-prompt", "6", "--out", str(out),
                 "--no-progress", "--device", "cpu", *MOLECULE]) == 0
    report = json.loads((out / "report.json").read_text())
    scores = [s["rewards"]["pocket_contact"] for s in report["samples"]]
    assert len(scores) == 6 and report["diversity"]["pixel"] is None
    assert report["rewards"]["pocket_contact"]["mean"] == pytest.approx(sum(scores) / 6, rel=1e-6)
    assert all((s["file"] is None) == (s["rewards"]["pocket_contact"] == -10.0) for s in report["samples"])


def test_sample_and_decode_keeps_the_state_of_invalid_samples_only():
    from diffalign.config import load_config, resolve_config_path
    from diffalign.inference.feedback import sample_and_decode
    from diffalign.trainer.builders import build_adapter, build_policy
    cfg = load_config(resolve_config_path("molecule_ddpo_tiny"), overrides=MOLECULE + ["output_dir=unused"])
    adapter = build_adapter(cfg, [POCKET], torch.device("cpu"))
    policy = build_policy(cfg, adapter)
    drawn = sample_and_decode(cfg, adapter, policy, [POCKET] * 10, list(range(10)))
    assert isinstance(drawn.decoded, list) and len(drawn.decoded) == len(drawn.states) == 10
    assert any(m is None for m in drawn.decoded) and any(m is not None for m in drawn.decoded)
    for mol, state in zip(drawn.decoded, drawn.states):
        assert (state is None) == (mol is not None)
        if state is not None:  # the stored state is the invalid sample: decoding it again gives None
            assert adapter.decode(state.x0[None], {k: v[None] for k, v in state.cond.items()}) == [None]
    again = sample_and_decode(cfg, adapter, policy, [POCKET] * 10, list(range(10)))  # a sample depends on its seed
    assert all(torch.equal(a.x0, b.x0) for a, b in zip(drawn.states, again.states) if a is not None)
