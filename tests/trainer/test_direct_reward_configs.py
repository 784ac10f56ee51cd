"""Each shipped direct-reward config (ReFL, DRaFT, AlignProp) raises its reward, run through `diffalign train`
(shortened: fewer epochs, every other setting as shipped); LoRA scaling at evaluation.

The target is eval_reward: the reward of fixed-seed samples logged before each epoch's update, so the numbers
are the same on every run. Margins are about half the measured rises recorded in docs/experiments.md.
"""
import os

import pytest
import torch

from diffalign.cli import main, shipped_config
from diffalign.config import ConfigError, load_config
from diffalign.trainer import LOOPS, make_trainer
from diffalign.trainer.common import lora_scale
from diffalign.trainer.differentiable import DifferentiableTrainer
from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import same_run

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false"]

# name, epochs run, required rise of the mean eval_reward of the last 3 epochs over the first 3 (measured rise)
CASES = [
    ("draft_tiny", 5, 0.01),      # 0.0223
    ("refl_tiny", 5, 0.01),       # 0.0227
    ("alignprop_tiny", 5, 0.01),  # 0.0218
]


def _train(name, out, *overrides):
    with pytest.raises(SystemExit) as exit_:
        main(["train", name, f"output_dir={out}", *QUIET, *overrides])
    assert exit_.value.code == 0
    return read_metrics(os.path.join(out, "metrics.jsonl"))


@pytest.mark.parametrize("name,epochs,margin", CASES, ids=[c[0] for c in CASES])
def test_shipped_direct_reward_config_raises_its_reward(tmp_path, name, epochs, margin):
    full = load_config(shipped_config(name))
    assert full.epochs > epochs and full.modality.options["model"] == "tiny"
    lines = _train(name, tmp_path / name, f"epochs={epochs}")
    assert [m["epoch"] for m in lines] == list(range(epochs))
    rewards = [m["eval_reward"] for m in lines]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + margin, [round(r, 4) for r in rewards]
    assert all(m["grad_norm"] > 0 for m in lines)
    if name == "refl_tiny":  # the pre-training term is zero before the first update, then grows
        assert lines[0]["pretrain_loss"] < 1e-12 < lines[-1]["pretrain_loss"]
        assert all(5 <= m["grad_step"] <= 7 for m in lines)
    if name == "alignprop_tiny":
        assert len({m["truncation"] for m in lines}) > 1
    assert os.path.isfile(tmp_path / name / "final" / "pytorch_lora_weights.safetensors")


def test_draft_lv_runs_through_the_cli(tmp_path):
    lines = _train("draft_tiny", tmp_path / "lv", "epochs=2", "algorithm.lv_samples=2")
    assert lines[1]["eval_reward"] > lines[0]["eval_reward"]


def test_lora_scale_zero_samples_the_base_model_and_one_the_trained(tmp_path):
    base = _train("draft_tiny", tmp_path / "s0", "epochs=2", "algorithm.lora_scale=0.0")
    trained = _train("draft_tiny", tmp_path / "s1", "epochs=2", "algorithm.lora_scale=1.0")
    assert base[0]["eval_reward"] == trained[0]["eval_reward"]   # nothing trained yet
    assert base[1]["eval_reward"] == base[0]["eval_reward"]      # scale 0: the base model after an update
    assert trained[1]["eval_reward"] != trained[0]["eval_reward"]


def test_lora_scale_interpolates_the_lora_update():
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    adapter = ImageAdapter.from_options(ImageOptions(resolution=16, lora_rank=4))
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    cond = adapter.encode_conditions(["a cat"])
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        trained = adapter.denoise(x, t, cond)
        with adapter.reference_mode():
            base = adapter.denoise(x, t, cond)
        outs = {}
        for s in (0.0, 0.5, 1.0, 2.0):
            with lora_scale(adapter, s):
                outs[s] = adapter.denoise(x, t, cond)
        after = adapter.denoise(x, t, cond)
    assert (trained - base).abs().max() > 1e-3
    assert torch.allclose(outs[0.0], base, atol=1e-6) and torch.allclose(outs[1.0], trained, atol=1e-6)
    mid = outs[0.5]
    assert (mid - base).abs().max() > 1e-4 and (mid - trained).abs().max() > 1e-4
    assert torch.equal(after, trained)  # restored on exit
    with pytest.raises(ValueError, match="lora_scale must be >= 0"):
        with lora_scale(adapter, -1.0):
            pass


def test_lora_scale_needs_lora():
    from diffalign.modalities.toy import ToyAdapter
    with pytest.raises(ValueError, match="needs LoRA adapters"):
        with lora_scale(ToyAdapter(["a"], dim=2), 0.5):
            pass


def test_config_errors_name_the_key(tmp_path):
    for override, key in (("algorithm.truncation=9", "algorithm.truncation = 9 exceeds sampling.num_steps = 8"),
                          ("reward.name=nope", "reward.name 'nope' is unknown"),
                          ("algorithm.lv_samples=-1", "algorithm.lv_samples")):
        with pytest.raises(ConfigError, match=key):
            load_config(shipped_config("draft_tiny"), [f"output_dir={tmp_path}", override])
    with pytest.raises(ConfigError, match="algorithm.late_steps = 9"):
        load_config(shipped_config("refl_tiny"), [f"output_dir={tmp_path}", "algorithm.late_steps=9"])
    assert LOOPS["differentiable_sampling"] is DifferentiableTrainer
    cfg = load_config(shipped_config("draft_tiny"), [f"output_dir={tmp_path}"])
    assert type(make_trainer(cfg)) is DifferentiableTrainer


@pytest.mark.parametrize("algorithm", [{"name": "alignprop", "pretrain_weight": 0.1}, {"name": "d3po"},
                                       {"name": "spo", "num_children": 3, "gamma": 0.8}], ids=lambda a: a["name"])
def test_toy_runs_resume_exactly(tmp_path, algorithm):
    """Both new loops on the toy modality: 3 epochs in one go equal 2 epochs, a checkpoint, and a resumed third."""
    from diffalign.config import load_config as load
    data = {"seed": 1, "epochs": 3, "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 20}},
            "prompts": {"list": ["a", "b"]}, "sampling": {"num_steps": 4, "batch_size": 4},
            "reward": {"name": "toy_target_distance"}, "algorithm": algorithm,
            "train": {"batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 0.01},
            "logging": {"tensorboard": False, "progress_bar": False}}

    def run(out, epochs, resume=None):
        cfg = load(data={**data, "output_dir": str(out), "epochs": epochs, "resume_from": resume})
        return make_trainer(cfg).train()
    full = run(tmp_path / "full", 3)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 3, "latest")
    assert len(resumed) == 1 and full[0]["eval_reward"] != full[-1]["eval_reward"]
    assert same_run(full[-1]) == same_run(resumed[0])
