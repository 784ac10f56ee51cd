"""The toy variants against independent references: the point sets (masks, projected noise, subspace log-probs,
drawn conditions) and the dual-condition model (three-branch guidance)."""
import math

import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.toy import ToyDualAdapter, ToyPointsAdapter, center, points_radius

PROMPTS = ["ring", "blob"]


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@pytest.fixture(scope="module")
def points():
    return ToyPointsAdapter(PROMPTS, max_points=6, min_points=2, pretrain_steps=30)


def mixed_items():
    return [{"text": "ring", "num_points": 2}, {"text": "blob", "num_points": 6}, {"text": "ring", "num_points": 4}]


# ---- drawn conditions -------------------------------------------------------------------------------------------
def test_point_counts_are_drawn_reproducibly_per_sample(points):
    items = ["ring"] * 8
    a = points.encode_conditions(items, gens(range(8)))["mask"]
    b = points.encode_conditions(items, gens(range(8)))["mask"]
    assert torch.equal(a, b)
    sizes = a.sum(1)
    assert sizes.min() >= 2 and sizes.max() <= 6 and len(set(sizes.tolist())) > 1
    # one generator per sample: a sample's draw does not depend on the batch around it
    alone = points.encode_conditions(items[3:4], gens([3]))["mask"]
    assert torch.equal(alone[0], a[3])
    # a given count is kept, a bad one is refused with the item named
    assert points.encode_conditions([{"text": "ring", "num_points": 5}])["mask"].sum() == 5
    with pytest.raises(ValueError, match="num_points"):
        points.encode_conditions([{"text": "ring", "num_points": 9}])


# ---- projected noise and samples --------------------------------------------------------------------------------
def test_noise_and_samples_stay_in_the_centre_of_mass_free_subspace(points):
    cond = points.encode_conditions(mixed_items())
    policy = DiffusionPolicy(points, make_step_rule("ddpm", points.scheduler, 4), guidance_scale=2.0)
    traj = policy.sample(cond, generator=gens([0, 1, 2]))
    m = cond["mask"][:, None, :, None]  # (B, 1, N, 1) over (B, T+1, N, 3)
    states = traj.latents
    assert torch.all(states * (1 - m) == 0)  # padded points are zero in every state
    com = (states * m).sum(2) / m.sum(2)
    assert com.abs().max() < 1e-5  # and every state is centred
    noise = points.project_noise(torch.randn(3, 6, 3), cond)
    assert torch.allclose(points.project_noise(noise, cond), noise)  # a projection


def test_rollout_and_rescoring_agree_with_mixed_sizes(points):
    cond = points.encode_conditions(mixed_items())
    policy = DiffusionPolicy(points, make_step_rule("ddpm", points.scheduler, 4), guidance_scale=2.0)
    traj = policy.sample(cond, generator=gens([5, 6, 7]))
    for i in range(traj.num_steps):
        x_t, x_prev, old = traj.states_at(torch.full((3,), i))
        new = policy.transition(x_t, i, cond, prev_sample=x_prev).log_prob
        assert torch.allclose(new, old, atol=1e-5)  # ratio = 1


def test_step_log_prob_is_the_density_in_the_subspace(points):
    """Independent float64 reference: x_prev - mean lies in the 3(n-1)-dim subspace, where the density is
    N(0, s^2 I_d); 'sum' gives that log-density and 'mean' divides it by d."""
    cond = points.encode_conditions(mixed_items())
    rule = make_step_rule("ddpm", points.scheduler, 4)
    for reduction in ("sum", "mean"):
        policy = DiffusionPolicy(points, rule, logprob_reduction=reduction)
        x_t = center(torch.randn(3, 6, 3, generator=torch.Generator().manual_seed(1)), cond["mask"])
        out = policy.transition(x_t, 1, cond, generator=torch.Generator().manual_seed(2))
        n = cond["mask"].sum(1).double()
        d = 3 * (n - 1)
        diff = (out.prev_sample.double() - out.mean.double()).flatten(1)
        var = out.std.double().flatten(1)[:, 0] ** 2
        expected = -(diff ** 2).sum(1) / (2 * var) - d / 2 * torch.log(2 * math.pi * var)
        if reduction == "mean":
            expected = expected / d
        assert torch.allclose(out.log_prob.double(), expected, rtol=1e-5, atol=1e-5), reduction


def test_padding_does_not_change_a_sets_log_prob():
    """Masks end to end: a set scored padded to 6 points gives what the same set gives padded to its own size."""
    small = ToyPointsAdapter(PROMPTS, max_points=3, min_points=2, pretrain_steps=0, init_seed=0)
    big = ToyPointsAdapter(PROMPTS, max_points=6, min_points=2, pretrain_steps=0, init_seed=0)
    big.denoiser.load_state_dict(small.denoiser.state_dict())  # same weights: the denoiser has no size
    item = [{"text": "ring", "num_points": 3}]
    c_small, c_big = small.encode_conditions(item), big.encode_conditions(item)
    x_small = center(torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0)), c_small["mask"])
    prev_small = center(torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(1)), c_small["mask"])
    pad = lambda x: torch.cat([x, 7.0 * torch.ones(1, 3, 3)], 1) * c_big["mask"][..., None]  # noqa: E731
    for reduction in ("sum", "mean"):
        rule = make_step_rule("ddpm", small.scheduler, 4)
        a = DiffusionPolicy(small, rule, 2.0, reduction).transition(x_small, 1, c_small, prev_sample=prev_small)
        b = DiffusionPolicy(big, rule, 2.0, reduction).transition(pad(x_small), 1, c_big, prev_sample=pad(prev_small))
        assert torch.allclose(a.log_prob, b.log_prob, atol=1e-5), reduction


def test_point_reward_and_encode(points):
    sets = [torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]), torch.tensor([[0.5, 0, 0], [-0.5, 0, 0], [0, 0, 0]])]
    r = points_radius(sets, ["ring", "blob"])
    from diffalign.modalities.toy.rewards import target_radius
    assert torch.allclose(r, torch.tensor([-(1 - target_radius("ring")) ** 2,
                                           -(1 / 3 - target_radius("blob")) ** 2]))
    # offline encode: the stored set's size is its condition
    x0, cond = points.encode(sets, ["ring", {"text": "blob"}])
    assert cond["mask"].sum(1).tolist() == [2, 3] and x0.shape == (2, 6, 3)
    decoded = points.decode(x0, cond)
    assert [tuple(d.shape) for d in decoded] == [(2, 3), (3, 3)]


# ---- three-branch guidance ------------------------------------------------------------------------------------------
def test_dual_guidance_combines_three_branches():
    adapter = ToyDualAdapter(PROMPTS, dim=2, image_guidance_scale=1.7, pretrain_steps=20)
    cond = adapter.encode_conditions([{"text": "ring", "source": [0.3, -0.2]}, "blob"], gens([0, 1]))
    rule = make_step_rule("ddim", adapter.scheduler, 5)
    policy = DiffusionPolicy(adapter, rule, guidance_scale=4.0)
    x = torch.randn(2, 2)
    t = rule.model_timesteps(2, x)
    null = torch.full((2,), len(PROMPTS))
    model = adapter.denoiser
    e0 = model(x, t, null, cond["source"], torch.zeros(2))
    ei = model(x, t, null, cond["source"], torch.ones(2))
    eit = model(x, t, cond["prompt_id"], cond["source"], torch.ones(2))
    expected = e0 + 1.7 * (ei - e0) + 4.0 * (eit - ei)
    assert torch.allclose(policy.predict(x, 2, cond), expected, atol=1e-5)
    # image scale 1: ordinary classifier-free guidance on the text, source kept
    adapter.image_guidance_scale = 1.0
    assert torch.allclose(policy.predict(x, 2, cond), ei + 4.0 * (eit - ei), atol=1e-5)
    assert torch.equal(cond["source"][0], torch.tensor([0.3, -0.2]))
    with pytest.raises(ValueError, match="source"):
        adapter.encode_conditions([{"text": "ring", "source": [1.0]}])
