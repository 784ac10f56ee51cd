"""The image adapter's pretrained path (``DiffusionPipeline.from_pretrained`` + the pipeline's ``encode_prompt``)
on tiny random SD 1.5-, SDXL- and SD3-shaped pipelines saved to a folder with ``save_pretrained``.

Every pipeline is built here from small configs (random weights, a CLIP BPE tokenizer over the 256 byte
symbols written in the test), so nothing is downloaded. The folder is loaded exactly as a user's config
``modality.options.model: <folder>`` loads it, and each denoising chain is checked against the diffusers
pipeline's own sampler on the same starting noise (DDIM eta = 0 for the UNets, the flow-matching Euler ODE
for SD3): an independent reference for the conditioning, time ids, guidance and scheduler handling.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the brief of these tests: a model folder never reaches a hub

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.mdp import DiffusionPolicy, make_step_rule  # noqa: E402
from diffalign.modalities.image import ImageAdapter, ImageOptions  # noqa: E402

from tests.modalities.tiny_pipelines import (LATENT, RES, SD_SCHEDULE, clip_config, save_pipelines,  # noqa: E402
                                             tiny_t5, tiny_tokenizer, tiny_unet, tiny_vae)

PROMPTS = ["a red cat", "a dog on grass"]
GUIDANCE = 3.0
STEPS = 3


def build_sd():
    """SD 1.5 layout: CLIPTextModel, UNet, VAE and its shipped PNDM scheduler (a PLMS sampler, not DDIM)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel
    return StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(clip_config()), tokenizer=tiny_tokenizer(),
        unet=tiny_unet(32), scheduler=PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **SD_SCHEDULE),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_sdxl():
    """SDXL layout: CLIPTextModel (penultimate hidden states) + CLIPTextModelWithProjection (hidden states and the
    pooled embedding), the UNet's text_time embedding of pooled + 6 time ids, EulerDiscreteScheduler as shipped."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    unet = tiny_unet(64, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=32 + 6 * 8)
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(clip_config()),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(projection_dim=32)),
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(timestep_spacing="leading", **SD_SCHEDULE))


def build_sd3():
    """SD3 layout: two CLIP encoders with projections (pooled = both projections, 64) and a T5 encoder, whose
    hidden size is the transformer's joint_attention_dim (the CLIP states, 32 + 32, are zero-padded to it); the
    VAE has SD3's shift and scaling factors; flow-matching Euler scheduler with SD3's shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection
    transformer = SD3Transformer2DModel(sample_size=LATENT, patch_size=2, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, out_channels=4)
    t5, t5_tokenizer = tiny_t5()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(clip_config(projection_dim=32)), tokenizer=tiny_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(projection_dim=32)), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer)


BUILDERS = {"sd": build_sd, "sdxl": build_sdxl, "sd3": build_sd3}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """arch -> (folder, the pipeline that was saved there), built once for the module."""
    return save_pipelines(BUILDERS, tmp_path_factory)


def load(saved, arch, **options):
    folder, _ = saved[arch]
    return ImageAdapter.from_options(ImageOptions(model=folder, architecture=arch, resolution=RES, **options))


def denoiser_of(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def base_output(pipe, arch, x, t, cond):
    """The saved (untouched) denoiser called directly, as the diffusers pipelines call it."""
    with torch.no_grad():
        if arch == "sd3":
            return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond["prompt_embeds"],
                                    pooled_projections=cond["pooled"]).sample
        extra = {}
        if arch == "sdxl":
            extra["added_cond_kwargs"] = {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
        return pipe.unet(x, t, encoder_hidden_states=cond["prompt_embeds"], **extra).sample


ARCHS = ["sd", "sdxl", "sd3"]


# ---- conditions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_conditions_are_the_pipelines_encode_prompt(saved, arch):
    _, pipe = saved[arch]
    cond = load(saved, arch).encode_conditions(PROMPTS)
    # the pipeline's own encoding with its defaults (no negative prompt), as its __call__ does it
    if arch == "sd":
        emb, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
        expected = {"prompt_embeds": emb, "neg_prompt_embeds": neg}
    else:
        emb, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, **({"prompt_2": None, "prompt_3": None}
                                                                      if arch == "sd3" else {}), device="cpu")
        expected = {"prompt_embeds": emb, "neg_prompt_embeds": neg, "pooled": pooled, "neg_pooled": neg_pooled}
    if arch == "sdxl":
        expected["time_ids"] = pipe._get_add_time_ids(
            (RES, RES), (0, 0), (RES, RES), dtype=emb.dtype,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim).repeat(len(PROMPTS), 1)
        # SDXL's force_zeros_for_empty_prompt: without a negative prompt the unconditional branch is zeros
        assert not neg.any() and not neg_pooled.any()
    assert set(cond) == set(expected)
    for key, value in expected.items():  # not bit-equal: the loaded T5 runs another attention kernel
        torch.testing.assert_close(cond[key], value.detach(), rtol=1e-5, atol=1e-5, msg=lambda m: f"{key}: {m}")
    assert cond["prompt_embeds"].shape[0] == len(PROMPTS) and cond["prompt_embeds"].abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_a_negative_prompt_is_encoded_by_the_pipeline(saved, arch):
    _, pipe = saved[arch]
    cond = load(saved, arch, negative_prompt="blurry").encode_conditions(PROMPTS)
    negatives = ["blurry"] * len(PROMPTS)
    if arch == "sd":
        _, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negatives)
    else:
        _, neg, _, neg_pooled = pipe.encode_prompt(PROMPTS, **({"prompt_2": None, "prompt_3": None}
                                                               if arch == "sd3" else {}),
                                                   device="cpu", negative_prompt=negatives)
        torch.testing.assert_close(cond["neg_pooled"], neg_pooled.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond["neg_prompt_embeds"], neg.detach(), rtol=1e-5, atol=1e-5)
    assert neg.abs().sum() > 0


# ---- sampling -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_guided_chain_is_the_pipelines_sampler_and_decodes(saved, arch):
    """Our deterministic chain (DDIM eta 0 / flow Euler ODE) with guidance 3 from the same x_T reproduces the
    diffusers pipeline's own sampling loop, and the stochastic default rule decodes to images in [0, 1]."""
    from diffusers import DDIMScheduler
    _, pipe = saved[arch]
    adapter = load(saved, arch)
    cond = adapter.encode_conditions(PROMPTS)
    x_T = adapter.initial_noise(cond, torch.Generator().manual_seed(1))
    assert x_T.shape == (len(PROMPTS), 4, LATENT, LATENT)

    deterministic = "flow_ode" if arch == "sd3" else "ddim"
    kwargs = {} if arch == "sd3" else {"eta": 0.0}
    policy = DiffusionPolicy(adapter, make_step_rule(deterministic, adapter.scheduler, STEPS, **kwargs),
                             guidance_scale=GUIDANCE)
    ours = policy.sample(cond, x_T=x_T.clone()).x0

    components = dict(pipe.components)
    call = dict(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=x_T.clone(),
                height=RES, width=RES, output_type="latent")
    if arch != "sd3":
        # the pipeline sampled with DDIM over the model's betas; no x0 clipping, and the last step's
        # alpha_prev = alphas_cumprod[0] (SD's set_alpha_to_one False, the step rule's convention)
        components["scheduler"] = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                                            set_alpha_to_one=False)
        call["eta"] = 0.0
    reference = type(pipe)(**components)
    reference.set_progress_bar_config(disable=True)
    expected = reference(**call).images
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (ours - x_T).abs().mean() > 0.1  # the chain moved

    policy = DiffusionPolicy(adapter, make_step_rule(adapter.default_step_rule, adapter.scheduler, STEPS),
                             guidance_scale=GUIDANCE)
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (len(PROMPTS), STEPS + 1, 4, LATENT, LATENT)
    assert torch.isfinite(traj.log_probs).all()
    images = adapter.decode(traj.x0, cond)
    assert images.shape == (len(PROMPTS), 3, RES, RES)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0


def test_sd15s_pndm_scheduler_becomes_ddim_with_distinct_steps(saved):
    adapter = load(saved, "sd")
    assert type(saved["sd"][1].scheduler).__name__ == "PNDMScheduler"
    rule = make_step_rule("ddim", adapter.scheduler, STEPS)
    # PLMS would give 667, 334, 334, 1: one timestep twice, four for three steps
    assert rule.timesteps.tolist() == [667, 334, 1]
    torch.testing.assert_close(adapter.scheduler.alphas_cumprod, saved["sd"][1].scheduler.alphas_cumprod)


# ---- LoRA, full fine-tuning and the reference ----------------------------------------------------------------
def perturb(params):
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_only_adapters_reference_is_the_base_and_loads_into_the_pipeline(saved, arch, tmp_path):
    from diffusers import DiffusionPipeline
    folder, pipe = saved[arch]
    adapter = load(saved, arch, lora_rank=4)
    names = {id(p): n for n, p in adapter.denoiser.named_parameters()}
    trainable = adapter.trainable_parameters()
    assert trainable and all("lora_" in names[id(p)] for p in trainable)
    assert len(trainable) == sum("lora_" in n for n in names.values())
    frozen = [adapter.vae] + [getattr(adapter.pipeline, n, None) for n in ("text_encoder", "text_encoder_2",
                                                                        "text_encoder_3")]
    assert not any(p.requires_grad for m in frozen if m is not None for p in m.parameters())

    policy = DiffusionPolicy(adapter, make_step_rule(adapter.default_step_rule, adapter.scheduler, STEPS),
                             guidance_scale=GUIDANCE)
    cond = adapter.encode_conditions(PROMPTS)
    x = torch.randn(len(PROMPTS), 4, LATENT, LATENT)
    steps = torch.tensor([0, STEPS - 1])
    t = policy.rule.model_timesteps(steps, x)
    base = base_output(pipe, arch, x, t, cond)
    torch.testing.assert_close(adapter.denoise(x, t, cond), base, rtol=1e-5, atol=1e-5)  # LoRA B starts at 0
    perturb(trainable)
    tuned = adapter.denoise(x, t, cond).detach()
    assert (tuned - base).abs().max() > 1e-3
    with adapter.reference_mode():
        torch.testing.assert_close(adapter.denoise(x, t, cond), base, rtol=1e-5, atol=1e-5)
    reference = policy.reference().predict(x, steps, cond)  # guided, as the KL terms and rollouts use it
    torch.testing.assert_close(reference, guided_base(policy, x, steps, cond, pipe, arch), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy.predict(x, steps, cond), reference)

    # what training saves is a diffusers LoRA that the same pipeline folder loads
    adapter.save_pretrained(str(tmp_path / "lora"))
    user = DiffusionPipeline.from_pretrained(folder)
    user.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(base_output(user, arch, x, t, cond), tuned, rtol=1e-4, atol=1e-5)


def guided_base(policy, x, steps, cond, pipe, arch):
    """Classifier-free guidance over the saved denoiser's outputs: the reference policy's prediction."""
    t = policy.rule.model_timesteps(steps, x)
    text = base_output(pipe, arch, x, t, cond)
    uncond = base_output(pipe, arch, x, t, policy.adapter.unconditional(cond))
    return uncond + GUIDANCE * (text - uncond)


def test_full_fine_tuning_trains_the_denoiser_and_the_frozen_copy_is_the_base(saved):
    _, pipe = saved["sd3"]
    adapter = load(saved, "sd3", lora_rank=0)
    assert {id(p) for p in adapter.trainable_parameters()} == {id(p) for p in adapter.denoiser.parameters()}
    cond = adapter.encode_conditions(PROMPTS)
    x, t = torch.randn(len(PROMPTS), 4, LATENT, LATENT), torch.tensor([900.0, 100.0])
    base = base_output(pipe, "sd3", x, t, cond)
    perturb(adapter.trainable_parameters())
    assert (adapter.denoise(x, t, cond) - base).abs().max() > 1e-3
    with adapter.reference_mode():
        torch.testing.assert_close(adapter.denoise(x, t, cond), base, rtol=1e-5, atol=1e-5)


# ---- training -----------------------------------------------------------------------------------------------
def test_one_training_epoch_on_the_saved_sd_folder(saved, tmp_path):
    from diffusers import DiffusionPipeline
    from diffalign.config import load_config
    from diffalign.trainer import make_trainer
    from diffalign.trainer.logging import read_metrics
    folder, pipe = saved["sd"]
    out = str(tmp_path / "run")
    cfg = {
        "output_dir": out, "seed": 0, "epochs": 1,
        "modality": {"name": "image", "options": {"model": folder, "architecture": "sd", "resolution": RES,
                                                  "lora_rank": 4, "lora_alpha": 16}},
        "prompts": {"list": ["a cat", "a dog"]},
        "sampling": {"num_steps": 2, "eta": 1.0, "guidance_scale": GUIDANCE, "batch_size": 4},
        "reward": {"name": "color_target", "kwargs": {"target": [1.0, 0.0, 0.0]}},
        "algorithm": {"name": "ddpo", "clip_range": 0.1, "per_prompt_stats": False},
        "train": {"batch_size": 4, "learning_rate": 0.01},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    history = make_trainer(load_config(data=cfg)).train()
    lines = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [line["epoch"] for line in lines] == [0] and len(history) == 1
    assert all(torch.isfinite(torch.tensor(float(lines[0][k]))) for k in ("reward_mean", "loss"))
    # the final LoRA loads into the user's pipeline and has moved the UNet
    user = DiffusionPipeline.from_pretrained(folder)
    user.load_lora_weights(os.path.join(out, "final"))
    x, t = torch.randn(1, 4, LATENT, LATENT), torch.tensor([500])
    emb = pipe.encode_prompt(["a cat"], "cpu", 1, False)[0]
    with torch.no_grad():
        assert (user.unet(x, t, encoder_hidden_states=emb).sample - pipe.unet(x, t, encoder_hidden_states=emb).sample
                ).abs().max() > 1e-6
