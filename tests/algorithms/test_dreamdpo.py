"""DreamDPO (``algorithm.name: dreamdpo``): score distillation toward the reward-preferred of two noisings of each
render, against a float64 reference from the analytic critic's closed form (tests/trainer/test_generator_path.py),
the piecewise threshold, the config rules, and a run through the trainer."""
import pytest
import torch

from diffalign.algorithms.score_distillation import SDS, DreamDPO, DreamDPOConfig, GeneratorBatch, SDSConfig
from diffalign.config import ConfigError, load_config
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.trainer import make_trainer
from tests.trainer.test_generator_path import MU, AnalyticCritic, analytic_toy, sds_config

TARGET = torch.tensor([-0.3, 0.8], dtype=torch.float64)


def target_reward(x0: torch.Tensor) -> torch.Tensor:
    return -((x0.double() - TARGET) ** 2).sum(-1)


def _setup(flow=False, g=3.0, n=8, **config):
    adapter = analytic_toy(flow)
    rule = make_step_rule("flow_sde" if flow else "ddim", adapter.scheduler, 50)
    critic = DiffusionPolicy(adapter, rule, guidance_scale=g).reference()
    algo = DreamDPO(DreamDPOConfig(guidance_scale=g, **config))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen, requires_grad=True)
    noise = torch.randn(n, 2, generator=gen)
    allowed = algo.allowed_steps(rule)
    steps = allowed[torch.randint(len(allowed), (n,), generator=gen)]
    batch = GeneratorBatch(x, steps, noise, adapter.encode_conditions(["cat"] * n), ["cat"] * n, target_reward)
    return algo, rule, critic, batch


def reference(batch, rule, flow, g, eps):
    """(eps_hat - eps, reward of the one-step estimate, w) in float64 from the closed form of x ~ N(g mu, I)."""
    xd, eps = batch.x.detach().double(), eps.double()
    if flow:  # x_s = (1 - s) x + s eps
        s = rule.sigma[batch.steps][:, None]
        x_t = (1 - s) * xd + s * eps
        v = (1 - s) ** 2 + s ** 2
        eps_hat = s * (x_t - (1 - s) * g * MU) / v
        x0, w = (x_t - s * eps_hat) / (1 - s), s ** 2 / v
    else:
        a = rule.alpha_t[batch.steps][:, None]
        x_t = a.sqrt() * xd + (1 - a).sqrt() * eps
        eps_hat = (1 - a).sqrt() * (x_t - a.sqrt() * g * MU)
        x0, w = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt(), 1 - a
    return eps_hat - eps, target_reward(x0), w


@pytest.mark.parametrize("flow", [False, True], ids=["ddim_eps", "flow_velocity"])
@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_dreamdpo_gradient_matches_a_float64_reference(flow, tau):
    g = 3.0
    algo, rule, critic, batch = _setup(flow, g, gap_threshold=tau)
    torch.manual_seed(11)
    grad, _, metrics = algo.dreamdpo_gradient(batch, critic)
    torch.manual_seed(11)  # the second noise comes from torch's generator
    second = torch.randn(8, 2)
    res_a, r_a, w = reference(batch, rule, flow, g, batch.noise)
    res_b, r_b, _ = reference(batch, rule, flow, g, second)
    a_wins = (r_a >= r_b)[:, None]
    win, lose = torch.where(a_wins, res_a, res_b), torch.where(a_wins, res_b, res_a)
    push = ((r_a - r_b).abs() > tau).double()[:, None]
    expected = w * (win - push * lose)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-5)
    assert float(metrics["pushed_fraction"]) == pytest.approx(float(push.mean()))
    if tau == 0.5:  # the threshold must split this batch, or the test would not see both branches
        assert 0 < float(push.mean()) < 1
    # the loss hands the same gradient to the renders (mean over the batch)
    torch.manual_seed(11)
    loss, _ = algo.loss(batch, None, critic)
    loss.backward()
    torch.testing.assert_close(batch.x.grad.double(), expected / 8, rtol=1e-4, atol=1e-6)


def test_a_threshold_above_every_gap_is_the_winners_plain_sds():
    algo, rule, critic, batch = _setup(gap_threshold=1e9)
    torch.manual_seed(3)
    grad, _, metrics = algo.dreamdpo_gradient(batch, critic)
    torch.manual_seed(3)
    second = torch.randn(8, 2)
    plain = SDS(SDSConfig(guidance_scale=3.0))
    g_a = plain.sds_gradient(batch, critic)[0]
    g_b = plain.sds_gradient(GeneratorBatch(batch.x, batch.steps, second, batch.cond, batch.prompts), critic)[0]
    _, r_a, _ = reference(batch, rule, False, 3.0, batch.noise)
    _, r_b, _ = reference(batch, rule, False, 3.0, second)
    torch.testing.assert_close(grad, torch.where((r_a >= r_b)[:, None], g_a, g_b), rtol=1e-5, atol=1e-6)
    assert float(metrics["pushed_fraction"]) == 0.0


def test_config_rules_and_a_missing_reward(tmp_path):
    for bad, key in (({"gap_threshold": -0.1}, "gap_threshold"), ({"reward_samples": 4}, "reward_samples")):
        with pytest.raises((ValueError, ConfigError), match=key):
            load_config(data=sds_config(tmp_path, algorithm={"name": "dreamdpo", **bad}))
    algo, _, critic, batch = _setup()
    batch.reward = None
    with pytest.raises(ValueError, match="dreamdpo scores noisy renders and needs a reward"):
        algo.loss(batch, None, critic)


def test_the_mean_update_points_at_the_reward_where_sds_points_at_the_prompts_mode():
    """Averaged over many noisings (one render copied 4096 times, so the expectation is estimated tightly), the
    DreamDPO update -grad moves the render toward the reward's target, which the prior's mode g*mu is not; plain
    SDS's moves it toward g*mu. At tau = 0 the prior's pull cancels between winner and loser (for this critic
    eps_hat - eps = sqrt(a (1 - a)) (x - g mu) - a eps), so what is left is the preference."""
    n, g = 4096, 1.0
    # MU = (0.5, -0.4), TARGET = (-0.3, 0.8): from these starts the two directions differ
    for start in ([0.2, 0.0], [-0.4, -0.3], [0.6, 0.6]):
        algo, rule, critic, batch = _setup(g=g, n=n)
        batch.x = torch.tensor([start]).repeat(n, 1).requires_grad_(True)
        x = batch.x.detach().double()
        torch.manual_seed(5)
        update = -algo.dreamdpo_gradient(batch, critic)[0].double().mean(0)
        sds_update = -SDS(SDSConfig(guidance_scale=g)).sds_gradient(batch, critic)[0].double().mean(0)
        to_target, to_mode = TARGET - x[0], g * MU - x[0]
        cos = float(update @ to_target / (update.norm() * to_target.norm()))
        sds_cos = float(sds_update @ to_target / (sds_update.norm() * to_target.norm()))
        assert cos > 0.85 and sds_cos < cos - 0.5, (start, cos, sds_cos)  # starts where target and mode part ways
        assert float(sds_update @ to_mode / (sds_update.norm() * to_mode.norm())) > 0.99


def test_dreamdpo_trains_through_the_generator_loop(tmp_path):
    """The loop hands DreamDPO the reward (reward_weight 0): the point moves and the pair metrics are logged."""
    cfg = sds_config(tmp_path, epochs=2, reward={"name": "toy_target_distance"},
                     algorithm={"name": "dreamdpo", "guidance_scale": 1.0, "init": [1.0, -1.0], "gap_threshold": 0.01})
    trainer = make_trainer(load_config(data=cfg))
    trainer.adapter._reference_denoiser = AnalyticCritic(trainer.adapter.scheduler, flow=False)
    history = trainer.train()
    assert trainer.reward_fn is not None
    assert 0 <= history[-1]["pushed_fraction"] <= 1 and history[-1]["reward_gap_mean"] > 0
    point = trainer.modules["generator"].points.detach()[0]
    assert torch.isfinite(point).all() and not torch.allclose(point, torch.tensor([1.0, -1.0]))
