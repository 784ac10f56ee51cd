"""The generator data path (SDS): a learnable point distilled against a frozen toy diffusion model.

The closed-form reference: for data x0 ~ N(mu, I) the optimal noise prediction is
E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) mu), and classifier-free guidance g between mu_cond and mu_uncond = 0 is
the same formula with mu -> g mu. So with an analytic critic the SDS gradient is known exactly, and its expectation
w(t) sqrt(a (1-a)) (x - g mu) drives the point to g mu; a wrong-sign gradient would drive it away.
"""
import copy
import math
import os
import types

import pytest
import torch
from safetensors.torch import load_file

from diffalign.algorithms import ALGORITHMS, DataPath
from diffalign.algorithms.score_distillation import SDS, GeneratorBatch, SDSConfig, eps_from_output
from diffalign.cli import main
from diffalign.config import ConfigError, load_config
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyAdapter
from diffalign.trainer import LOOPS, GeneratorTrainer, make_trainer
from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint
from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import same_run

MU = torch.tensor([0.5, -0.4], dtype=torch.float64)

SDS_TINY = {
    "seed": 1,
    "epochs": 2,
    "modality": {"name": "toy", "options": {"dim": 2, "hidden": 32, "scheduler": "ddim", "pretrain_steps": 20}},
    "prompts": {"list": ["cat"]},
    "sampling": {"num_steps": 20, "num_batches_per_epoch": 3},
    "reward": {"name": "no_such_reward"},  # SDS scores nothing: the reward section is not read
    "algorithm": {"name": "sds", "guidance_scale": 1.0, "init": [1.0, -1.0]},
    "train": {"batch_size": 4, "learning_rate": 0.05},
    "logging": {"tensorboard": False, "progress_bar": False},
}


def sds_config(tmp_path, name="run", **top):
    cfg = copy.deepcopy(SDS_TINY)
    cfg["output_dir"] = str(tmp_path / name)
    cfg.update(top)
    return cfg


class AnalyticCritic(torch.nn.Module):
    """The exact denoiser of x0 ~ N(mu[prompt], I) (prompt id 0; the null prompt id 1 has mean 0), epsilon
    prediction on the scheduler's alphas_cumprod, or velocity prediction (flow: t = 1000 s)."""

    def __init__(self, scheduler, flow: bool):
        super().__init__()
        self.flow = flow
        self.alphas_cumprod = None if flow else scheduler.alphas_cumprod.to(torch.float64)

    def forward(self, x, t, prompt_id):
        x = x.double()
        mu = torch.where((prompt_id == 0)[:, None], MU.to(x.device), torch.zeros_like(MU).to(x.device))
        if self.flow:
            s = (t.double() / 1000.0)[:, None]
            v = (1 - s) ** 2 + s ** 2
            e_eps = s * (x - (1 - s) * mu) / v
            e_x0 = mu + (1 - s) * (x - (1 - s) * mu) / v
            return (e_eps - e_x0).float()
        a = self.alphas_cumprod[t.long().cpu()].to(x.device)[:, None]
        return ((1 - a).sqrt() * (x - a.sqrt() * mu)).float()


def analytic_toy(flow=False):
    adapter = ToyAdapter(["cat"], dim=2, hidden=8, scheduler="flow" if flow else "ddim")
    adapter._reference_denoiser = AnalyticCritic(adapter.scheduler, flow)
    return adapter


# ---- the algorithm against closed forms ------------------------------------------------------------------------
@pytest.mark.parametrize("flow", [False, True], ids=["ddim_eps", "flow_velocity"])
@pytest.mark.parametrize("weighting", ["sds", "uniform"])
def test_sds_gradient_matches_closed_form(flow, weighting):
    adapter = analytic_toy(flow)
    rule = make_step_rule("flow_sde" if flow else "ddim", adapter.scheduler, 50)
    g = 3.0
    critic = DiffusionPolicy(adapter, rule, guidance_scale=g).reference()
    algo = SDS(SDSConfig(guidance_scale=g, weighting=weighting))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=gen, requires_grad=True)
    noise = torch.randn(6, 2, generator=gen)
    steps = algo.allowed_steps(rule)[torch.randint(len(algo.allowed_steps(rule)), (6,), generator=gen)]
    cond = adapter.encode_conditions(["cat"] * 6)
    grad, _ = algo.sds_gradient(GeneratorBatch(x, steps, noise, cond, ["cat"] * 6), critic)
    # float64 reference: x_t from the forward process, E[eps | x_t] of N(g mu, I), DreamFusion's w(t)
    xd, nd = x.detach().double(), noise.double()
    if flow:
        s = rule.sigma[steps][:, None]
        x_t = (1 - s) * xd + s * nd
        v = (1 - s) ** 2 + s ** 2
        eps_hat = s * (x_t - (1 - s) * g * MU) / v
        w = s ** 2 / v  # 1 - alpha_bar of equal signal-to-noise ratio
    else:
        a = rule.alpha_t[steps][:, None]
        x_t = a.sqrt() * xd + (1 - a).sqrt() * nd
        eps_hat = (1 - a).sqrt() * (x_t - a.sqrt() * g * MU)
        w = 1 - a
    if weighting == "uniform":
        w = torch.ones_like(w)
    expected = w * (eps_hat - nd)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-5)
    # the loss's gradient to the render is the SDS gradient (mean over the batch)
    loss, metrics = algo.loss(GeneratorBatch(x, steps, noise, cond, ["cat"] * 6), None, critic)
    loss.backward()
    torch.testing.assert_close(x.grad.double(), expected / 6, rtol=1e-4, atol=1e-6)
    assert float(metrics["sds_grad_norm"]) > 0


def test_eps_from_output_inverts_every_parameterisation():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    a = torch.rand(5, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    steps = torch.arange(5)
    x_t = a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * eps
    for kind, out in [("epsilon", eps), ("sample", x0), ("v_prediction", a.sqrt()[:, None] * eps - (1 - a).sqrt()[:, None] * x0)]:
        rule = types.SimpleNamespace(prediction_type=kind, alpha_t=a)
        torch.testing.assert_close(eps_from_output(rule, out, x_t, steps), eps)
    s = a
    rule = types.SimpleNamespace(prediction_type="flow", sigma=s)
    x_s = (1 - s)[:, None] * x0 + s[:, None] * eps
    torch.testing.assert_close(eps_from_output(rule, eps - x0, x_s, steps), eps)


def test_t_range_keeps_only_steps_inside_it():
    adapter = ToyAdapter(["cat"], dim=2, hidden=8)
    rule = make_step_rule("ddim", adapter.scheduler, 50)
    steps = SDS(SDSConfig(min_step=0.2, max_step=0.5)).allowed_steps(rule)
    frac = rule.timesteps[steps].double() / 1000
    assert len(steps) > 5 and bool(((frac >= 0.2) & (frac <= 0.5)).all())
    outside = torch.tensor([i for i in range(50) if i not in steps.tolist()])
    assert not bool(((rule.timesteps[outside].double() / 1000 >= 0.2) & (rule.timesteps[outside].double() / 1000 <= 0.5)).any())
    with pytest.raises(ValueError, match="algorithm.min_step"):
        SDS(SDSConfig(min_step=0.3, max_step=0.31)).allowed_steps(make_step_rule("ddim", adapter.scheduler, 4))


# ---- the trainer -------------------------------------------------------------------------------------------------
def test_registered_for_the_generator_path():
    assert ALGORITHMS["sds"].data_path == DataPath.GENERATOR and LOOPS[DataPath.GENERATOR] is GeneratorTrainer


def test_point_reaches_the_guided_mode_of_an_analytic_critic(tmp_path):
    """Through the whole trainer: guidance 3 over N(mu, I) puts the mode at 3 mu; the point starts 3.3 away."""
    cfg = sds_config(tmp_path, epochs=60, algorithm={"name": "sds", "guidance_scale": 3.0, "init": [-1.0, 1.0]})
    cfg["train"].update(learning_rate=0.03, batch_size=16)
    trainer = make_trainer(load_config(data=cfg))
    trainer.adapter._reference_denoiser = AnalyticCritic(trainer.adapter.scheduler, flow=False)
    target = (3.0 * MU).float()
    start = float((trainer.modules["generator"].points[0].detach() - target).norm())
    trainer.train()
    end = float((trainer.modules["generator"].points[0].detach() - target).norm())
    assert start > 3.0 and end < 0.2, (start, end)


def test_pretrained_toy_point_moves_to_its_mode_and_the_denoiser_stays_frozen(tmp_path):
    cfg = sds_config(tmp_path, epochs=40, algorithm={"name": "sds", "guidance_scale": 1.0, "init": [2.0, -1.5]})
    cfg["modality"]["options"]["pretrain_steps"] = 200
    trainer = make_trainer(load_config(data=cfg))
    before = copy.deepcopy(trainer.adapter.denoiser.state_dict())
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert len(params) == 1 and params[0] is trainer.modules["generator"].points
    assert not any(p.requires_grad for p in trainer.adapter.denoiser.parameters())
    trainer.train()
    point = trainer.modules["generator"].points[0].detach()
    assert float(point.norm()) < 0.6, point  # from 2.5: the toy learned N(0, I), whose mode is the origin
    after = trainer.adapter.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in trainer.adapter.denoiser.parameters())
    final = load_file(os.path.join(cfg["output_dir"], "final", "generator.safetensors"))
    assert torch.equal(final["points"][0], point.cpu())


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full_cfg = sds_config(tmp_path, "full")
    full = make_trainer(load_config(data=full_cfg)).train()
    part_cfg = sds_config(tmp_path, "part")
    make_trainer(load_config(data=part_cfg, overrides=["epochs=1"])).train()
    resumed = make_trainer(load_config(data=part_cfg, overrides=["resume_from=latest"]))
    assert resumed.start_epoch == 1
    history = resumed.train()
    assert [same_run(m) for m in history] == [same_run(m) for m in full[1:]]
    a = load_checkpoint(latest_checkpoint(full_cfg["output_dir"]))[1]
    b = load_checkpoint(latest_checkpoint(part_cfg["output_dir"]))[1]
    assert a["modules"]["generator"]["points"].shape == (1, 2)
    assert torch.equal(a["modules"]["generator"]["points"], b["modules"]["generator"]["points"])
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    fa = load_file(os.path.join(full_cfg["output_dir"], "final", "generator.safetensors"))
    fb = load_file(os.path.join(part_cfg["output_dir"], "final", "generator.safetensors"))
    assert torch.equal(fa["points"], fb["points"])
    lines = read_metrics(os.path.join(part_cfg["output_dir"], "metrics.jsonl"))
    assert [same_run(m) for m in lines] == [same_run(m) for m in full]


def test_resume_into_another_algorithm_names_the_modules(tmp_path):
    cfg = sds_config(tmp_path, epochs=1)
    make_trainer(load_config(data=cfg)).train()
    trainer = make_trainer(load_config(data=cfg, overrides=["epochs=2"]))
    trainer.modules = {}
    with pytest.raises(ValueError, match=r"holds trainable modules \['generator'\]"):
        trainer.load(latest_checkpoint(cfg["output_dir"]))


def test_accumulation_splits_renders_without_changing_the_step(tmp_path):
    one = make_trainer(load_config(data=sds_config(tmp_path, "one", epochs=1), overrides=["train.batch_size=8"]))
    two = make_trainer(load_config(data=sds_config(tmp_path, "two", epochs=1),
                                   overrides=["train.batch_size=4", "train.gradient_accumulation_steps=2"]))
    one.train()
    two.train()
    torch.testing.assert_close(one.modules["generator"].points, two.modules["generator"].points, rtol=1e-5, atol=1e-6)


def test_reward_weight_moves_the_point_to_the_closed_form_optimum(tmp_path):
    """L_SDS - lam * r with r = -||x - target||^2 (toy_target_distance) and the analytic critic: the expected
    gradient c (x - mu) + 2 lam (x - target), c the mean of w(t) sqrt(a (1 - a)) over the allowed steps, vanishes
    at x* = (c mu + 2 lam target) / (c + 2 lam); lam = c / 2 puts it halfway between the mode and the target."""
    from diffalign.modalities.toy.rewards import prompt_target
    target = prompt_target("cat", 2).double()
    cfg = sds_config(tmp_path, epochs=60, reward={"name": "toy_target_distance"},
                     algorithm={"name": "sds", "guidance_scale": 1.0, "init": [-1.0, 1.0], "reward_weight": 1.0})
    cfg["train"].update(learning_rate=0.03, batch_size=16)
    trainer = make_trainer(load_config(data=cfg))
    rule = trainer.policy.rule
    a = rule.alpha_t[trainer.allowed_steps]
    c = float(((1 - a) * (a * (1 - a)).sqrt()).mean())
    trainer.algorithm.config.reward_weight = c / 2
    trainer.adapter._reference_denoiser = AnalyticCritic(trainer.adapter.scheduler, flow=False)
    history = trainer.train()
    optimum = (MU + target) / 2
    point = trainer.modules["generator"].points[0].detach().double()
    assert float((MU - target).norm()) > 0.9
    print("reward-weighted SDS: point", point.tolist(), "closed-form optimum", optimum.tolist())
    assert float((point - optimum).norm()) < 0.15, (point, optimum)
    assert "reward_mean" in history[-1]


def test_config_rules(tmp_path):
    load_config(data=sds_config(tmp_path))  # no reward resolved, no rollout batch split checked
    with pytest.raises(ConfigError, match="reward"):  # a reward term needs a reward that resolves
        load_config(data=sds_config(tmp_path), overrides=["algorithm.reward_weight=1.0"])
    with pytest.raises(ConfigError, match="algorithm.min_step"):
        load_config(data=sds_config(tmp_path), overrides=["algorithm.min_step=0.9", "algorithm.max_step=0.5"])
    with pytest.raises(ConfigError, match="algorithm.weighting"):
        load_config(data=sds_config(tmp_path), overrides=["algorithm.weighting=snr"])
    with pytest.raises(ConfigError, match="unknown config key 'algorithm.clip_range'"):
        load_config(data=sds_config(tmp_path), overrides=["algorithm.clip_range=0.1"])
    with pytest.raises(ValueError, match="algorithm.init"):
        make_trainer(load_config(data=sds_config(tmp_path), overrides=["algorithm.init=[1.0, 2.0, 3.0]"]))


def test_budget_stops_after_an_optimiser_step(tmp_path):
    cfg = sds_config(tmp_path, epochs=3)
    history = make_trainer(load_config(data=cfg, overrides=["train.max_minutes=1e-9"])).train()
    assert len(history) == 1 and history[0]["stopped_by_budget"] == 1
    assert os.path.isfile(os.path.join(cfg["output_dir"], "final", "generator.safetensors"))


def test_cli_trains_the_shipped_toy_sds_config(tmp_path):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "toy_sds", f"output_dir={out}", "epochs=10", "logging.progress_bar=false",
              "logging.tensorboard=false"])
    assert exit_.value.code == 0
    lines = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [m["epoch"] for m in lines] == list(range(10)) and {"loss", "sds_grad_norm", "grad_norm"} <= set(lines[0])
    point = load_file(os.path.join(out, "final", "generator.safetensors"))["points"][0]
    print("toy_sds point after 10 epochs", point.tolist())
    assert math.hypot(2.0, -1.5) == 2.5 and float(point.norm()) < 0.8, point  # the shipped init is 2.5 from the mode
