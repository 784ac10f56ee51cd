import json

import pytest
import yaml

from diffalign.cli import main

TOY = {"output_dir": "unused", "seed": 0, "modality": {"name": "toy", "options": {"dim": 4, "pretrain_steps": 50}},
       "prompts": {"list": ["cat", "dog"]}, "sampling": {"num_steps": 4, "guidance_scale": 2.0, "batch_size": 4},
       "reward": {"name": "toy_target_distance"}, "train": {"batch_size": 4}}


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.fixture()
def cfg(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY))
    return str(path)


def test_sample_best_of_n_writes_samples_and_results(cfg, tmp_path, capsys):
    out = tmp_path / "bon"
    assert _run(["sample", cfg, "--method", "best_of_n", "--budget", "3", "--output", str(out), "--samples-per-prompt",
                 "2", "--baseline", "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["method"] == "best_of_n" and report["budget"] == 3
    assert report["plain_model_evaluations"] == 4 * 2 * 4 and report["model_evaluations"] == 3 * 4 * 2 * 4
    assert len(report["samples"]) == 4 and all((out / s["file"]).is_file() for s in report["samples"])
    assert [s["prompt"] for s in report["samples"]] == ["cat", "cat", "dog", "dog"]
    assert report["reward_mean"] >= report["plain_reward_mean"]
    assert all(s["reward"] >= s["plain_reward"] - 1e-6 for s in report["samples"])
    assert json.loads(capsys.readouterr().out)["model_evaluations"] == report["model_evaluations"]


def test_sample_noise_opt_and_rejection(cfg, tmp_path):
    assert _run(["sample", cfg, "--method", "noise_opt", "--budget", "2", "--output", str(tmp_path / "n"),
                 "--no-progress", "--baseline"]) == 0
    report = json.loads((tmp_path / "n" / "results.json").read_text())
    assert all("shell_ratio" in s for s in report["samples"]) and report["model_evaluations"] == (2 * 2 + 1) * 2 * 4 * 2
    assert _run(["sample", cfg, "--method", "rejection", "--budget", "4", "--threshold=-1e9",
                 "--output", str(tmp_path / "r"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "r" / "results.json").read_text())
    assert all(s["accepted"] and s["candidates"] == 1 for s in report["samples"])


def test_sample_errors(cfg, tmp_path, capsys):
    assert _run(["sample", cfg, "--method", "rejection", "--output", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "threshold" in capsys.readouterr().err
    assert _run(["sample", cfg, "--method", "attend_excite", "--output", str(tmp_path / "y"), "--no-progress"]) == 1
    assert "cross-attention" in capsys.readouterr().err
    assert _run(["sample", cfg, "sampling.num_steps=0", "--output", str(tmp_path / "z")]) == 2
    assert _run(["sample", cfg, "--method", "nope"]) == 2  # argparse lists the choices
    assert "best_of_n" in capsys.readouterr().err


def test_sample_writes_what_the_modality_saves(tmp_path):
    """Video samples become a frame folder (what the video reader loads) and a GIF, not an opaque .npy."""
    out = tmp_path / "video"
    assert _run(["sample", "video_ddpo_tiny", "prompts.list=[a cat]", "sampling.batch_size=1", "train.batch_size=1",
                 "--method", "plain",
                 "--output", str(out), "--no-progress"]) == 0
    report = json.loads((out / "results.json").read_text())
    (row,) = report["samples"]  # one clip of the config's num_frames: 2
    assert row["file"] == "samples/0000" and (out / row["file"]).is_dir()
    assert len(list((out / row["file"]).glob("*.png"))) == 2 and (out / "samples" / "0000.gif").is_file()
