"""HIVE's reward model: ranked edits (input, instruction, several edits) read, trained with Bradley-Terry, evaluated
by pairwise accuracy, saved and reloaded with load_reward."""
import json
import os

import pytest
import torch

from diffalign.config import ConfigError
from diffalign.rewards.loading import load_reward
from diffalign.rewards.training.data import read_comparisons, write_ranked
from diffalign.rewards.training.synthetic import EDIT_INSTRUCTIONS, edit_quality, write_synthetic_edits
from diffalign.trainer.reward_model import load_reward_train_config, train_reward_model


def _config(out, *overrides):
    return load_reward_train_config(
        os.path.join(os.path.dirname(__file__), "..", "..", "diffalign", "configs", "hive_reward_tiny.yaml"),
        [f"output_dir={out}", "data.synthetic.num_groups=400"] + list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("hive_reward")
    summary = train_reward_model(_config(out))
    return str(out), summary


def test_synthetic_edit_ranks_follow_the_closed_form(tmp_path):
    path = write_synthetic_edits(str(tmp_path), num_groups=8, group_size=3, image_size=16, seed=1)
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 8 and all("input" in r for r in rows)
    from PIL import Image
    import numpy as np

    def colour(name):  # the picture's mean colour: the pattern and noise are shared, so differences are the change
        pixels = np.asarray(Image.open(os.path.join(tmp_path, name)), dtype=np.float64) / 255
        return torch.from_numpy(pixels).mean((0, 1))
    for r in rows:
        change = torch.stack([colour(n) for n in r["images"]]) - colour(r["input"])
        q = edit_quality(change, r["prompt"])
        best = min(range(3), key=lambda k: r["ranks"][k])
        assert int(torch.argmax(q)) == best
    # the closed form: the asked step along the instruction's direction is the best change, quality 0
    step = 0.3 * torch.tensor(EDIT_INSTRUCTIONS["make it redder"], dtype=torch.float64)
    assert float(edit_quality(step[None], "make it redder")) == 0.0
    assert float(edit_quality(torch.zeros(1, 3, dtype=torch.float64), "make it redder")) == pytest.approx(-0.3)


def test_ranked_edits_reader_counts_bad_rows(tmp_path):
    write_synthetic_edits(str(tmp_path), num_groups=3, group_size=2, image_size=16)
    rows = [json.loads(line) for line in open(tmp_path / "edits.jsonl")]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append({"prompt": "make it bluer", "images": rows[0]["images"], "ranks": [1, 2]})   # no input
    rows.append({**rows[1], "input": "broken.png"})                                          # undecodable input
    rows.append({"instruction": "make it greener", "input_image": rows[2]["input"], "images": rows[2]["images"],
                 "ranks": [2, 1]})                                                           # the aliases
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups, report = read_comparisons(str(path))
    assert report.rows == 6 and report.kept == 4
    assert report.malformed == 1 and "mixed.jsonl line 4" in report.examples["malformed"][0]
    assert report.undecodable == 1 and "mixed.jsonl line 5 input image" in report.examples["undecodable"][0]
    assert all(os.path.isabs(g.input) and os.path.isfile(g.input) for g in groups)
    assert groups[-1].prompt == "make it greener" and groups[-1].ranks[None] == [2.0, 1.0]
    assert groups[0].item == {"text": rows[0]["prompt"], "image": groups[0].input}
    # the held-out file the trainer writes keeps the input
    assert write_ranked(groups, str(tmp_path / "again.jsonl"))
    again, _ = read_comparisons(str(tmp_path / "again.jsonl"))
    assert [g.item for g in again] == [g.item for g in groups]
    # a bad input field is an error naming the line and field
    path.write_text(json.dumps({**rows[0], "input": 3}) + "\n")
    with pytest.raises(Exception, match="line 1: field 'input' must be the path"):
        read_comparisons(str(path))


def test_input_image_model_learns_what_an_edit_only_model_cannot(trained, tmp_path):
    out, summary = trained
    # ranks depend on the input and the edit: the model of (input, instruction, edit) ranks held-out edits well
    assert summary["held_out_accuracy"] >= 0.8, summary
    # the same ranked edits without their inputs: a model of (instruction, edit) alone stays far below
    rows = [json.loads(line) for line in open(os.path.join(out, "synthetic_data", "edits.jsonl"))]
    blind = tmp_path / "blind.jsonl"
    blind.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "input"}) + "\n" for r in rows))
    data_dir = os.path.join(out, "synthetic_data")
    for r in rows:  # image paths are relative to the file's folder
        assert os.path.isfile(os.path.join(data_dir, r["images"][0]))
    os.symlink(os.path.join(data_dir, "images"), tmp_path / "images")
    edit_only = train_reward_model(_config(tmp_path / "edit_only", "model.input_image=false", f"data.path={blind}"))
    assert edit_only["held_out_accuracy"] <= summary["held_out_accuracy"] - 0.08, (edit_only, summary)


def test_saved_model_reloads_and_eval_preference_repeats_the_accuracy(trained):
    out, summary = trained
    reward = load_reward(os.path.join(out, "reward"))
    assert reward.input_image
    held = os.path.join(out, "held_out.jsonl")
    groups, _ = read_comparisons(held)
    g = groups[0]
    from diffalign.data.types import load_sample
    from diffalign.rewards.base import as_pixels
    edits = as_pixels([load_sample(s) for s in g.samples])
    items = [g.item] * len(g.samples)
    from diffalign.rewards.training.model import load_preference_model
    again = load_preference_model(os.path.join(out, "reward"))
    assert torch.allclose(reward(edits, items), again(edits, items), atol=1e-6)
    # `diffalign eval preference --reward OUT/reward --data OUT/held_out.jsonl` gives the trainer's held-out accuracy
    from diffalign.cli import main
    report = os.path.join(out, "eval.json")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "preference", "--reward", os.path.join(out, "reward"), "--data", held, "--output", report,
              "--no-progress"])
    assert exit_.value.code == 0
    result = json.load(open(report))
    assert result["accuracy"] == pytest.approx(summary["held_out_accuracy"], abs=1e-9)
    # an edit model needs edit items
    with pytest.raises(ValueError, match="has no 'image'"):
        reward(edits, [g.prompt] * len(g.samples))


def test_config_and_data_must_agree_on_inputs(tmp_path, trained):
    with pytest.raises(ConfigError, match="model.input_image"):
        _config(tmp_path / "a", "model.input_image=false")
    with pytest.raises(ConfigError, match="model.input_image"):
        _config(tmp_path / "b", "data.path=synthetic:images")
    out, _ = trained
    cfg = _config(tmp_path / "c", "model.input_image=false",
                  f"data.path={os.path.join(out, 'synthetic_data', 'edits.jsonl')}")
    with pytest.raises(ValueError, match="set model.input_image: true"):
        train_reward_model(cfg)
