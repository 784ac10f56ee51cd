"""The threed modality through the trainer (SDS's ``generator: modality``): exact resume, DreamFL's reward term,
``diffalign export-3d`` on the run, the generic hook on the toy modality, and timestep annealing."""
import copy
import os

import pytest
import torch
from safetensors.torch import load_file

from diffalign.algorithms.score_distillation import SDS, GeneratorBatch, PointGenerator, SDSConfig
from diffalign.cli import main
from diffalign.config import load_config
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyAdapter
from diffalign.trainer import make_trainer
from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint
from tests.trainer.conftest import same_run

THREED_TINY = {
    "seed": 2,
    "epochs": 2,
    "modality": {"name": "threed", "options": {"prior": {"model": "tiny", "resolution": 16}, "num_samples": 12,
                                               "hidden": 16, "features": 8, "background": "random"}},
    "prompts": {"list": ["a red circle", "a blue square"]},
    "sampling": {"num_steps": 20, "num_batches_per_epoch": 2},
    "algorithm": {"name": "sds", "generator": "modality", "guidance_scale": 5.0, "max_step_final": 0.5,
                  "anneal_steps": 3},
    "train": {"batch_size": 2, "learning_rate": 0.01, "mixed_precision": "no"},
    "logging": {"tensorboard": False, "progress_bar": False},
}


def threed_config(tmp_path, name="run", **top):
    cfg = copy.deepcopy(THREED_TINY)
    cfg["output_dir"] = str(tmp_path / name)
    cfg.update(top)
    return cfg


def test_threed_resume_reproduces_the_uninterrupted_run_and_exports(tmp_path, capsys):
    pytest.importorskip("nerfstudio")
    full_cfg = threed_config(tmp_path, "full")
    full = make_trainer(load_config(data=full_cfg)).train()
    part_cfg = threed_config(tmp_path, "part")
    make_trainer(load_config(data=part_cfg, overrides=["epochs=1"])).train()
    resumed = make_trainer(load_config(data=part_cfg, overrides=["resume_from=latest"]))
    assert resumed.start_epoch == 1
    history = resumed.train()
    assert [same_run(m) for m in history] == [same_run(m) for m in full[1:]]
    a = load_checkpoint(latest_checkpoint(full_cfg["output_dir"]))[1]["modules"]["generator"]
    b = load_checkpoint(latest_checkpoint(part_cfg["output_dir"]))[1]["modules"]["generator"]
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    final = load_file(os.path.join(full_cfg["output_dir"], "final", "generator.safetensors"))
    assert any(not torch.equal(final[k], v) for k, v in resumed.modules["generator"].state_dict().items()) is False
    # the field trained (the denoiser did not)
    fresh = resumed.adapter.build_generator(0).state_dict()
    assert any(not torch.equal(final[k], fresh[k]) for k in fresh)
    assert all(p.grad is None for p in resumed.adapter.denoiser.parameters())
    # diffalign export-3d on the run: turntable PNG + GIF and the mesh
    config = str(tmp_path / "run.yaml")
    import yaml
    with open(config, "w") as f:
        yaml.safe_dump(full_cfg, f)
    with pytest.raises(SystemExit) as done:
        main(["export-3d", config, "--views", "4", "--mesh-resolution", "24", "--level", "1.0"])
    assert done.value.code == 0, capsys.readouterr().err
    out = os.path.join(full_cfg["output_dir"], "export")
    assert sorted(os.listdir(out)) == ["mesh.obj", "mesh.ply", "turntable.gif", "turntable.png"]
    with pytest.raises(SystemExit) as bad:
        main(["export-3d", config, "--run", str(tmp_path / "nowhere")])
    assert bad.value.code == 2 and "train it first" in capsys.readouterr().err


def test_dreamfl_reward_term_raises_the_reward_over_plain_sds(tmp_path):
    """Equal seeds and steps; DreamFL adds reward_weight * brightness of every rendered view (a differentiable
    reward of the zoo): its final renders are brighter than plain SDS's."""
    pytest.importorskip("nerfstudio")
    means = {}
    for weight in (0.0, 3000.0):
        cfg = threed_config(tmp_path, f"w{weight}", epochs=3, reward={"name": "differentiable_brightness"})
        cfg["algorithm"] = {**cfg["algorithm"], "reward_weight": weight}
        # the pixel-space demo prior (decode: (x + 1) / 2), views rendered at 16 and resized to its 32
        cfg["modality"]["options"].update(prior={"model": "demo"}, render_resolution=16, background="black")
        trainer = make_trainer(load_config(data=cfg))
        history = trainer.train()
        cond = trainer.adapter.encode_conditions(["a red circle"] * 4, [torch.Generator().manual_seed(i)
                                                                         for i in range(4)])
        with torch.no_grad():
            images = trainer.adapter.render_images(trainer.modules["generator"].eval(), cond)
        means[weight] = float(images.mean())
        assert ("reward_mean" in history[-1]) == (weight > 0)
    print("DreamFL vs SDS, mean brightness of 4 views:", means)
    assert means[3000.0] > means[0.0] + 0.05, means


# ---- the generic hook on the toy modality -----------------------------------------------------------------------
def test_toy_generator_hook_gives_the_point_generators_loss_and_gradient():
    adapter = ToyAdapter(["cat"], dim=2, hidden=8)
    rule = make_step_rule("ddim", adapter.scheduler, 20)
    critic = DiffusionPolicy(adapter, rule, 2.0).reference()
    hook = SDS(SDSConfig(guidance_scale=2.0, generator="modality", init_seed=5))
    module = hook.trainable_modules(adapter, (2,))["generator"]
    # the same initial point as the algorithm's own point generator, so the two paths must agree exactly
    point = PointGenerator(module.point.detach()[None])
    cond = adapter.encode_conditions(["cat"] * 3)
    x_hook = hook.render({"generator": module}, cond, [], adapter=adapter)
    x_point = point(torch.zeros(3, dtype=torch.long))
    assert torch.equal(x_hook, x_point)
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([3, 9, 15])
    l1, _ = hook.loss(GeneratorBatch(x_hook, steps, noise, cond, ["cat"] * 3), None, critic)
    l2, _ = SDS(SDSConfig(guidance_scale=2.0)).loss(GeneratorBatch(x_point, steps, noise, cond, ["cat"] * 3), None,
                                                     critic)
    g1, = torch.autograd.grad(l1, [module.point])
    g2, = torch.autograd.grad(l2, [point.points])
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(g1, g2[0])
    with pytest.raises(ValueError, match="renders through the adapter"):
        hook.render({"generator": module}, cond, [])


def test_toy_trains_with_the_modality_generator(tmp_path):
    cfg = {"seed": 1, "epochs": 2, "output_dir": str(tmp_path / "toy"),
           "modality": {"name": "toy", "options": {"dim": 2, "hidden": 16, "pretrain_steps": 10}},
           "prompts": {"list": ["cat"]}, "sampling": {"num_steps": 20, "num_batches_per_epoch": 3},
           "algorithm": {"name": "sds", "guidance_scale": 1.0, "generator": "modality", "init_seed": 3},
           "train": {"batch_size": 4, "learning_rate": 0.05}, "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = make_trainer(load_config(data=cfg))
    start = trainer.modules["generator"].point.detach().clone()
    trainer.train()
    final = load_file(os.path.join(cfg["output_dir"], "final", "generator.safetensors"))
    assert sorted(final) == ["point"] and not torch.equal(final["point"], start)


# ---- timestep annealing -------------------------------------------------------------------------------------
def test_timestep_annealing_narrows_the_t_range_linearly():
    adapter = ToyAdapter(["cat"], dim=2, hidden=8)
    rule = make_step_rule("ddim", adapter.scheduler, 50)
    algo = SDS(SDSConfig(min_step=0.02, max_step=0.98, max_step_final=0.5, anneal_steps=10))
    assert [algo.max_step_at(s) for s in (0, 5, 10, 40)] == pytest.approx([0.98, 0.74, 0.5, 0.5])
    frac = rule.timesteps.double() / adapter.scheduler.config.num_train_timesteps
    for step in (0, 5, 10):
        allowed = algo.allowed_steps(rule, step)
        assert float(frac[allowed].max()) <= algo.max_step_at(step) + 1e-12
        # every step inside the range is allowed
        assert len(allowed) == int(((frac >= 0.02) & (frac <= algo.max_step_at(step))).sum())
    assert len(algo.allowed_steps(rule, 10)) < len(algo.allowed_steps(rule, 0))
    plain = SDS(SDSConfig())
    assert torch.equal(plain.allowed_steps(rule, 0), plain.allowed_steps(rule, 1000))
    with pytest.raises(ValueError, match="algorithm.anneal_steps"):
        SDSConfig(max_step_final=0.5)
    with pytest.raises(ValueError, match="algorithm.anneal_steps"):
        SDSConfig(anneal_steps=5)
    with pytest.raises(ValueError, match="algorithm.init"):  # the point generator's options, not the modality's
        SDSConfig(generator="modality", init=[1.0, 2.0])
