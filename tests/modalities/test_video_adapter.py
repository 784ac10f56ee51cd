"""The video adapter on random tiny diffusers models and the demo preset (nothing downloaded)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.mdp import DiffusionPolicy, make_step_rule  # noqa: E402
from diffalign.modalities.video import VideoAdapter, VideoOptions  # noqa: E402

PROMPTS = ["a red cat", "a dog", "blue"]
# few frames keep the tests fast; wan needs 1 + 4k (its VAE compresses time by 4)
FRAMES = {"animatediff": 4, "wan": 5}
LATENT = {"animatediff": (4, 4, 16, 16), "wan": (4, 2, 8, 8)}  # (C, F, h, w) at 32x32 pixels


def adapter_for(arch="animatediff", **kw):
    kw.setdefault("num_frames", FRAMES[arch])
    return VideoAdapter.from_options(VideoOptions(architecture=arch, **kw))


def policy_for(arch="animatediff", steps=3, **kw):
    adapter = adapter_for(arch, **kw)
    return DiffusionPolicy(adapter, make_step_rule(adapter.default_step_rule, adapter.scheduler, steps),
                           guidance_scale=4.0)


def perturb(adapter, scale=0.05):
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("arch", ["animatediff", "wan"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_rollout_shapes_and_logprob_reproduced_at_training_time(arch, batch):
    policy = policy_for(arch)
    cond = policy.adapter.encode_conditions((PROMPTS * 3)[:batch])
    traj = policy.sample(cond, generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (batch, 4) + LATENT[arch]
    steps = torch.randint(3, (batch,), generator=torch.Generator().manual_seed(1))
    x_t, x_prev, old = traj.states_at(steps)
    new = policy.transition(x_t, steps, cond, prev_sample=x_prev).log_prob
    assert (new - old).abs().max().item() <= 1e-5  # on policy the importance ratio is exactly 1
    frames = policy.adapter.decode(traj.x0, cond)
    assert frames.shape == (batch, FRAMES[arch], 3, 32, 32) and frames.min() >= 0 and frames.max() <= 1


@pytest.mark.parametrize("arch", ["animatediff", "wan"])
def test_decode_with_grad_reaches_the_latents(arch):
    adapter = adapter_for(arch)
    x0 = (0.5 * torch.randn((2,) + LATENT[arch])).requires_grad_(True)
    frames = adapter.decode_with_grad(x0, {})
    assert frames.requires_grad and frames.shape == (2, FRAMES[arch], 3, 32, 32)
    frames[:, -1].mean().backward()  # a reward on the last frame
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    torch.testing.assert_close(frames.detach(), adapter.decode(x0.detach(), {}))


def test_wan_decode_undoes_the_latent_normalisation():
    # decode(z) must be the VAE's decode of z * std + mean (Wan's per-channel latents_mean / latents_std)
    adapter = adapter_for("wan")
    cfg = adapter.vae.config
    z = torch.randn((1,) + LATENT["wan"])
    raw = z * torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1) + torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        expected = ((adapter.vae.decode(raw).sample + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(adapter.decode(z, {}), expected)


def test_animatediff_decodes_frame_by_frame_in_chunks():
    # 5 clips x 4 frames = 20 frames: two VAE calls (16 + 4); each frame must be the VAE's decode of its latent
    adapter = adapter_for()
    z = torch.randn((5,) + LATENT["animatediff"])
    frames = adapter.decode(z, {})
    assert frames.shape == (5, 4, 3, 32, 32)
    with torch.no_grad():
        for b, f in [(0, 0), (3, 3), (4, 2)]:  # frames 0, 15 and 18: both chunks
            image = adapter.vae.decode(z[b, :, f][None] / adapter.vae.config.scaling_factor).sample[0]
            torch.testing.assert_close(frames[b, f], ((image + 1) / 2).clamp(0, 1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,lora_rank", [("animatediff", 4), ("animatediff", 0), ("wan", 4)])
def test_reference_is_the_frozen_base(arch, lora_rank):
    policy = policy_for(arch, lora_rank=lora_rank)
    cond = policy.adapter.encode_conditions(PROMPTS)
    x, steps = torch.randn((3,) + LATENT[arch]), torch.tensor([0, 1, 2])
    base = policy.predict(x, steps, cond).detach()
    perturb(policy.adapter)
    assert not torch.allclose(policy.predict(x, steps, cond), base)
    torch.testing.assert_close(policy.reference().predict(x, steps, cond), base)


@pytest.mark.parametrize("layers", ["motion", "image", "both"])
@pytest.mark.parametrize("lora_rank", [4, 0])
def test_lora_layers_option_picks_motion_or_image_layers(layers, lora_rank):
    names = adapter_for(lora_rank=lora_rank, lora_layers=layers).trained_layer_names()
    motion = [n for n in names if "motion_modules" in n]
    assert names and (len(motion) > 0) == (layers != "image") and (len(motion) < len(names)) == (layers != "motion")
    if lora_rank:
        assert all("lora_" in n for n in names)
    else:  # full fine-tuning of the chosen layers: every parameter there, none elsewhere
        adapter = adapter_for(lora_rank=0, lora_layers=layers)
        from diffalign.modalities.video.adapter import in_layers
        all_names = [n for n, _ in adapter.denoiser.named_parameters()]
        assert names == [n for n in all_names if in_layers(n, layers)]


def test_wan_in_bfloat16_keeps_its_float32_modules():
    adapter = adapter_for("wan", dtype="bfloat16")
    dtypes = {n: p.dtype for n, p in adapter.denoiser.named_parameters()}
    assert dtypes["scale_shift_table"] == torch.float32 and dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16
    assert all(dtypes[n] == torch.float32 for n in dtypes if "lora_" in n)  # adapters train in float32
    cond = adapter.encode_conditions(PROMPTS[:1])
    out = adapter.denoise(torch.randn((1,) + LATENT["wan"]), torch.tensor([500.0]), cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="modality.options.architecture"):
        VideoOptions(architecture="cogvideox")
    with pytest.raises(ValueError, match="modality.options.num_frames.*1 \\+ 4k"):
        VideoOptions(architecture="wan", num_frames=8)
    with pytest.raises(ValueError, match="modality.options.lora_layers"):
        VideoOptions(lora_layers="temporal")
    with pytest.raises(ValueError, match="modality.options.lora_layers.*animatediff only"):
        VideoOptions(architecture="wan", num_frames=5, lora_layers="image")
    with pytest.raises(ValueError, match="modality.options.model.*does not exist"):
        VideoOptions(model="/no/such/model/dir")
    with pytest.raises(ValueError, match="modality.options.motion_adapter.*does not exist"):
        VideoOptions(motion_adapter="./no/such/adapter")
    with pytest.raises(ValueError, match="modality.options.model' 'demo'"):
        VideoOptions(model="demo", resolution=64)
    with pytest.raises(ValueError, match="modality.options.flow_shift"):
        VideoOptions(flow_shift=3.0)  # an animatediff option set
    with pytest.raises(ValueError, match="modality.options.motion_adapter.*animatediff only"):
        VideoOptions(architecture="wan", num_frames=5, motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2")
    with pytest.raises(ValueError, match="modality.options.num_frames.*holds 32 frames"):
        adapter_for(model="demo", lora_rank=0, num_frames=33)
    with pytest.raises(ValueError, match="modality.options.lora_targets': no module"):
        adapter_for(lora_targets=["no_such_layer"])


@pytest.mark.parametrize("arch,lora_rank", [("animatediff", 4), ("wan", 4), ("animatediff", 0)])
def test_trainable_state_round_trips(arch, lora_rank):
    a = adapter_for(arch, lora_rank=lora_rank)
    perturb(a)
    state = a.trainable_state_dict()
    b = adapter_for(arch, lora_rank=lora_rank)
    assert not all(torch.equal(state[k], v) for k, v in b.trainable_state_dict().items())
    b.load_trainable_state_dict(state)
    assert all(torch.equal(state[k], v) for k, v in b.trainable_state_dict().items())
    if not lora_rank:
        with pytest.raises(ValueError, match="trainable state does not match"):
            b.load_trainable_state_dict({k: v for k, v in list(state.items())[1:]})


def test_sample_grid_shows_one_row_of_frames_per_clip():
    frames = torch.rand(5, 4, 3, 8, 8)
    grid = adapter_for().sample_grid(frames)
    assert grid.shape == (3, 2 + 4 * 10, 2 + 4 * 10)  # 4 clips (rows) x 4 frames, make_grid's 2-pixel padding
    torch.testing.assert_close(grid[:, 2:10, 12:20], frames[0, 1])


# ---- saved weights load into diffusers ------------------------------------------------------------------
def test_animatediff_lora_loads_into_a_fresh_pipeline(tmp_path):
    from diffusers import AnimateDiffPipeline
    from diffalign.modalities.image.tiny import tiny_components
    from diffalign.modalities.video.tiny import tiny_motion_adapter
    adapter = adapter_for(lora_layers="both")
    perturb(adapter)
    adapter.save_pretrained(str(tmp_path))
    # the same seeded tiny parts, assembled by diffusers: the pipeline turns the image UNet into a UNetMotionModel
    unet, vae, text_encoder, _, scheduler = tiny_components("sd", 32, 0, "v_prediction")
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet,
                               motion_adapter=tiny_motion_adapter(unet.config.block_out_channels, 1),
                               scheduler=scheduler)
    cond = adapter.encode_conditions(PROMPTS)
    x, t = torch.randn((3,) + LATENT["animatediff"]), torch.tensor([999, 500, 1])
    before = pipe.unet(x, t, encoder_hidden_states=cond["prompt_embeds"].repeat_interleave(4, 0)).sample
    pipe.load_lora_weights(str(tmp_path))
    got = pipe.unet(x, t, encoder_hidden_states=cond["prompt_embeds"].repeat_interleave(4, 0)).sample
    expected = adapter.denoise(x, t, cond)
    assert not torch.allclose(before, expected, atol=1e-4)  # the LoRA changes the output ...
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)  # ... and diffusers' loader reproduces it


def test_wan_lora_loads_into_a_fresh_pipeline(tmp_path):
    from diffusers import WanPipeline
    from diffalign.modalities.video.tiny import tiny_wan
    adapter = adapter_for("wan")
    perturb(adapter)
    adapter.save_pretrained(str(tmp_path))
    transformer, vae, _, _, scheduler = tiny_wan(32)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer)
    pipe.load_lora_weights(str(tmp_path))
    cond = adapter.encode_conditions(PROMPTS)
    x, t = torch.randn((3,) + LATENT["wan"]), torch.tensor([999.0, 500.0, 1.0])
    got = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond["prompt_embeds"]).sample
    torch.testing.assert_close(got, adapter.denoise(x, t, cond), atol=1e-5, rtol=1e-4)


def test_fully_trained_motion_modules_save_as_a_motion_adapter(tmp_path):
    from diffusers import MotionAdapter, UNetMotionModel
    from diffalign.modalities.image.tiny import tiny_components
    adapter = adapter_for(lora_rank=0)
    perturb(adapter)
    adapter.save_pretrained(str(tmp_path))
    unet = tiny_components("sd", 32, 0, "v_prediction")[0]
    model = UNetMotionModel.from_unet2d(unet, MotionAdapter.from_pretrained(str(tmp_path)))
    cond = adapter.encode_conditions(PROMPTS)
    x, t = torch.randn((3,) + LATENT["animatediff"]), torch.tensor([999, 500, 1])
    with torch.no_grad():
        got = model(x, t, encoder_hidden_states=cond["prompt_embeds"].repeat_interleave(4, 0)).sample
    torch.testing.assert_close(got, adapter.denoise(x, t, cond), atol=1e-5, rtol=1e-4)


# ---- the demo preset ------------------------------------------------------------------------------------
def test_fresh_motion_adapter_zeroes_every_motion_output_projection():
    from diffalign.modalities.video.demo import fresh_motion_adapter, zero_motion_outputs
    adapter = fresh_motion_adapter((32, 64, 64), 1, seed=0)
    projections = {n: m for n, m in adapter.named_modules() if n.endswith("proj_out")}
    # one motion module per resnet: 3 down blocks x 1 layer + 3 up blocks x 2 layers, no mid block
    assert len(projections) == 9 and all(m.weight.abs().sum() == 0 and m.bias.abs().sum() == 0
                                         for m in projections.values())
    assert any(p.abs().sum() > 0 for n, p in adapter.named_parameters() if "proj_in" in n)  # the rest is drawn
    seeded = fresh_motion_adapter((32, 64, 64), 1, seed=0).state_dict()
    assert all(torch.equal(v, seeded[k]) for k, v in adapter.state_dict().items())
    assert zero_motion_outputs(torch.nn.Linear(2, 2)) == 0  # nothing outside motion modules is touched


def test_demo_preset_starts_as_the_image_model_frame_by_frame():
    from diffalign.modalities.image.demo_model import load_demo_model
    adapter = adapter_for(model="demo", lora_rank=0, num_frames=8)
    assert adapter.latent_shape == (3, 8, 32, 32) and adapter.vae is None
    assert adapter.trained_layer_names() and all("motion_modules" in n for n in adapter.trained_layer_names())
    unet, *_ = load_demo_model()
    cond = adapter.encode_conditions(["a red circle", "two blue squares"])
    x, t = torch.rand(2, 3, 8, 32, 32) * 2 - 1, torch.tensor([900, 30])
    with torch.no_grad():
        per_frame = unet(x.permute(0, 2, 1, 3, 4).reshape(16, 3, 32, 32), t.repeat_interleave(8),
                         encoder_hidden_states=cond["prompt_embeds"].repeat_interleave(8, 0)).sample
    video = adapter.denoise(x, t, cond)
    torch.testing.assert_close(video, per_frame.reshape(2, 8, 3, 32, 32).permute(0, 2, 1, 3, 4),
                               atol=1e-5, rtol=1e-4)
    # the zero output projections are what makes it so: perturbed, the frames interact
    perturb(adapter, 0.1)
    assert not torch.allclose(adapter.denoise(x, t, cond), video, atol=1e-3)
    frames = adapter.decode(x, cond)  # pixel space: decode is the rescale to [0, 1]
    torch.testing.assert_close(frames, ((x + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4))


def test_demo_motion_adapter_loads_from_a_folder(tmp_path):
    trained = adapter_for(model="demo", lora_rank=0, num_frames=8)
    perturb(trained)
    trained.save_pretrained(str(tmp_path))
    loaded = adapter_for(model="demo", lora_rank=0, num_frames=8, motion_adapter=str(tmp_path))
    cond = trained.encode_conditions(["a red circle"])
    x, t = torch.randn(1, 3, 8, 32, 32), torch.tensor([500])
    torch.testing.assert_close(loaded.denoise(x, t, cond), trained.denoise(x, t, cond))


def test_demo_lora_on_a_fresh_motion_adapter_is_refused():
    # the zeroed proj_out blocks every gradient before it, and diffusers calls proj_out by keyword, which peft's
    # LoRA layer rejects: LoRA on a fresh adapter could never train, so the options say how to train it instead
    with pytest.raises(ValueError, match="zeroed output projections"):
        adapter_for(model="demo", lora_rank=4, num_frames=8)
    with pytest.raises(ValueError, match="proj_in / proj_out"):
        adapter_for(lora_targets=["proj_out"])
    adapter = adapter_for(model="demo", lora_rank=0, num_frames=8)
    cond = adapter.encode_conditions(["a red circle"])
    adapter.denoise(torch.randn(1, 3, 8, 32, 32), torch.tensor([500]), cond).square().mean().backward()
    grads = {n: p.grad for n, p in adapter.denoiser.named_parameters() if p.requires_grad}
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if "proj_out" not in n)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.endswith("proj_out.weight"))  # trains from here
