"""InstructVideo's partial chains as an option of the direct-reward methods, on the toy modality in float64: the
chain starts at the forward-noised state of the right step (closed form from the scheduler), runs only the last
round(tau T) steps, and gradients reach the weights through the truncated re-denoised steps only (never the clean
sample, never the chain that generated it)."""
import copy

import pytest
import torch

from diffalign.algorithms import AlignProp, AlignPropConfig, DRaFT, DRaFTConfig, ReFL, ReFLConfig
from diffalign.algorithms.direct_reward import SamplingBatch, noised_start, partial_start_step, sample_chain
from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyAdapter

PROMPTS = ["a", "b", "c", "a"]
T = 10
TARGET = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64)


def make_policy(rule="ddim", scheduler="ddim"):
    adapter = ToyAdapter(["a", "b", "c"], dim=4, hidden=16, scheduler=scheduler, dtype=torch.float64)
    kwargs = {"eta": 1.0} if rule == "ddim" else {}
    return DiffusionPolicy(adapter, make_step_rule(rule, adapter.scheduler, T, **kwargs), guidance_scale=2.0)


def reward(x0):
    return -((x0 - TARGET.to(x0)) ** 2).sum(1) + torch.sin(x0[:, 0])


def make_batch(policy, seed=0, x0=None):
    g = torch.Generator().manual_seed(seed)
    cond = policy.adapter.encode_conditions(PROMPTS)
    x_T = torch.randn(len(PROMPTS), 4, generator=g, dtype=torch.float64)
    noise = torch.randn(len(PROMPTS), T, 4, generator=g, dtype=torch.float64)
    return SamplingBatch(cond, PROMPTS, x_T, noise, reward, torch.Generator().manual_seed(seed + 100), x0=x0)


def test_partial_start_step_runs_round_tau_t_steps():
    assert partial_start_step(20, 0.6) == 8      # VGen's starting_partial 0.6 of 20 DDIM steps: 12 steps re-run
    assert partial_start_step(10, 1.0) == 0      # tau 1: the whole chain
    assert partial_start_step(10, 0.01) == 9     # at least one step


def test_noised_start_is_the_forward_process_at_the_start_step_ddim_and_flow():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    policy = make_policy()
    sched = policy.adapter.scheduler
    for s in (0, 4, T - 1):
        a = sched.alphas_cumprod.double()[int(policy.rule.timesteps[s])]
        expected = a.sqrt() * x0 + (1 - a).sqrt() * eps            # q(x_t | x0), DDPM Eq. 4
        assert torch.allclose(noised_start(policy.rule, x0, eps, s), expected, atol=1e-12)
    flow = make_policy(rule="flow_sde", scheduler="flow")
    sched = copy.deepcopy(flow.adapter.scheduler)
    sched.set_timesteps(T)                                          # the sampling schedule's sigmas (shifted)
    for s in (0, 6):
        sigma = sched.sigmas.double()[s]                            # rectified flow: x_s = (1 - s) x0 + s eps
        assert torch.allclose(noised_start(flow.rule, x0, eps, s), (1 - sigma) * x0 + sigma * eps, atol=1e-12)


def draft_partial(source, tau=0.5, k=2):
    return DRaFT(DRaFTConfig(truncation=k, checkpointing=False, partial_chain={"tau": tau, "source": source}))


def replay_start(policy, batch, algo, x0):
    """The start state and step noise the algorithm draws: the same generator draws, in the same order."""
    gen = torch.Generator().manual_seed(batch.generator.initial_seed())
    start = algo.first_step(T)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    noise = torch.stack([torch.randn(x0.shape, generator=gen, dtype=x0.dtype) for _ in range(T)], dim=1)
    return noised_start(policy.rule, x0, eps, start), noise, start


def ref_chain(policy, cond, x, noise, start, grad_from):
    """An independent DDIM(eta = 1) chain from step ``start``, states before ``grad_from`` detached."""
    sched = policy.adapter.scheduler
    ac = sched.alphas_cumprod.double()
    for i in range(start, T):
        t = int(policy.rule.timesteps[i])
        a, ap = ac[t], ac[max(t - sched.config.num_train_timesteps // T, 0)]
        tt = policy.rule.timesteps[i].expand(x.shape[0])
        e = policy.adapter.denoiser(x, tt, cond["prompt_id"])
        u = policy.adapter.denoiser(x, tt, policy.adapter.unconditional(cond)["prompt_id"])
        e = u + policy.guidance_scale * (e - u)
        std = ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
        x = ap.sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt() + (1 - ap - std ** 2).sqrt() * e + std * noise[:, i]
        if i < grad_from:
            x = x.detach()
    return x


def grads(policy, loss):
    return torch.autograd.grad(loss, policy.adapter.trainable_parameters(), allow_unused=True)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_data_partial_chain_loss_and_gradients_match_the_reference(k):
    policy = make_policy()
    x0 = torch.randn(len(PROMPTS), 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x0.requires_grad_(True)  # a given clip is a constant: no gradient may reach it
    batch = make_batch(policy, x0=x0)
    algo = draft_partial("data", tau=0.5, k=k)
    loss, _ = algo.loss(batch, policy, None)
    x_s, noise, start = replay_start(policy, batch, algo, x0.detach())
    assert start == 5
    expected = -reward(ref_chain(policy, batch.cond, x_s, noise, start, grad_from=T - k)).mean()
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-10
    for u, v in zip(grads(policy, loss), grads(policy, expected)):
        assert torch.allclose(u, v, atol=1e-10)
    loss2, _ = algo.loss(make_batch(policy, x0=x0), policy, None)
    loss2.backward()
    assert x0.grad is None


def test_generated_partial_chain_starts_from_a_no_grad_sample_of_the_full_chain():
    policy = make_policy()
    batch = make_batch(policy)
    algo = draft_partial("generated", tau=0.3, k=3)
    loss, _ = algo.loss(batch, policy, None)
    with torch.no_grad():
        x0 = sample_chain(policy, batch.cond, batch.x_T, batch.noise, grad_from=T)
    x_s, noise, start = replay_start(policy, batch, algo, x0)
    assert start == 7
    expected = -reward(ref_chain(policy, batch.cond, x_s, noise, start, grad_from=T - 3)).mean()
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-10
    ref = grads(policy, expected)
    for u, v in zip(grads(policy, loss), ref):
        assert torch.allclose(u, v, atol=1e-10)
    # K = all the partial steps differs from K = 1: the gradient goes through every re-denoised step
    one = draft_partial("generated", tau=0.3, k=1).loss(make_batch(policy), policy, None)[0]
    assert any(not torch.allclose(u, v) for u, v in zip(grads(policy, one), ref))


def test_partial_chain_with_refl_and_alignprop_stays_within_the_partial_steps():
    policy = make_policy()
    algo = AlignProp(AlignPropConfig(checkpointing=False, partial_chain={"tau": 0.3}))
    ks = {algo.truncation(T, torch.Generator().manual_seed(s)) for s in range(40)}
    assert ks == {1, 2, 3}  # K ~ U{1 .. the 3 steps the partial chain runs}
    loss, metrics = algo.loss(make_batch(policy), policy, None)
    assert loss.requires_grad and 1 <= metrics["truncation"] <= 3
    refl = ReFL(ReFLConfig(late_steps=2, partial_chain={"tau": 0.3, "source": "generated"}))
    loss, metrics = refl.loss(make_batch(policy), policy, None)
    assert loss.requires_grad and metrics["grad_step"] >= 8


def test_partial_chain_errors_name_the_key():
    for bad, match in (({"tau": 0}, "partial_chain.tau"), ({"tau": 1.5}, "partial_chain.tau"),
                       ({"tau": 0.5, "source": "dataset"}, "partial_chain.source"), ({"start": 3}, "partial_chain"),
                       (0.5, "partial_chain")):
        with pytest.raises(ValueError, match=match):
            DRaFTConfig(partial_chain=bad)
    with pytest.raises(ValueError, match="truncation = 4 exceeds the 3 steps of algorithm.partial_chain.tau"):
        DRaFT(DRaFTConfig(truncation=4, partial_chain={"tau": 0.3})).check_steps(T)
    with pytest.raises(ValueError, match="source 'data' needs clean samples"):
        draft_partial("data").loss(make_batch(make_policy()), make_policy(), None)
