"""The editing adapter (InstructPix2Pix) on random tiny models (nothing downloaded): dual guidance against diffusers'
StableDiffusionInstructPix2PixPipeline loaded from the same saved folder, ratio = 1 on policy, the input image as a
condition, ``encode`` of stored edits, LoRA and full weights loadable by diffusers, the pixel-space ``demo`` preset."""
import os
import sys
import types

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffalign.mdp import DiffusionPolicy, make_step_rule  # noqa: E402
from diffalign.modalities.editing import EditingAdapter, EditingOptions  # noqa: E402
from diffalign.modalities.editing.adapter import IMAGE_KEY  # noqa: E402
from tests.modalities.tiny_pipelines import (SD_SCHEDULE, clip_config, save_pipelines, tiny_tokenizer,  # noqa: E402
                                             tiny_vae)

RES = 16
ITEMS = [{"text": "make it red", "image": [0.2, 0.4, 0.8]}, {"text": "a dog", "image": [0.9, 0.1, 0.1]},
         {"text": "blue", "image": [0.5, 0.5, 0.5]}]


def tiny(**kw):
    kw.setdefault("resolution", RES)
    return EditingAdapter.from_options(EditingOptions(**kw))


def perturb(adapter, scale=0.05):
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(scale * torch.randn_like(p))


def picture(path, seed=0, side=RES):
    """A random RGB picture saved as PNG; returns its path."""
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(side, side, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return str(path)


# ---- conditions and the denoiser ------------------------------------------------------------------------------
def test_input_image_latents_are_the_vae_mode_of_the_input(tmp_path):
    adapter = tiny()
    path = picture(tmp_path / "in.png")
    cond = adapter.encode_conditions([{"text": "make it red", "image": path}, ITEMS[0]])
    assert set(cond) == {"prompt_embeds", "neg_prompt_embeds", IMAGE_KEY}
    pixels = torch.from_numpy(__import__("numpy").asarray(Image.open(path), dtype="float32")).permute(2, 0, 1)
    with torch.no_grad():  # unscaled (no scaling_factor), as InstructPix2Pix conditions on them
        expected = adapter.vae.encode((pixels / 127.5 - 1)[None]).latent_dist.mode()[0]
        uniform = adapter.vae.encode(torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1).expand(1, 3, RES, RES) * 2 - 1)
    torch.testing.assert_close(cond[IMAGE_KEY][0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cond[IMAGE_KEY][1], uniform.latent_dist.mode()[0], atol=1e-5, rtol=1e-4)
    # the text side is the image adapter's: the same instruction gives the same embedding whatever the input
    torch.testing.assert_close(cond["prompt_embeds"][0], cond["prompt_embeds"][1])


def test_denoise_runs_the_unet_on_noisy_then_input_latents_channel_wise():
    adapter = tiny()
    cond = adapter.encode_conditions(ITEMS)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([999, 500, 1])
    with torch.no_grad():
        expected = adapter.denoiser(torch.cat([x, cond[IMAGE_KEY]], 1), t,
                                    encoder_hidden_states=cond["prompt_embeds"]).sample
        swapped = adapter.denoiser(torch.cat([cond[IMAGE_KEY], x], 1), t,
                                   encoder_hidden_states=cond["prompt_embeds"]).sample
    out = adapter.denoise(x, t, cond)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, swapped, atol=1e-3)


def test_combine_guidance_is_instructpix2pix_eq3():
    adapter = tiny(image_guidance_scale=2.5)
    both, image, nothing = (torch.randn(2, 4, 8, 8, dtype=torch.float64) for _ in range(3))
    got = adapter.combine_guidance([both, image, nothing], 7.0)
    torch.testing.assert_close(got, nothing + 2.5 * (image - nothing) + 7.0 * (both - image))
    # s_I = 1: ordinary classifier-free guidance on the text with the input image kept
    plain = tiny(image_guidance_scale=1.0).combine_guidance([both, image, nothing], 7.0)
    torch.testing.assert_close(plain, image + 7.0 * (both - image))
    cond = adapter.encode_conditions(ITEMS[:2])
    full, text_dropped, none = adapter.guidance_branches(cond)
    assert full is cond and torch.equal(text_dropped["prompt_embeds"], cond["neg_prompt_embeds"])
    assert torch.equal(text_dropped[IMAGE_KEY], cond[IMAGE_KEY]) and not none[IMAGE_KEY].any()
    assert torch.equal(none["prompt_embeds"], cond["neg_prompt_embeds"])


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_rollout_shapes_and_ratio_one_on_policy(batch):
    adapter = tiny(lora_rank=4, prediction_type="v_prediction")
    perturb(adapter)  # a trained LoRA, so the policy is not the base
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 3), guidance_scale=4.0)
    cond = adapter.encode_conditions((ITEMS * 3)[:batch])
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (batch, 4, 4, 8, 8)
    steps = torch.randint(3, (batch,), generator=torch.Generator().manual_seed(1))
    x_t, x_prev, old = traj.states_at(steps)
    new = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
    assert (new - old).abs().max().item() <= 1e-5  # on policy the importance ratio is exactly 1
    images = adapter.decode(traj.x0, cond)
    assert images.shape == (batch, 3, RES, RES) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_reference_is_the_frozen_base(lora_rank):
    adapter = tiny(lora_rank=lora_rank)
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 3), guidance_scale=4.0)
    cond = adapter.encode_conditions(ITEMS)
    x, steps = torch.randn(3, 4, 8, 8), torch.tensor([0, 1, 2])
    base = policy.predict(x, steps, cond).detach()
    perturb(adapter)
    assert not torch.allclose(policy.predict(x, steps, cond), base)
    torch.testing.assert_close(policy.reference().predict(x, steps, cond), base)


def test_encode_gives_the_edit_latents_and_the_input_condition(tmp_path):
    adapter = tiny()
    edit = Image.open(picture(tmp_path / "edit.png", seed=3)).convert("RGB")
    item = {"text": "make it red", "image": picture(tmp_path / "in.png", seed=4)}
    x0, cond = adapter.encode([edit], [item])
    pixels = torch.from_numpy(__import__("numpy").asarray(edit, dtype="float32")).permute(2, 0, 1) / 127.5 - 1
    with torch.no_grad():
        expected = adapter.vae.encode(pixels[None]).latent_dist.mean * adapter.vae.config.scaling_factor
    torch.testing.assert_close(x0, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cond[IMAGE_KEY], adapter.encode_conditions([item])[IMAGE_KEY])
    # decode inverts encode up to the (random) VAE's loss: the decoded edit is an image of the right shape
    assert adapter.decode(x0, cond).shape == (1, 3, RES, RES)


def test_bad_inputs_are_named():
    adapter = tiny()
    with pytest.raises(ValueError, match="prompt item 1.*names no input image"):
        adapter.encode_conditions([ITEMS[0], "make it red"])
    with pytest.raises(ValueError, match="RGB triple in \\[0, 1\\]"):
        adapter.encode_conditions([{"text": "x", "image": [2.0, 0.0, 0.0]}])
    with pytest.raises(ValueError, match="does not exist"):
        adapter.encode_conditions([{"text": "x", "image": "/no/such/input.png"}])
    with pytest.raises(ValueError, match="modality.options.architecture"):
        EditingOptions(architecture="sdxl")
    with pytest.raises(ValueError, match="modality.options.image_guidance_scale"):
        EditingOptions(image_guidance_scale=-1.0)
    from diffalign.modalities.image.tiny import tiny_components
    with pytest.raises(ValueError, match="in_channels must be 8, got 4"):  # a text-to-image UNet is no editor
        EditingAdapter(*tiny_components("sd", RES), EditingOptions(resolution=RES), "cpu")


# ---- against diffusers' InstructPix2Pix pipeline ---------------------------------------------------------------
def build_ip2p():
    """timbrooks/instruct-pix2pix's layout, tiny: CLIP text encoder + BPE tokenizer, VAE, an 8-channel UNet, and
    an Euler-ancestral scheduler as shipped (the adapter samples with DDIM over its betas)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel
    unet = UNet2DConditionModel(sample_size=RES // 2, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=32,
                                attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = EulerAncestralDiscreteScheduler(**SD_SCHEDULE)
    return StableDiffusionInstructPix2PixPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(clip_config()), tokenizer=tiny_tokenizer(), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def ip2p_folder(tmp_path_factory):
    return save_pipelines({"ip2p": build_ip2p}, tmp_path_factory)["ip2p"][0]


@pytest.mark.parametrize("image_scale", [1.5, 2.5])
def test_dual_guidance_reproduces_the_diffusers_pipeline(tmp_path, ip2p_folder, image_scale):
    from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline
    adapter = EditingAdapter.from_options(EditingOptions(model=ip2p_folder, resolution=RES,
                                                         image_guidance_scale=image_scale))
    paths = [picture(tmp_path / f"in{i}.png", seed=i) for i in range(2)]
    items = [{"text": "make it red", "image": paths[0]}, {"text": "turn the dog blue", "image": paths[1]}]
    steps, scale = 3, 3.0
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, steps, eta=0.0), guidance_scale=scale)
    cond = adapter.encode_conditions(items)
    x_T = torch.randn(2, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(5))
    ours = policy.sample(cond, x_T=x_T).x0

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p_folder, safety_checker=None,
                                                                  requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(adapter.scheduler.config)  # the same scheduler and steps, eta 0
    assert adapter.scheduler.config.beta_schedule == "scaled_linear"  # the folder's betas
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe([it["text"] for it in items], image=[Image.open(p).convert("RGB") for p in paths],
                  num_inference_steps=steps, guidance_scale=scale, image_guidance_scale=image_scale, eta=0.0,
                  latents=x_T.clone(), output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # the image scale matters: the other scale's samples differ
    other = EditingAdapter.from_options(EditingOptions(model=ip2p_folder, resolution=RES,
                                                       image_guidance_scale=4.0 - image_scale))
    moved = DiffusionPolicy(other, policy.rule, guidance_scale=scale).sample(cond, x_T=x_T).x0
    assert not torch.allclose(moved, theirs, atol=1e-3)


# ---- saved weights load into diffusers ------------------------------------------------------------------------
def fresh_pipeline():
    """The tiny preset's seeded parts assembled by diffusers as an InstructPix2Pix pipeline."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffalign.modalities.editing.tiny import tiny_editing_components
    unet, vae, text_encoder, _, scheduler = tiny_editing_components(RES)
    return StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet,
                                                  scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)


def test_lora_loads_into_a_fresh_instructpix2pix_pipeline(tmp_path):
    adapter = tiny(lora_rank=4)
    perturb(adapter)
    adapter.save_pretrained(str(tmp_path))
    pipe = fresh_pipeline()
    cond = adapter.encode_conditions(ITEMS)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([999, 500, 1])
    inputs = torch.cat([x, cond[IMAGE_KEY]], 1)
    with torch.no_grad():
        before = pipe.unet(inputs, t, encoder_hidden_states=cond["prompt_embeds"]).sample
        pipe.load_lora_weights(str(tmp_path))
        got = pipe.unet(inputs, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    expected = adapter.denoise(x, t, cond)
    assert not torch.allclose(before, expected, atol=1e-4)  # the LoRA changes the output ...
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)  # ... and diffusers' loader reproduces it


def test_full_fine_tuning_saves_a_unet_folder(tmp_path):
    from diffusers import UNet2DConditionModel
    adapter = tiny(lora_rank=0)
    perturb(adapter)
    adapter.save_pretrained(str(tmp_path))
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path))
    cond = adapter.encode_conditions(ITEMS)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([999, 500, 1])
    with torch.no_grad():
        got = unet(torch.cat([x, cond[IMAGE_KEY]], 1), t, encoder_hidden_states=cond["prompt_embeds"]).sample
    assert unet.config.in_channels == 8
    torch.testing.assert_close(got, adapter.denoise(x, t, cond), atol=1e-5, rtol=1e-4)


# ---- the pixel-space demo preset --------------------------------------------------------------------------------
def pixel_editor(seed=0):
    """A pixel-space InstructPix2Pix-style model like the demo's: in_channels 3 + 3, no VAE."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from diffalign.modalities.image.tiny import tiny_components
    _, _, text_encoder, tokenizer, _ = tiny_components("sd", RES, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=RES, in_channels=6, out_channels=3, layers_per_block=1,
                                    block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=32,
                                    attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type="v_prediction")
    return unet, text_encoder, tokenizer, scheduler


def test_demo_preset_loads_the_demo_editor_in_pixel_space(monkeypatch):
    module = types.ModuleType("diffalign.modalities.editing.demo_model")
    module.load_editing_demo_model = lambda *a, **k: (*pixel_editor(), {})  # the loader returns metadata last
    monkeypatch.setitem(sys.modules, "diffalign.modalities.editing.demo_model", module)
    adapter = tiny(model="demo", lora_rank=0)
    assert adapter.vae is None
    cond = adapter.encode_conditions(ITEMS[:2])
    # pixel space: the condition is the input image itself in [-1, 1]
    torch.testing.assert_close(cond[IMAGE_KEY][0, :, 3, 5], torch.tensor([0.2, 0.4, 0.8]) * 2 - 1)
    policy = DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, 2), guidance_scale=2.0)
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    assert traj.x0.shape == (2, 3, RES, RES) and adapter.decode(traj.x0, cond).shape == (2, 3, RES, RES)
    with pytest.raises(ValueError, match="modality.options.resolution.*resolution 16"):
        tiny(model="demo", resolution=32)


# ---- shipped configs ----------------------------------------------------------------------------------------------
def test_full_size_config_validates_without_downloading(tmp_path):
    from diffalign.cli import shipped_config
    from diffalign.config import ConfigError, load_config
    cfg = load_config(shipped_config("editing_ip2p_ddpo"), [f"output_dir={tmp_path}"])
    assert cfg.modality.name == "editing" and cfg.modality.options["model"] == "timbrooks/instruct-pix2pix"
    assert all(isinstance(p, dict) and p.get("image") for p in cfg.prompts.list)
    with pytest.raises(ConfigError, match="modality.options.architecture"):
        load_config(shipped_config("editing_ip2p_ddpo"), [f"output_dir={tmp_path}", "modality.options.architecture=sdxl"])
