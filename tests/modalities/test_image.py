"""The image adapter on random tiny diffusers models (nothing downloaded)."""
import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule
from diffalign.modalities.image import ImageAdapter, ImageOptions

PROMPTS = ["a red cat", "a dog", "blue"]


def policy_for(arch, lora_rank=4, steps=4):
    adapter = ImageAdapter.from_options(ImageOptions(architecture=arch, lora_rank=lora_rank))
    return DiffusionPolicy(adapter, make_step_rule(adapter.default_step_rule, adapter.scheduler, steps),
                           guidance_scale=4.0)


@pytest.mark.parametrize("arch", ["sd", "sdxl", "sd3"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_rollout_logprob_is_reproduced_at_training_time(arch, batch):
    policy = policy_for(arch)
    cond = policy.adapter.encode_conditions((PROMPTS * 3)[:batch])
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (batch, 5, 4, 16, 16)
    steps = torch.randint(4, (batch,))
    x_t, x_prev, old = traj.states_at(steps)
    new = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
    assert (new - old).abs().max().item() <= 1e-5
    images = policy.adapter.decode(traj.x0, cond)
    assert images.shape == (batch, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def perturb(adapter):
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_reference_is_the_frozen_base(lora_rank):
    policy = policy_for("sd", lora_rank=lora_rank)
    cond = policy.adapter.encode_conditions(PROMPTS)
    x, steps = torch.randn(3, 4, 16, 16), torch.tensor([0, 1, 2])
    base = policy.predict(x, steps, cond).detach()
    perturb(policy.adapter)
    assert not torch.allclose(policy.predict(x, steps, cond), base)
    torch.testing.assert_close(policy.reference().predict(x, steps, cond), base)
    n_lora = len(policy.adapter.trainable_parameters())
    total = len(list(policy.adapter.denoiser.parameters()))
    assert (n_lora < total) == (lora_rank > 0)


def test_lora_saved_in_diffusers_format_loads_into_a_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffalign.modalities.image.tiny import tiny_components
    policy = policy_for("sd")
    perturb(policy.adapter)
    policy.adapter.save_pretrained(str(tmp_path))
    unet, vae, text_encoder, _, scheduler = tiny_components("sd", 32)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path))
    cond = policy.adapter.encode_conditions(PROMPTS)
    x, t = torch.randn(3, 4, 16, 16), torch.tensor([999, 500, 1])
    expected = policy.adapter.denoise(x, t, cond)
    got = pipe.unet(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_trainable_state_round_trips():
    a = policy_for("sd3").adapter
    perturb(a)
    state = a.trainable_state_dict()
    b = policy_for("sd3").adapter
    b.load_trainable_state_dict(state)
    assert all(torch.equal(state[k], v) for k, v in b.trainable_state_dict().items())


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="modality.options.architecture"):
        ImageOptions(architecture="flux")
    with pytest.raises(ValueError, match="modality.options.model.*does not exist"):
        ImageOptions(model="/no/such/model/dir")
    with pytest.raises(ValueError, match="modality.options.resolution"):
        ImageOptions(resolution=30)


@pytest.mark.parametrize("prediction_type,low,high", [("epsilon", 5.0, 15.0), ("v_prediction", 0.5, 1.5)])
def test_tiny_prediction_type_sets_the_scale_of_samples(prediction_type, low, high):
    # a random epsilon UNet's x0_hat = (x_t - sqrt(1-a) eps)/sqrt(a) amplifies its errors; a v UNet's does not
    adapter = ImageAdapter.from_options(ImageOptions(prediction_type=prediction_type))
    assert adapter.scheduler.config.prediction_type == prediction_type
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 8), guidance_scale=4.0)
    cond = adapter.encode_conditions(PROMPTS)
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    assert low < traj.x0.std().item() < high
    x_t, x_prev, old = traj.states_at(torch.tensor([0, 3, 7]))
    new = policy.transition(x_t, torch.tensor([0, 3, 7]), cond, prev_sample=x_prev).log_prob
    assert (new - old).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="tiny UNet preset only"):
        ImageOptions(architecture="sd3", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="must be one of"):
        ImageOptions(prediction_type="flow")


def test_lora_init_follows_the_options_seed_not_the_global_rng():
    def lora_weights(seed, global_seed):
        torch.manual_seed(global_seed)  # torch seeds its default generator randomly in each new process
        adapter = ImageAdapter.from_options(ImageOptions(lora_rank=4, seed=seed))
        return [p.detach().clone() for p in adapter.trainable_parameters()]

    a, b, c = lora_weights(0, 1), lora_weights(0, 2), lora_weights(1, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert any(x.abs().sum() > 0 for x in a)  # lora_A is drawn (lora_B starts at zero)


def _lora_modules(adapter):
    return {n.rsplit(".lora_A", 1)[0] for n, _ in adapter.denoiser.named_parameters() if ".lora_A" in n}


def test_lora_targets_option_picks_the_adapted_modules():
    default = _lora_modules(ImageAdapter.from_options(ImageOptions(lora_rank=4)))
    assert default and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") for n in default)
    assert not any("conv" in n for n in default)
    wide = _lora_modules(ImageAdapter.from_options(ImageOptions(lora_rank=4, lora_targets=["to_q", "conv1"])))
    assert any(n.endswith("resnets.0.conv1") for n in wide) and any(n.endswith("attn1.to_q") for n in wide)
    assert not any(n.endswith(("to_k", "conv2")) for n in wide)
    with pytest.raises(ValueError, match="modality.options.lora_targets"):
        ImageOptions(lora_targets=[])
    with pytest.raises(ValueError, match="modality.options.lora_targets': no module"):
        ImageAdapter.from_options(ImageOptions(lora_rank=4, lora_targets=["no_such_layer"]))


def test_compile_option_compiles_the_denoiser_with_the_same_outputs_and_gradients():
    # aot_eager traces the UNet and its LoRA layers through dynamo and AOT autograd without code generation,
    # so the check is fast; inductor (the default backend) runs the same traced graph through codegen
    eager = policy_for("sd")
    adapter = ImageAdapter.from_options(ImageOptions(lora_rank=4, compile=True, compile_backend="aot_eager"))
    compiled = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 4), guidance_scale=4.0)
    assert adapter.denoiser._compiled_call_impl is not None
    assert set(adapter.trainable_state_dict()) == set(eager.adapter.trainable_state_dict())  # keys unchanged
    cond = adapter.encode_conditions(PROMPTS)
    a = eager.sample(cond, generator=torch.Generator().manual_seed(0))
    b = compiled.sample(cond, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b.latents, a.latents, rtol=1e-4, atol=1e-4)
    steps = torch.tensor([0, 1, 3])
    x_t, x_prev, _ = a.states_at(steps)
    grads = []
    for policy in (eager, compiled):
        lp = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
        grads.append(torch.autograd.grad(lp.sum(), policy.adapter.trainable_parameters()))
    for g_eager, g_compiled in zip(*grads):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="modality.options.compile_backend"):
        ImageOptions(compile=True, compile_backend="no_such_backend")
    with pytest.raises(ValueError, match="modality.options.compile_mode"):
        ImageOptions(compile=True, compile_backend="aot_eager", compile_mode="max-autotune")
