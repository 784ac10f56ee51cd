"""The threed adapter over a tiny latent prior: conditions (cameras from each item's generator, view-dependent texts),
renders encoded into the prior's latents with their graph, SDS's and the reward term's gradients on the field's
parameters against float64 references, and option errors that name their key."""
import copy

import pytest
import torch

pytest.importorskip("nerfstudio")

from diffalign.algorithms.score_distillation import SDS, GeneratorBatch, SDSConfig  # noqa: E402
from diffalign.config import ConfigError, load_config, shipped_config  # noqa: E402
from diffalign.mdp import DiffusionPolicy, make_step_rule  # noqa: E402
from diffalign.modalities.threed import ThreeDAdapter, ThreeDOptions  # noqa: E402
from diffalign.modalities.threed.cameras import view_label  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def adapter():
    options = ThreeDOptions(prior={"model": "tiny", "resolution": 16}, num_samples=12, hidden=16, features=8,
                            elevation=[0.0, 30.0], background="random")
    return ThreeDAdapter.from_options(options)


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_conditions_hold_a_camera_per_item_and_view_dependent_texts(adapter):
    cond = adapter.encode_conditions(PROMPTS, gens([0, 1, 2]))
    assert cond["camera_to_world"].shape == (3, 3, 4) and cond["background"].shape == (3, 3)
    assert all(cond[k].shape == (3,) for k in ("azimuth", "elevation", "distance", "fov"))
    # the text embeddings are those of "<prompt>, <label> view" with the label of the drawn azimuth
    for i, p in enumerate(PROMPTS):
        label = view_label(float(cond["azimuth"][i]), float(cond["elevation"][i]))
        expected = adapter.prior.encode_conditions([f"{p}, {label} view"])["prompt_embeds"][0]
        assert torch.equal(cond["prompt_embeds"][i], expected)
    # an item's view depends on its generator only
    other = adapter.encode_conditions(["a blue square"], gens([1]))
    for key in ("camera_to_world", "background", "prompt_embeds"):
        assert torch.equal(other[key][0], cond[key][1]), key


def test_unconditional_branch_keeps_the_view(adapter):
    cond = adapter.encode_conditions(PROMPTS[:2], gens([5, 6]))
    u = adapter.unconditional(cond)
    assert torch.equal(u["prompt_embeds"], cond["neg_prompt_embeds"])
    assert torch.equal(u["camera_to_world"], cond["camera_to_world"])
    branches = adapter.guidance_branches(cond)
    assert len(branches) == 2 and all(torch.equal(b["fov"], cond["fov"]) for b in branches)


def test_render_is_the_prior_sample_space_with_a_graph_to_the_field(adapter):
    cond = adapter.encode_conditions(PROMPTS[:2], gens([0, 1]))
    field = adapter.build_generator(0)
    x = adapter.render(field, cond)
    assert x.shape == adapter.initial_noise(cond).shape
    x.sum().backward()
    assert all(p.grad is not None for p in field.parameters())
    # the same seed builds the same field; another seed another one
    same, other = adapter.build_generator(0), adapter.build_generator(1)
    a, b = dict(same.named_parameters()), dict(other.named_parameters())
    assert all(torch.equal(p, a[n]) for n, p in field.named_parameters())
    assert any(not torch.equal(p, b[n]) for n, p in field.named_parameters())
    # images are the renders at the prior's resolution, the latents their VAE encoding
    images = adapter.render_images(field, cond)
    assert images.shape == (2, 3, 16, 16) and float(images.min()) >= 0 and float(images.max()) <= 1


def float64_guided_eps(adapter, x_t, timesteps, cond, scale):
    """u + s (c - u) of a float64 copy of the prior's UNet (the reference of the critic's guided prediction)."""
    unet = copy.deepcopy(adapter.prior.denoiser).double()
    out = [unet(x_t, timesteps, encoder_hidden_states=cond[key].double()).sample
           for key in ("neg_prompt_embeds", "prompt_embeds")]
    return out[0] + scale * (out[1] - out[0])


def test_sds_gradient_on_the_field_matches_a_float64_reference(adapter):
    scale, b = 7.5, 2
    rule = make_step_rule("ddim", adapter.scheduler, 20)
    critic = DiffusionPolicy(adapter, rule, scale).reference()
    algo = SDS(SDSConfig(guidance_scale=scale, generator="modality"))
    field = algo.trainable_modules(adapter, ())["generator"]
    cond = adapter.encode_conditions(PROMPTS[:b], gens([0, 1]))
    x = algo.render({"generator": field}, cond, gens([0, 1]), adapter=adapter)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    steps = torch.tensor([4, 13])
    loss, _ = algo.loss(GeneratorBatch(x, steps, noise, cond, PROMPTS[:b]), None, critic)
    params = [p for p in field.parameters()]
    got = torch.autograd.grad(loss, params)
    # reference: DreamFusion's w(t) (eps_hat - eps) in float64, back through the render (dx/dtheta)
    x2 = adapter.render(field, cond)
    a = adapter.scheduler.alphas_cumprod.double()[rule.timesteps[steps].long()].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x2.detach().double() + (1 - a).sqrt() * noise.double()
    eps_hat = float64_guided_eps(adapter, x_t, rule.timesteps[steps], cond, scale)
    sds = (1 - a) * (eps_hat - noise.double())
    expected = torch.autograd.grad(x2, params, grad_outputs=(sds / b).float())
    assert sum(float(e.abs().sum()) for e in expected) > 0
    for g_, e in zip(got, expected):
        torch.testing.assert_close(g_, e, rtol=2e-3, atol=1e-6)


def test_reward_term_adds_minus_lambda_times_the_reward_gradient(adapter):
    lam, b = 0.7, 2
    rule = make_step_rule("ddim", adapter.scheduler, 20)
    critic = DiffusionPolicy(adapter, rule, 3.0).reference()
    cond = adapter.encode_conditions(PROMPTS[:b], gens([7, 8]))
    noise = torch.randn((b, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([2, 10])
    field = adapter.build_generator(4)
    params = list(field.parameters())

    def brightness(x):  # a differentiable reward of the decoded views, as the generator loop passes it
        return adapter.decode_with_grad(x, cond).mean(dim=(1, 2, 3))

    grads = {}
    for weight in (0.0, lam):
        algo = SDS(SDSConfig(guidance_scale=3.0, generator="modality", reward_weight=weight))
        x = adapter.render(field, cond)
        loss, metrics = algo.loss(GeneratorBatch(x, steps, noise, cond, PROMPTS[:b], brightness), None, critic)
        grads[weight] = torch.autograd.grad(loss, params)
    assert "reward_mean" in metrics
    # reference: the reward of a float64 decode of the same renders (VAE decode, [-1, 1] -> [0, 1], clamp)
    vae = copy.deepcopy(adapter.prior.vae).double()
    x = adapter.render(field, cond)
    images = ((vae.decode(x.double() / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    reward_grad = torch.autograd.grad(images.mean(dim=(1, 2, 3)).sum(), params)
    assert sum(float(r.abs().sum()) for r in reward_grad) > 0
    for g0, g1, r in zip(grads[0.0], grads[lam], reward_grad):
        torch.testing.assert_close(g1 - g0, (-lam / b * r).float(), rtol=2e-3, atol=1e-7)


def test_option_errors_name_their_key():
    with pytest.raises(ValueError, match=r"'modality.options.prior.modle'"):
        ThreeDOptions(prior={"modle": "demo"})
    with pytest.raises(ValueError, match=r"'modality.options.prior.resolution'"):
        ThreeDOptions(prior={"model": "tiny", "resolution": 12})
    with pytest.raises(ValueError, match=r"'modality.options.fov'"):
        ThreeDOptions(fov=[50.0, 40.0])
    with pytest.raises(ValueError, match=r"'modality.options.distance'"):
        ThreeDOptions(distance=[1.0, 2.0])  # inside the scene cube's sphere
    with pytest.raises(ValueError, match=r"'modality.options.background'"):
        ThreeDOptions(background="grey")
    with pytest.raises(ValueError, match=r"'modality.options.encoding'"):
        ThreeDOptions(encoding="fourier")
    with pytest.raises(ValueError, match=r"'modality.options.prior_lora'"):
        ThreeDOptions(prior_lora="/no/such/folder")
    assert ThreeDOptions(background=[0.2, 0.4, 0.6]).background == [0.2, 0.4, 0.6]


def test_shipped_configs_validate_and_name_bad_keys():
    for name in ("threed_sds_tiny", "threed_dreamfl_tiny", "threed_dreamdpo_tiny"):
        cfg = load_config(shipped_config(name))
        assert cfg.modality.name == "threed" and cfg.algorithm["generator"] == "modality"
    with pytest.raises(ConfigError, match=r"modality.options.elevation"):
        load_config(shipped_config("threed_sds_tiny"), ["modality.options.elevation=[40.0, 10.0]"])
    with pytest.raises(ConfigError, match=r"algorithm.max_step_final"):
        load_config(shipped_config("threed_sds_tiny"), ["algorithm.max_step_final=0.99"])
    with pytest.raises(ConfigError, match=r"algorithm.generator"):
        load_config(shipped_config("threed_sds_tiny"), ["algorithm.generator=mesh"])


def test_lora_weights_trained_by_diffalign_load_into_the_critic(tmp_path):
    """An image adapter's LoRA (saved as diffusers' LoRA file by save_pretrained) becomes part of the frozen critic:
    the threed critic (its reference view, which the SDS loop uses) predicts what the trained image model does."""
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    prior = {"model": "tiny", "resolution": 16, "lora_rank": 4}
    trained = ImageAdapter.from_options(ImageOptions(**prior))
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    trained.save_pretrained(str(tmp_path / "lora"))
    threed = ThreeDAdapter.from_options(ThreeDOptions(prior=prior, prior_lora=str(tmp_path / "lora")))
    cond = threed.encode_conditions(["a red circle"], gens([0]))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    with torch.no_grad():
        want = trained.denoise(x, t, trained.encode_conditions([threed_text(cond)]))
        with threed.reference_mode():
            got = threed.denoise(x, t, cond)
        with trained.reference_mode():
            base = trained.denoise(x, t, trained.encode_conditions([threed_text(cond)]))
    torch.testing.assert_close(got, want)
    assert (got - base).abs().max() > 1e-4  # the LoRA changes the prediction, and the critic keeps it
    assert not any(p.requires_grad for p in threed.denoiser.parameters())
    with pytest.raises(ValueError, match="prior.lora_rank"):
        ThreeDAdapter.from_options(ThreeDOptions(prior={"model": "tiny", "resolution": 16, "lora_rank": 0},
                                                 prior_lora=str(tmp_path / "lora")))


def threed_text(cond):
    label = view_label(float(cond["azimuth"][0]), float(cond["elevation"][0]))
    return f"a red circle, {label} view"
