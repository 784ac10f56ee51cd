"""RewardSDS (``algorithm.reward_samples``): reward-weighted noise samples of score distillation, against a float64
reference built from the analytic critic's closed form (tests/trainer/test_generator_path.py)."""
import pytest
import torch

from diffalign.algorithms.score_distillation import SDS, GeneratorBatch, SDSConfig
from diffalign.config import ConfigError, load_config
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.trainer import make_trainer
from tests.trainer.test_generator_path import MU, AnalyticCritic, analytic_toy, sds_config

TARGET = torch.tensor([-0.3, 0.8], dtype=torch.float64)


def target_reward(x0: torch.Tensor) -> torch.Tensor:
    return -((x0.double() - TARGET) ** 2).sum(-1)


def _batch(algo, rule, adapter, n=6):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen, requires_grad=True)
    noise = torch.randn(n, 2, generator=gen)
    allowed = algo.allowed_steps(rule)
    steps = allowed[torch.randint(len(allowed), (n,), generator=gen)]
    return GeneratorBatch(x, steps, noise, adapter.encode_conditions(["cat"] * n), ["cat"] * n, target_reward)


@pytest.mark.parametrize("flow", [False, True], ids=["ddim_eps", "flow_velocity"])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_reward_sds_gradient_matches_a_float64_reference(flow, temperature):
    adapter = analytic_toy(flow)
    rule = make_step_rule("flow_sde" if flow else "ddim", adapter.scheduler, 50)
    g, n_samples = 3.0, 4
    critic = DiffusionPolicy(adapter, rule, guidance_scale=g).reference()
    algo = SDS(SDSConfig(guidance_scale=g, reward_samples=n_samples, reward_temperature=temperature))
    batch = _batch(algo, rule, adapter)
    torch.manual_seed(123)
    grad, _, rewards = algo.reward_sds_gradient(batch, critic)
    torch.manual_seed(123)  # the same extra noises: sample 0 is the batch's, then torch's generator
    noises = [batch.noise] + [torch.randn(6, 2) for _ in range(n_samples - 1)]
    xd = batch.x.detach().double()
    residuals, rs = [], []
    for eps in noises:
        eps = eps.double()
        if flow:  # x_s = (1 - s) x + s eps; E[eps | x_s] and E[x | x_s] of x ~ N(g mu, I)
            s = rule.sigma[batch.steps][:, None]
            x_t = (1 - s) * xd + s * eps
            v = (1 - s) ** 2 + s ** 2
            eps_hat = s * (x_t - (1 - s) * g * MU) / v
            x0 = (x_t - s * eps_hat) / (1 - s)
            w = s ** 2 / v
        else:
            a = rule.alpha_t[batch.steps][:, None]
            x_t = a.sqrt() * xd + (1 - a).sqrt() * eps
            eps_hat = (1 - a).sqrt() * (x_t - a.sqrt() * g * MU)
            x0 = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
            w = 1 - a
        residuals.append(eps_hat - eps)
        rs.append(target_reward(x0))
    r = torch.stack(rs, 1)
    p = torch.softmax(r / temperature, 1)
    expected = w * sum(p[:, k:k + 1] * residuals[k] for k in range(n_samples))
    torch.testing.assert_close(rewards.double(), r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-5)
    # the loss hands the same gradient to the render (mean over the batch)
    torch.manual_seed(123)
    loss, metrics = algo.loss(batch, None, critic)
    loss.backward()
    torch.testing.assert_close(batch.x.grad.double(), expected / 6, rtol=1e-4, atol=1e-6)
    assert float(metrics["sample_reward_mean"]) == pytest.approx(float(r.mean()), rel=1e-4)


def test_high_temperature_is_the_mean_of_plain_sds_over_the_samples():
    adapter = analytic_toy()
    rule = make_step_rule("ddim", adapter.scheduler, 50)
    critic = DiffusionPolicy(adapter, rule, guidance_scale=2.0).reference()
    algo = SDS(SDSConfig(guidance_scale=2.0, reward_samples=3, reward_temperature=1e9))
    batch = _batch(algo, rule, adapter)
    torch.manual_seed(7)
    grad, _, _ = algo.reward_sds_gradient(batch, critic)
    torch.manual_seed(7)
    noises = [batch.noise] + [torch.randn(6, 2) for _ in range(2)]
    plain = SDS(SDSConfig(guidance_scale=2.0))
    mean = sum(plain.sds_gradient(GeneratorBatch(batch.x, batch.steps, e, batch.cond, batch.prompts), critic)[0]
               for e in noises) / 3
    torch.testing.assert_close(grad, mean, rtol=1e-5, atol=1e-6)


def test_reward_sds_config_rules_and_the_loop_passes_the_reward(tmp_path):
    for bad in ({"reward_samples": 1}, {"reward_samples": -2}, {"reward_samples": 3, "reward_temperature": 0.0}):
        with pytest.raises((ValueError, ConfigError), match="reward_samples|reward_temperature"):
            load_config(data=sds_config(tmp_path, algorithm={"name": "sds", **bad}))
    adapter = analytic_toy()
    rule = make_step_rule("ddim", adapter.scheduler, 50)
    critic = DiffusionPolicy(adapter, rule, guidance_scale=1.0).reference()
    algo = SDS(SDSConfig(reward_samples=2))
    batch = _batch(algo, rule, adapter)
    batch.reward = None
    with pytest.raises(ValueError, match="needs a reward"):
        algo.loss(batch, None, critic)
    # through the trainer: reward_samples alone (reward_weight 0) makes the loop build and pass the reward
    cfg = sds_config(tmp_path, epochs=1, reward={"name": "toy_target_distance"},
                     algorithm={"name": "sds", "guidance_scale": 1.0, "init": [-1.0, 1.0], "reward_samples": 3})
    trainer = make_trainer(load_config(data=cfg))
    trainer.adapter._reference_denoiser = AnalyticCritic(trainer.adapter.scheduler, flow=False)
    history = trainer.train()
    assert trainer.reward_fn is not None and "sample_reward_mean" in history[-1]
