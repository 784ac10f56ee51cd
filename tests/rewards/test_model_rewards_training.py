"""Model rewards named from training configs (reward.name / reward.kwargs), run through `diffalign train`."""
import json
import math
import os

import pytest

from diffalign.cli import main
from diffalign.rewards import testing
from diffalign.trainer.logging import read_metrics

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false", "epochs=1"]


def _train(name, out, *overrides):
    with pytest.raises(SystemExit) as exit_:
        main(["train", name, f"output_dir={out}", *QUIET, *overrides])
    assert exit_.value.code == 0
    return read_metrics(os.path.join(out, "metrics.jsonl"))


def test_refl_backpropagates_through_image_reward_named_by_its_directory(tmp_path):
    reward_dir = testing.tiny_image_reward(str(tmp_path / "image_reward"))
    lines = _train("refl_tiny", tmp_path / "run", f"reward.name={reward_dir}", "reward.kwargs={}")
    assert len(lines) == 1 and math.isfinite(lines[0]["eval_reward"])
    assert lines[0]["grad_norm"] > 0  # the reward's gradient reached the LoRA weights through the decoder


def test_ddpo_with_a_weighted_sum_of_a_model_reward_and_jpeg(tmp_path):
    pick = testing.tiny_pickscore(str(tmp_path / "pickscore"))
    comps = [{"name": "pickscore", "kwargs": {"model": pick}, "weight": 1.0, "normalize": "running"},
             {"name": "jpeg_compressibility", "weight": 0.1}]
    lines = _train("ddpo_tiny", tmp_path / "run", "reward.name=weighted_sum",
                   f"reward.kwargs={json.dumps({'components': comps})}", "sampling.batch_size=8",
                   "train.batch_size=8", "train.gradient_accumulation_steps=1")
    assert len(lines) == 1 and math.isfinite(lines[0]["reward_mean"]) and lines[0]["reward_std"] > 0
