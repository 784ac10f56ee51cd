"""The toy variants through `diffalign train`: point sets (drawn sizes, masks, projected noise), the dual-condition
model (three-branch guidance, mapping prompt items that reach the reward) and score distillation against it."""
import json
import os
import subprocess
import sys

import torch

from diffalign.config import load_config, resolve_config_path
from diffalign.trainer import make_trainer
from diffalign.trainer.logging import read_metrics

FAST = ["epochs=2", "logging.tensorboard=false", "logging.progress_bar=false", "modality.options.pretrain_steps=20"]


def test_toy_points_ddpo_trains_with_masks_and_drawn_sizes(tmp_path):
    cfg = load_config(resolve_config_path("toy_points_ddpo"), overrides=FAST + [f"output_dir={tmp_path}", "sampling.batch_size=16",
                                                           "train.batch_size=8", "sampling.num_steps=4"])
    trainer = make_trainer(cfg)
    seen = []
    inner = trainer.reward_fn
    trainer.reward_fn = lambda sets, items: seen.append([tuple(s.shape) for s in sets]) or inner(sets, items)
    history = trainer.train()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    sizes = {shape[0] for batch in seen for shape in batch}
    assert len(sizes) > 1 and sizes <= set(range(2, 7))  # the reward saw sets of drawn, different sizes
    # each set decoded centred: the constraint held through training's rollouts
    for batch in seen:
        assert all(s[1] == 3 for s in batch)


def test_toy_dual_grpo_passes_mapping_items_to_the_reward(tmp_path):
    cfg = load_config(resolve_config_path("toy_dual_grpo"), overrides=FAST + [f"output_dir={tmp_path}", "sampling.batch_size=8",
                                                         "train.batch_size=8", "sampling.num_steps=4"])
    trainer = make_trainer(cfg)
    items = []
    inner = trainer.reward_fn
    trainer.reward_fn = lambda x, prompts: items.extend(prompts) or inner(x, prompts)
    trainer.train()
    assert {"text": "dog", "source": [0.5, -0.5]} in items and "cat" in items


def test_cli_trains_the_variants(tmp_path):
    env = dict(os.environ, DIFFALIGN_AUTO_PRECISION="no")
    for name, extra in (("toy_points_ddpo", ["sampling.batch_size=16", "train.batch_size=8", "sampling.num_steps=4"]),
                        ("toy_dual_sds", ["sampling.num_batches_per_epoch=2"])):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "diffalign.cli", "train", name, f"output_dir={out}", *FAST, *extra]
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
        lines = read_metrics(os.path.join(out, "metrics.jsonl"))
        assert [line["epoch"] for line in lines] == [0, 1]
        assert os.listdir(os.path.join(out, "final"))
