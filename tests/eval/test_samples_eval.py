"""`diffalign eval samples` end to end on the tiny image preset, and its checkpoint loading and statistics."""
import json
import os

import numpy as np
import pytest
import torch

from diffalign.eval import samples as ev
from diffalign.rewards import clip_score, testing  # noqa: F401  (ours: a broken import must fail, not skip)

# a tiny image model, 2 prompts x 2 samples, 2 DDIM steps: a few seconds on CPU
FAST = ["--batch-size", "4", "sampling.num_steps=2"]

USER_NETS = '''
import torch

class MeanColour(torch.nn.Module):
    """A stand-in feature network: per-channel means and stds (B, 6) of images in [0, 1]."""
    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

def colour_classifier():
    """A stand-in classifier: logits over 3 'classes' (the channel means, sharpened)."""
    return lambda x: 10 * x.mean(dim=(2, 3))
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    (tmp_path / "eval_user_nets.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "eval_user_nets"


def _cli(*argv):
    from diffalign.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "samples", *argv])
    return exit_.value.code


def _reference_folder(folder, n=5):
    from PIL import Image
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(n):  # larger than the samples and not square: centre-cropped and resized to 32 px
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
    return str(folder)


def test_eval_samples_end_to_end(tmp_path, user_nets, capsys):
    out = tmp_path / "eval"
    ref = _reference_folder(tmp_path / "ref")
    code = _cli("--model", "ddpo_tiny", "--prompts", "a cat", "a dog", "--samples-per-prompt", "2", "--seed", "5",
                "--reward", "brightness", "--reward", 'color_target={"target": [1, 0, 0]}',
                "--reference-images", ref, "--feature-network", f"{user_nets}:MeanColour",
                "--classifier", f"{user_nets}:colour_classifier", "--kid-subsets", "3", "--is-splits", "2",
                "--out", str(out), "--no-progress", *FAST)
    assert code == 0
    assert "eval samples: 4 samples (2 prompts): brightness" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == ["a cat", "a dog"] and report["seed"] == 5 and report["samples_per_prompt"] == 2
    assert [s["prompt"] for s in report["samples"]] == ["a cat", "a cat", "a dog", "a dog"]
    assert len({s["seed"] for s in report["samples"]}) == 4
    # the reported statistics are those of the saved samples, recomputed independently here
    from PIL import Image
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(out / s["file"]), dtype=np.float64)).permute(2, 0, 1)
                          / 255 for s in report["samples"]])
    bright = images.mean(dim=(1, 2, 3))
    assert [s["rewards"]["brightness"] for s in report["samples"]] == pytest.approx(bright.tolist(), abs=3e-3)
    stats = report["rewards"]["brightness"]
    per_sample = torch.tensor([s["rewards"]["brightness"] for s in report["samples"]], dtype=torch.float64)
    assert stats["mean"] == pytest.approx(float(per_sample.mean())) and stats["std"] == pytest.approx(
        float(per_sample.std(unbiased=False)))
    assert stats["per_prompt"]["a dog"]["mean"] == pytest.approx(float(per_sample[2:].mean()))
    assert set(report["rewards"]) == {"brightness", "color_target"} and report["clip_score"] is None
    # FID / KID / IS / diversity on the user networks
    assert report["fid"] > 0 and report["fid_samples"] == {"real": 5, "generated": 4}
    assert report["kid"]["subset_size"] == 4 and report["kid"]["subsets"] == 3
    assert report["inception_score"]["mean"] >= 1.0 and report["inception_score"]["splits"] == 2
    assert report["feature_network"] == f"{user_nets}:MeanColour"
    pixel = report["diversity"]["pixel"]
    cat = images[:2].reshape(2, -1)
    assert pixel["per_prompt"]["a cat"] == pytest.approx(float((cat[0] - cat[1]).norm() / cat.shape[1] ** 0.5), abs=3e-3)
    assert report["diversity"]["feature"]["metric"] == "cosine"
    # the human-readable report
    md = (out / "report.md").read_text()
    for needle in ["| reward `brightness` |", "| FID (5 real / 4 generated) |", "| KID |", "| Inception score |",
                   "![samples](samples.png)", "![brightness](reward_brightness.png)", "| a dog |"]:
        assert needle in md
    for name in ["samples.png", "reward_brightness.png", "reward_color_target.png"]:
        assert (out / name).stat().st_size > 1000
    grid = Image.open(out / "samples.png")
    assert grid.size == (2 * (96 + 2) + 2, 2 * (96 + 2) + 2)  # 2 x 2 samples enlarged from 32 to 96 px

    # the same seed gives the same samples; the config's reward is the default reward
    again = tmp_path / "again"
    assert _cli("--model", "ddpo_tiny", "--prompts", "a cat", "a dog", "--samples-per-prompt", "2", "--seed", "5",
                "--out", str(again), "--no-progress", *FAST) == 0
    second = json.loads((again / "report.json").read_text())
    assert list(second["rewards"]) == ["color_target"]
    assert [s["rewards"]["color_target"] for s in second["samples"]] == \
        [s["rewards"]["color_target"] for s in report["samples"]]


def test_eval_samples_errors(tmp_path, capsys):
    common = ["--model", "ddpo_tiny", "--out", str(tmp_path / "e"), "--no-progress", *FAST]
    assert _cli(*common, "--inception", str(tmp_path / "missing.pth")) == 1
    err = capsys.readouterr().err
    assert "missing.pth" in err and "weights-inception-2015-12-05-6726825d.pth" in err
    assert _cli(*common, "--reference-images", str(tmp_path)) == 1
    assert "needs a feature network" in capsys.readouterr().err
    assert _cli(*common, "--reward", "color_target={bad json") == 1
    assert "not JSON" in capsys.readouterr().err
    assert _cli(*common, "sampling.num_steps=0") == 2
    assert "sampling.num_steps" in capsys.readouterr().err


def _tiny_adapter(seed=0):
    from diffalign.config import load_config
    from diffalign.trainer.builders import build_adapter
    from diffalign.cli.train import resolve_config_path
    cfg = load_config(resolve_config_path("ddpo_tiny"))
    return cfg, build_adapter(cfg, ["a"], torch.device("cpu"))


def test_checkpoints_load_in_every_format(tmp_path):
    from diffalign.trainer.checkpoint import save_checkpoint
    cfg, trained = _tiny_adapter()
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)  # "trained" LoRA weights
    want = trained.trainable_state_dict()
    run = tmp_path / "run"
    folder = save_checkpoint(str(run), 3, want, {"epoch": 3}, keep_last=1)
    trained.save_pretrained(str(tmp_path / "final"))
    for path, read in [(folder, folder), (str(run), folder), (str(tmp_path / "final"), str(tmp_path / "final"))]:
        _, fresh = _tiny_adapter()
        assert ev.load_checkpoint_into(fresh, path) == read
        got = fresh.trainable_state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), path
    with pytest.raises(ValueError, match="no weights.safetensors"):
        ev.load_checkpoint_into(fresh, str(tmp_path))
    # the CLI uses it: trained weights give other samples than the base model
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    args = ["--model", "ddpo_tiny", "--prompts", "a cat", "--samples-per-prompt", "2", "--no-progress", *FAST]
    assert _cli(*args, "--out", str(base)) == 0 and _cli(*args, "--out", str(tuned), "--checkpoint", str(run)) == 0
    b, t = (json.loads((d / "report.json").read_text()) for d in (base, tuned))
    assert t["model"]["checkpoint"] == folder and b["model"]["checkpoint"] is None
    assert b["rewards"]["color_target"]["mean"] != t["rewards"]["color_target"]["mean"]


def test_reward_specs_prompts_and_stats(tmp_path):
    assert ev.parse_reward_spec("brightness") == ("brightness", {})
    assert ev.parse_reward_spec('color_target={"target": [0, 1, 0]}') == ("color_target", {"target": [0, 1, 0]})
    with pytest.raises(ValueError, match="JSON object"):
        ev.parse_reward_spec("x=[1]")
    f = tmp_path / "p.txt"
    f.write_text("# a comment\none\n\ntwo\n")
    assert ev.resolve_prompts([str(f)], None) == ["one", "two"]
    assert ev.resolve_prompts(["x", "y"], None) == ["x", "y"]
    s = ev.reward_stats(torch.tensor([1.0, 3.0, 10.0]), ["a", "a", "b"])
    assert s["mean"] == pytest.approx(14 / 3) and s["min"] == 1.0 and s["max"] == 10.0
    assert s["per_prompt"] == {"a": {"mean": 2.0, "std": 1.0, "n": 2}, "b": {"mean": 10.0, "std": 0.0, "n": 1}}
    assert ev._unique_names([("r", {}), ("q", {"a": 1}), ("q", {"a": 2})]) == ["r", 'q{"a": 1}', 'q{"a": 2}']


def test_clip_score_from_a_local_clip_model(tmp_path):
    pytest.importorskip("open_clip")  # optional (extra "rewards"): the tiny CLIP's tokenizer vocabulary
    from PIL import Image

    from diffalign.rewards.loading import load_reward
    clip = testing.tiny_clip_score(str(tmp_path / "clip"))
    out = tmp_path / "eval"
    spec = json.dumps({"model": clip, "clip_negative": False})  # a random CLIP's cosines are often < 0
    assert _cli("--model", "ddpo_tiny", "--prompts", "a cat", "a dog", "--samples-per-prompt", "1",
                "--reward", f"clip_score={spec}", "--out", str(out), "--no-progress", *FAST) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clip_score"] == report["rewards"]["clip_score"]
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(out / s["file"]), dtype=np.float32)).permute(2, 0, 1)
                          / 255 for s in report["samples"]])
    expected = load_reward("clip_score", model=clip, clip_negative=False)(images, report["prompts"])
    assert [s["rewards"]["clip_score"] for s in report["samples"]] == pytest.approx(expected.tolist(), abs=0.5)
    assert len(set(expected.tolist())) == 2  # the two samples score differently: a real comparison
