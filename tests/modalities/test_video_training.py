"""The video modality through the trainer: shipped configs validate, DDPO trains one epoch through
``diffalign train``, and DPO reads video preference pairs (data.format video_jsonl) through the offline loop."""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign import registry  # noqa: E402
from diffalign.config import ConfigError, load_config  # noqa: E402
from diffalign.modalities.video import write_video  # noqa: E402
from diffalign.trainer.logging import read_metrics  # noqa: E402
from tests.trainer.conftest import write_yaml  # noqa: E402

QUIET = {"tensorboard": False, "progress_bar": False}


def redness(videos, prompts):
    """A local test reward on frames (B, F, 3, H, W): mean red minus mean green and blue over every frame."""
    if videos.dim() != 5:
        raise ValueError(f"redness wants frames (B, F, 3, H, W), got {tuple(videos.shape)}")
    return videos[:, :, 0].mean(dim=(1, 2, 3)) - videos[:, :, 1:].mean(dim=(1, 2, 3, 4))


@pytest.fixture
def video_reward():
    registry.rewards.register("test_video_redness", redness)
    yield "test_video_redness"
    registry.rewards.unregister("test_video_redness")


@pytest.mark.parametrize("name", ["video_animatediff_ddpo", "video_wan_grpo", "video_vader_animatediff"])
def test_shipped_video_configs_validate_without_downloading(tmp_path, name):
    from diffalign.cli import shipped_config
    overrides = [f"output_dir={tmp_path}"]
    cfg = load_config(shipped_config(name), overrides)
    assert cfg.modality.name == "video" and cfg.reward.name == "per_frame"
    with pytest.raises(ConfigError, match="modality.options.num_frames"):
        load_config(shipped_config(name), overrides + ["modality.options.architecture=wan",
                                                       "modality.options.num_frames=16"])


def test_ddpo_trains_one_epoch_on_video_through_the_cli(tmp_path, video_reward):
    from diffalign.cli import main
    from diffalign.modalities.video import VideoAdapter, VideoOptions
    options = {"model": "tiny", "architecture": "animatediff", "num_frames": 4, "lora_rank": 4, "lora_alpha": 16}
    cfg = {"output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 1,
           "modality": {"name": "video", "options": options},
           "prompts": {"list": ["a cat", "a dog"]},
           "sampling": {"num_steps": 3, "eta": 1.0, "guidance_scale": 4.0, "batch_size": 4},
           "reward": {"name": video_reward},
           "algorithm": {"name": "ddpo", "clip_range": 0.0001, "per_prompt_stats": False},
           "train": {"batch_size": 2, "learning_rate": 0.003},
           "logging": QUIET}
    with pytest.raises(SystemExit) as done:
        main(["train", write_yaml(tmp_path / "cfg.yaml", cfg)])
    assert done.value.code in (0, None)
    lines = [m for m in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if "epoch" in m]
    assert lines[-1]["epoch"] == 0 and torch.isfinite(torch.tensor(lines[-1]["reward_mean"]))
    # the final LoRA is diffusers' format and moved the policy away from the base
    final = tmp_path / "run" / "final"
    assert (final / "pytorch_lora_weights.safetensors").is_file()
    from safetensors.torch import load_file
    saved = load_file(str(final / "pytorch_lora_weights.safetensors"))
    assert saved and all("motion_modules" in k for k in saved)
    lora_b = [v for k, v in saved.items() if "lora_B" in k or "lora.up" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it
    fresh = VideoAdapter.from_options(VideoOptions(**options)).trainable_state_dict()
    assert len(saved) == len(fresh)  # every LoRA layer of the policy was exported


def test_dpo_trains_on_video_preference_pairs_through_the_offline_loop(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(4):
        for side in range(2):
            write_video(str(tmp_path / f"c{i}_{side}.gif"), torch.rand(5, 3, 32, 32, generator=g))
        rows.append({"prompt": f"clip {i % 2}", "video_0": f"c{i}_0.gif", "video_1": f"c{i}_1.gif", "label": i % 2})
    rows.append({"prompt": "tie", "video_0": "c0_0.gif", "video_1": "c0_1.gif", "label": 0.5})
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = {"output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 2,
           "modality": {"name": "video", "options": {"architecture": "wan", "num_frames": 5, "lora_rank": 4}},
           "data": {"path": str(tmp_path / "prefs.jsonl"), "format": "video_jsonl"},
           "algorithm": {"name": "dpo", "beta": 500.0},
           "train": {"batch_size": 2, "learning_rate": 0.01}, "logging": QUIET}
    from diffalign.trainer import make_trainer
    with pytest.warns(UserWarning, match="1 ties"):
        trainer = make_trainer(load_config(data=cfg))
    assert len(trainer.items) == 4 and trainer.data.report.ties == 1
    before = {k: v.clone() for k, v in trainer.adapter.trainable_state_dict().items()}
    trainer.train()
    lines = [m for m in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if "loss" in m]
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in lines)
    after = trainer.adapter.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="data.format.*video_jsonl"):  # the video layout is the video modality's
        load_config(data=dict(cfg, modality={"name": "toy"}, prompts={"list": ["a"]}))


def test_grpo_trains_one_epoch_on_wan_through_the_flow_sde(tmp_path, video_reward):
    from diffalign.trainer import make_trainer
    cfg = {"output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 1,
           "modality": {"name": "video", "options": {"architecture": "wan", "num_frames": 5, "lora_rank": 4}},
           "prompts": {"list": ["a cat", "a dog"]},
           "sampling": {"num_steps": 3, "noise_level": 0.7, "guidance_scale": 3.0, "batch_size": 4},
           "reward": {"name": video_reward},
           "algorithm": {"name": "grpo", "group_size": 2, "clip_range": 0.0001, "beta": 0.004},
           "train": {"batch_size": 2, "learning_rate": 0.003}, "logging": QUIET}
    trainer = make_trainer(load_config(data=cfg))
    assert trainer.adapter.default_step_rule == "flow_sde"
    before = {k: v.clone() for k, v in trainer.adapter.trainable_state_dict().items()}
    trainer.train()
    line = [m for m in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if "epoch" in m][-1]
    assert line["epoch"] == 0 and torch.isfinite(torch.tensor(line["reward_mean"]))
    after = trainer.adapter.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
