"""The offline loop: pairs and labels from files, image adapters (eps and flow), frozen reference, resume."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.config import ConfigError, load_config
from diffalign.trainer import OfflineTrainer, make_trainer
from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import same_run

TOY = {
    "seed": 1, "epochs": 2,
    "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 10}},
    "prompts": {"list": ["a", "b"]},
    "data": {"path": "synthetic:toy", "num_pairs": 16},
    "algorithm": {"name": "dpo", "beta": 50.0},
    "train": {"batch_size": 4, "learning_rate": 0.01},
    "logging": {"tensorboard": False, "progress_bar": False},
}


def config(tmp_path, *overrides, **changes):
    data = json.loads(json.dumps(TOY))
    data.update(changes)
    data["output_dir"] = str(tmp_path / "run")
    return load_config(data=data, overrides=list(overrides))


def test_make_trainer_picks_the_offline_loop_and_logs_required_metrics(tmp_path):
    trainer = make_trainer(config(tmp_path))
    assert isinstance(trainer, OfflineTrainer)
    ref_before = {k: v.clone() for k, v in trainer.adapter._reference_denoiser.state_dict().items()}
    pol_before = {k: v.clone() for k, v in trainer.adapter.trainable_state_dict().items()}
    history = trainer.train()
    lines = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [m["epoch"] for m in lines] == [0, 1]
    for m in lines:
        assert {"loss", "implicit_acc", "reward_margin", "grad_norm", "lr", "num_items"} <= set(m)
        assert 0 <= m["implicit_acc"] <= 1 and m["num_items"] == 16
    # the frozen reference never moves; the policy does
    ref_after = trainer.adapter._reference_denoiser.state_dict()
    assert all(torch.equal(ref_before[k], ref_after[k]) for k in ref_before)
    assert any(not torch.equal(pol_before[k], v) for k, v in trainer.adapter.trainable_state_dict().items())
    assert json.load(open(tmp_path / "run" / "data_report.json"))["kept"] == 16
    assert history[-1]["epoch"] == 1


def test_first_step_of_dpo_has_zero_margin_and_log2_loss(tmp_path):
    """Policy = reference at the start: every margin is 0, so the first loss is log 2 exactly."""
    trainer = make_trainer(config(tmp_path))
    batch = trainer.make_batch(0, list(range(4)), [0, 1, 2, 3])
    # the pair shares noise and timestep: winner and loser rows differ only through x0
    assert torch.equal(batch.timesteps[:4], batch.timesteps[4:])
    loss, m = trainer.algorithm.loss(batch, trainer.policy, trainer.policy.reference())
    assert float(loss.detach()) == pytest.approx(np.log(2), abs=1e-6) and float(m["reward_margin"]) == 0.0


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = make_trainer(config(tmp_path / "full", "epochs=3")).train()
    make_trainer(config(tmp_path / "part", "epochs=2")).train()
    resumed = make_trainer(config(tmp_path / "part", "epochs=3", "resume_from=latest")).train()
    assert [same_run(m) for m in resumed] == [same_run(full[2])]


def test_kto_on_binary_feedback_file(tmp_path):
    rows = [{"prompt": "a", "image": [float(i), 0.0], "desirable": i % 2 == 0} for i in range(8)]
    path = tmp_path / "fb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tmp_path, f"data.path={path}", "algorithm={name: kto, beta: 20}")
    trainer = make_trainer(cfg)
    assert trainer.labels and len(trainer.items) == 8
    (m,) = trainer.train()[-1:]
    assert {"loss", "implicit_acc", "reward_margin", "kl_ref"} <= set(m) and m["kl_ref"] >= 0


def test_e2po_reads_stored_rewards_and_dpo_rejects_labels(tmp_path):
    h = make_trainer(config(tmp_path, "algorithm={name: e2po, beta: 50, beta_r: 2}", "epochs=1")).train()
    assert np.isfinite(h[0]["loss"])
    path = tmp_path / "fb.jsonl"
    path.write_text(json.dumps({"prompt": "a", "image": [1.0, 0.0], "desirable": True}) + "\n")
    with pytest.raises(ValueError, match="binary feedback.*learns from pairs"):
        make_trainer(config(tmp_path, f"data.path={path}"))
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "chosen": [1.0, 0.0], "rejected": [0.0, 0.0]}) + "\n")
    with pytest.raises(ValueError, match="e2po needs a reward"):
        make_trainer(config(tmp_path, f"data.path={pairs}", "algorithm={name: e2po}"))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'data.path' is required"):
        config(tmp_path, "data.path=null")
    with pytest.raises(ConfigError, match="'data.path'.*neither an existing file"):
        config(tmp_path, f"data.path={tmp_path / 'nope.jsonl'}")
    with pytest.raises(ConfigError, match="'data.format' must be one of"):
        config(tmp_path, "data.format=csv")
    with pytest.raises(ConfigError, match="unknown synthetic set"):
        config(tmp_path, "data.path=synthetic:cats")
    with pytest.raises(ConfigError, match="needs prompts"):
        config(tmp_path, prompts={})
    with pytest.raises(ConfigError, match="algorithm.beta"):
        config(tmp_path, "algorithm.beta=-1")
    with pytest.raises(ConfigError, match="'data.streaming' = True needs data.max_records"):
        config(tmp_path, "data.path=owner/name", "data.streaming=true")


def test_full_size_config_validates_without_downloading():
    from diffalign.cli import shipped_config
    cfg = load_config(shipped_config("dpo_sd15_pickapic"))
    assert cfg.data.path == "yuvalkirstain/pickapic_v2" and cfg.data.streaming and cfg.algorithm["beta"] == 5000


@pytest.mark.parametrize("architecture,algorithm", [("sd", "dpo"), ("sd3", "simpo")])
def test_image_pairs_from_pngs_train_eps_and_flow_models(tmp_path, architecture, algorithm):
    """Tiny SD (epsilon UNet) and SD3 (flow transformer) with LoRA learn from PNG pairs; prompts come from the data."""
    os.makedirs(tmp_path / "img")
    rows = []
    for i in range(4):
        bright = Image.new("RGB", (20, 16), (200 + 10 * i, 200, 200))  # non-square: centre-cropped
        dark = Image.new("RGB", (16, 16), (10 * i, 0, 0))
        bright.save(tmp_path / "img" / f"w{i}.png")
        dark.save(tmp_path / "img" / f"l{i}.png")
        rows.append({"prompt": f"prompt {i % 2}", "chosen": f"img/w{i}.png", "rejected": f"img/l{i}.png"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(data={
        "output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 1,
        "modality": {"name": "image", "options": {"model": "tiny", "architecture": architecture, "resolution": 16,
                                                  "lora_rank": 2, "lora_alpha": 2}},
        "data": {"path": str(tmp_path / "pairs.jsonl")}, "algorithm": {"name": algorithm},
        "train": {"batch_size": 2, "learning_rate": 0.001}, "logging": {"tensorboard": False, "progress_bar": False}})
    trainer = make_trainer(cfg)
    assert trainer.prompts == ["prompt 0", "prompt 1"]
    assert trainer.forward.flow == (architecture == "sd3")
    lora_before = {k: v.clone() for k, v in trainer.adapter.trainable_state_dict().items()}
    base = [p for n, p in trainer.adapter.denoiser.named_parameters() if "lora" not in n][0].detach().clone()
    (m,) = trainer.train()
    assert np.isfinite(m["loss"]) and {"implicit_acc", "reward_margin"} <= set(m)
    assert any(not torch.equal(lora_before[k], v) for k, v in trainer.adapter.trainable_state_dict().items())
    assert torch.equal(base, [p for n, p in trainer.adapter.denoiser.named_parameters() if "lora" not in n][0])
    assert len(trainer._cache) == 8  # every stored image encoded once
    assert os.path.isdir(tmp_path / "run" / "final")


@pytest.mark.parametrize("scheduler,loss_type", [("flow", "sigmoid"), ("ddpm", "hinge")])
def test_toy_flow_matching_and_hinge(tmp_path, scheduler, loss_type):
    """Velocity-target (flow) and epsilon models train on pairs; the target is what the forward process says."""
    cfg = config(tmp_path, f"modality.options.scheduler={scheduler}", f"algorithm.loss_type={loss_type}", "epochs=1")
    trainer = make_trainer(cfg)
    assert trainer.forward.flow == (scheduler == "flow")
    batch = trainer.make_batch(0, [0, 1], [3, 5])
    x0 = torch.stack([trainer.items[3].chosen, trainer.items[5].chosen, trainer.items[3].rejected,
                      trainer.items[5].rejected])
    noise = torch.cat([batch.target[:2], batch.target[:2]])
    if scheduler == "flow":  # target = eps - x0, with one eps per pair
        noise = batch.target + x0
        torch.testing.assert_close(noise[:2], noise[2:])
        torch.testing.assert_close(batch.x_t, x0 + (batch.timesteps / 1000)[:, None] * (noise - x0))
    else:  # target = eps, shared by the pair
        torch.testing.assert_close(batch.target[:2], batch.target[2:])
    (m,) = trainer.train()
    assert np.isfinite(m["loss"]) and 0 <= m["implicit_acc"] <= 1
