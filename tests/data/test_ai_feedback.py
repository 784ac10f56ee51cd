"""AI feedback: pairs of model samples labelled by a reward, filtered by gap, read back by the readers."""
import json
import os

import numpy as np
import pytest
import torch

from diffalign.config import load_config
from diffalign.data import load_preference_data, load_sample
from diffalign.inference.feedback import generate_feedback, label_samples, select_pairs
from diffalign.modalities.toy.synthetic import toy_preference_pairs
from diffalign.modalities.toy.rewards import target_distance


def test_select_pairs_threshold_and_orientation():
    prompts = ["a", "a", "a", "b", "b"]
    rewards = torch.tensor([0.0, 1.0, 0.05, 3.0, 3.0])
    pairs, rep = select_pairs(prompts, rewards, threshold=0.1)
    # a: (0,1) gap 1 kept, (0,2) gap .05 dropped, (1,2) gap .95 kept; b: tie dropped
    assert sorted(pairs) == [(1, 0), (1, 2)]
    assert (rep.candidate_pairs, rep.kept, rep.below_threshold) == (4, 2, 2)
    bw, rep = select_pairs(prompts, rewards, threshold=0.0, pairing="best_worst")
    assert bw == [(1, 0)] and rep.below_threshold == 1  # b's best and worst tie
    with pytest.raises(ValueError, match="pairing"):
        select_pairs(prompts, rewards, pairing="nope")


def test_label_images_written_as_png_jsonl_readable(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g)
    prompts = ["x", "x", "y", "y"]
    brightness = lambda s, p: s.mean(dim=(1, 2, 3))  # any reward: (samples, prompts) -> (B,)
    rep = label_samples(str(tmp_path), images, prompts, brightness, threshold=0.0)
    assert rep.kept == 2 and os.path.basename(rep.path) == "pairs.jsonl"
    ds = load_preference_data(rep.path)
    assert ds.report.layout == "jsonl" and ds.has_rewards and ds.report.skipped == 0
    for pair in ds.pairs:
        assert pair.chosen.endswith(".png") and pair.chosen_reward > pair.rejected_reward
        w = torch.from_numpy(np.asarray(load_sample(pair.chosen), dtype=np.float32)).mean()
        l = torch.from_numpy(np.asarray(load_sample(pair.rejected), dtype=np.float32)).mean()
        assert w > l  # the stored images really are the brighter / darker ones
    with pytest.raises(ValueError, match="kept no pair"):
        label_samples(str(tmp_path / "none"), images, prompts, brightness, threshold=10.0)


def test_generate_feedback_from_toy_model_round_trips(tmp_path):
    cfg = load_config(data={
        "output_dir": str(tmp_path / "run"), "seed": 1,
        "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 5}},
        "prompts": {"list": ["a", "b"]}, "sampling": {"num_steps": 3, "batch_size": 3}, "train": {"batch_size": 3},
        "reward": {"name": "toy_target_distance"}, "algorithm": {"name": "ddpo"}})
    rep = generate_feedback(cfg, str(tmp_path / "fb"), samples_per_prompt=3, threshold=0.01)
    assert rep.samples == 6 and rep.candidate_pairs == 6 and rep.kept + rep.below_threshold == 6
    rows = [json.loads(line) for line in open(rep.path)]
    ds = load_preference_data(rep.path)
    assert len(ds.pairs) == rep.kept == len(rows)
    for pair in ds.pairs:
        w, l = load_sample(pair.chosen), load_sample(pair.rejected)
        assert w.shape == (2,) and pair.chosen.endswith(".npy")
        rw, rl = target_distance(torch.stack([w, l]), [pair.prompt] * 2).tolist()
        assert rw == pytest.approx(pair.chosen_reward, abs=1e-5) and rw - rl > 0.01


def test_synthetic_toy_pairs():
    ds = toy_preference_pairs(["a", "b", "c"], num_pairs=30, seed=0)
    assert len(ds.pairs) == 30 and ds.has_rewards
    for p in ds.pairs:
        r = target_distance(torch.stack([p.chosen, p.rejected]), [p.prompt] * 2)
        assert r[0] > r[1] and float(r[0]) == pytest.approx(p.chosen_reward)
    again = toy_preference_pairs(["a", "b", "c"], num_pairs=30, seed=0)
    assert all(torch.equal(x.chosen, y.chosen) for x, y in zip(ds.pairs, again.pairs))


def test_feedback_cli_then_offline_training_on_its_output(tmp_path, capsys):
    """`diffalign feedback` writes pairs that `diffalign train` (DPO) reads: the AI-feedback loop end to end."""
    from diffalign.cli import main
    from diffalign.trainer.logging import read_metrics
    base = ["modality.name=toy", "modality.options={dim: 2, hidden: 16, pretrain_steps: 5}", "prompts.list=[a, b]",
            "sampling.num_steps=3", "sampling.batch_size=4", "train.batch_size=4", "algorithm.name=ddpo",
            f"output_dir={tmp_path / 'unused'}"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 0\n")
    with pytest.raises(SystemExit) as e:
        main(["feedback", str(cfg), str(tmp_path / "fb")] + base + ["--samples-per-prompt", "4", "--threshold", "0.05"])
    assert e.value.code == 0 and "kept" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["train", str(cfg)] + base[:4] + ["algorithm={name: dpo, beta: 50}", "train.batch_size=2", "epochs=1",
                                               f"data.path={tmp_path / 'fb' / 'pairs.jsonl'}",
                                               f"output_dir={tmp_path / 'run'}", "logging.progress_bar=false",
                                               "logging.tensorboard=false"])
    assert e.value.code == 0
    (m,) = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert {"loss", "implicit_acc", "reward_margin"} <= set(m)
    with pytest.raises(SystemExit) as e:
        main(["feedback", str(cfg), str(tmp_path / "none")] + base + ["--threshold", "1000"])
    assert e.value.code == 1 and "kept no pair" in capsys.readouterr().err
