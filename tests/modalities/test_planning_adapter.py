"""The planning adapter: inpainting, on-policy ratios, normalisation, attribute guidance, saved planners."""
import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.planning import Normalizer, PlanningAdapter
from diffalign.modalities.planning.options import PlanningOptions

S, A = 11, 3  # Hopper-v5


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def items(n):
    # mixed items: explicit start seeds, attribute requests, a bare text (start state drawn by its generator)
    pool = [{"text": "hop", "start_seed": 3, "attributes": {"speed": 0.8}}, "hop",
            {"text": "hop", "attributes": {"speed": 0.2, "height": 0.9}}]
    return [pool[i % len(pool)] for i in range(n)]


@pytest.fixture(scope="module", params=["unet1d", "dit"])
def planner(request):
    torch.manual_seed(0)
    norm = Normalizer(torch.randn(S + A) * 0.3, torch.rand(S + A) + 0.5)  # a non-trivial normaliser
    return PlanningAdapter.tiny("Hopper-v5", horizon=8, architecture=request.param, attributes=["speed", "height"],
                                normalizer=norm, num_train_timesteps=50)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_inpainting_holds_after_every_step_and_ratio_is_one_on_policy(planner, batch):
    cond = planner.encode_conditions(items(batch), gens(range(batch)))
    pinned = planner.normalizer.normalize(cond["observation"], slice(0, S))
    policy = DiffusionPolicy(planner, make_step_rule("ddpm", planner.scheduler, 4), guidance_scale=2.5)
    traj = policy.sample(cond, generator=gens(range(10, 10 + batch)))
    for i in range(traj.num_steps):
        x_t, x_prev, old = traj.states_at(torch.full((batch,), i))
        assert torch.equal(x_t[:, 0, :S], pinned) and torch.equal(x_prev[:, 0, :S], pinned)  # exactly, every step
        new = policy.transition(x_t, i, cond, prev_sample=x_prev).log_prob
        assert torch.allclose(new, old, atol=1e-5)  # ratio = 1
    decoded = planner.decode(traj.x0, cond)
    assert decoded.shape == (batch, 8, S + A)
    assert torch.equal(decoded[:, 0, :S], cond["observation"])  # the observed state, bit for bit


def test_noise_and_mask_leave_the_observed_state_out(planner):
    cond = planner.encode_conditions(items(3), gens([0, 1, 2]))
    noise = planner.project_noise(torch.randn(3, 8, S + A), cond)
    assert torch.all(noise[:, 0, :S] == 0) and torch.all(noise[:, 0, S:] != 0) and torch.all(noise[:, 1:] != 0)
    x_T = planner.initial_noise(cond, torch.Generator().manual_seed(0))
    assert planner.project(x_T, cond) is x_T  # already constrained: project returns it unchanged
    mask = planner.logprob_mask(cond, x_T)
    assert mask.shape == x_T.shape and mask.sum() == 3 * (8 * (S + A) - S)
    assert torch.all(mask[:, 0, :S] == 0) and torch.all(mask[:, 0, S:] == 1)


def test_the_log_prob_counts_no_pinned_entry(planner):
    """Changing the pinned entries of the kept sample changes nothing the policy scores."""
    cond = planner.encode_conditions(items(2), gens([0, 1]))
    policy = DiffusionPolicy(planner, make_step_rule("ddpm", planner.scheduler, 4))
    x_t = planner.initial_noise(cond, torch.Generator().manual_seed(1))
    out = policy.transition(x_t, 1, cond, generator=torch.Generator().manual_seed(2))
    moved = out.prev_sample.clone()
    moved[:, 0, :S] += 5.0
    again = policy.transition(x_t, 1, cond, prev_sample=moved).log_prob
    assert torch.allclose(again, out.log_prob, atol=1e-6)


def test_normalisation_round_trips_against_float64_statistics():
    rows = torch.randn(500, S + A, dtype=torch.float64) * torch.linspace(0.1, 5, S + A) + torch.linspace(-3, 3, S + A)
    norm = Normalizer.fit(rows)
    assert torch.allclose(norm.mean.double(), rows.mean(0), atol=1e-5)
    assert torch.allclose(norm.std.double(), rows.std(0), rtol=1e-5)
    z = norm.normalize(rows.float())
    assert torch.allclose(z.mean(0), torch.zeros(S + A), atol=1e-4) and torch.allclose(z.std(0), torch.ones(S + A), atol=1e-4)
    assert torch.allclose(norm.unnormalize(z), rows.float(), atol=1e-5)
    with pytest.raises(ValueError, match="differ in length"):
        Normalizer(torch.zeros(3), torch.ones(4))


def test_encode_inverts_decode(planner):
    """Stored raw trajectories -> (x0, conditions) -> decode gives them back; the start state comes from the sample."""
    raw = torch.randn(3, 8, S + A)
    x0, cond = planner.encode(list(raw), ["hop", {"text": "hop", "attributes": {"height": 0.5}}, "hop"])
    assert torch.equal(cond["observation"], raw[:, 0, :S])
    assert cond["attribute_mask"].tolist() == [[0, 0], [0, 1], [0, 0]]
    assert torch.allclose(planner.decode(x0, cond), raw, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(8, 14\) trajectories"):
        planner.encode([torch.zeros(7, S + A)], ["hop"])


def test_conditions_are_seeded_and_checked(planner):
    a = planner.encode_conditions(["hop", "hop"], gens([5, 6]))
    b = planner.encode_conditions(["hop", "hop"], gens([5, 6]))
    assert torch.equal(a["observation"], b["observation"]) and not torch.equal(a["observation"][0], a["observation"][1])
    import gymnasium as gym
    env = gym.make("Hopper-v5")
    expected = torch.as_tensor(env.reset(seed=3)[0], dtype=torch.float32)
    assert torch.equal(planner.encode_conditions([{"start_seed": 3}])["observation"][0], expected)
    obs = torch.arange(S, dtype=torch.float32)
    assert torch.equal(planner.encode_conditions([{"observation": obs.tolist()}])["observation"][0], obs)
    with pytest.raises(ValueError, match="'observation' needs 11 values"):
        planner.encode_conditions([{"observation": [0.0] * 5}])
    with pytest.raises(ValueError, match=r"attribute 'jump' is not one of the model's \['speed', 'height'\]"):
        planner.encode_conditions([{"attributes": {"jump": 1.0}}])


def test_guidance_masks_attributes_and_ignores_unrequested_values(planner):
    cond = planner.encode_conditions([{"observation": [0.0] * S, "attributes": {"speed": 0.9}}])
    uncond = planner.unconditional(cond)
    assert torch.equal(uncond["observation"], cond["observation"]) and uncond["attribute_mask"].sum() == 0
    x, t = torch.randn(1, 8, S + A), torch.tensor([10])
    with torch.no_grad():
        # an unrequested attribute's value does not reach the model
        other = dict(uncond, attributes=torch.tensor([[5.0, -3.0]]))
        assert torch.equal(planner.denoise(x, t, uncond), planner.denoise(x, t, other))
        # the request changes the output once the model's attribute path is non-zero
        for p in planner.denoiser.parameters():
            p.data.add_(0.01 * torch.randn_like(p))
        assert not torch.allclose(planner.denoise(x, t, cond), planner.denoise(x, t, uncond))
        guided = planner.combine_guidance([planner.denoise(x, t, uncond), planner.denoise(x, t, cond)], 3.0)
        expected = planner.denoise(x, t, uncond) + 3.0 * (planner.denoise(x, t, cond) - planner.denoise(x, t, uncond))
        assert torch.allclose(guided, expected)


def test_a_saved_planner_loads_with_its_normaliser_and_outputs(tmp_path, planner):
    planner.save_pretrained(str(tmp_path))
    loaded = PlanningAdapter.from_pretrained(str(tmp_path))
    assert loaded.attributes == planner.attributes and loaded.horizon == 8
    assert torch.equal(loaded.normalizer.mean, planner.normalizer.mean)
    cond = planner.encode_conditions(items(2), gens([0, 1]))
    x, t = torch.randn(2, 8, S + A), torch.tensor([3, 40])
    with torch.no_grad():
        assert torch.allclose(loaded.denoise(x, t, cond), planner.denoise(x, t, cond), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="planner.json is missing"):
        PlanningAdapter.from_pretrained(str(tmp_path / "nothing"))


@pytest.mark.parametrize("field,value,match", [
    ("env", "Ant-v9", "'modality.options.env' must be one of"),
    ("architecture", "mlp", "'modality.options.architecture' must be one of"),
    ("horizon", 7, "'modality.options.horizon' must be even"),
    ("prediction_type", "v", "'modality.options.prediction_type'"),
    ("attributes", "speed", "'modality.options.attributes' must be a list"),
])
def test_option_errors_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        PlanningOptions(**{field: value})


def test_denoiser_configs_are_checked():
    from diffalign.modalities.planning import build_denoiser
    with pytest.raises(ValueError, match="needs a horizon divisible by 8, got 12"):
        build_denoiser({"architecture": "unet1d", "transition_dim": 14, "num_attributes": 0, "horizon": 12,
                        "block_out_channels": [8, 8, 8, 8]})
    with pytest.raises(ValueError, match="'architecture' must be one of"):
        build_denoiser({"architecture": "mlp", "transition_dim": 14, "num_attributes": 0, "horizon": 8})
    with pytest.raises(ValueError, match="normaliser has 3 dims"):
        PlanningAdapter.tiny("Hopper-v5", horizon=8, normalizer=Normalizer(torch.zeros(3), torch.ones(3)))
