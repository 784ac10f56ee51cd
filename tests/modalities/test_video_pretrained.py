"""The video adapter's pretrained path (``AnimateDiffPipeline`` / ``WanPipeline.from_pretrained`` and their
``encode_prompt``) on tiny random pipelines saved to a folder, loaded as a user's ``modality.options.model:
<folder>`` loads them. Each deterministic chain is checked against the diffusers pipeline's own sampler on the
same starting noise (DDIM eta = 0 for AnimateDiff, the flow-matching Euler ODE for Wan): an independent
reference for the conditioning, the frame layout, guidance and the scheduler handling."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a model folder never reaches a hub

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.mdp import DiffusionPolicy, make_step_rule  # noqa: E402
from diffalign.modalities.video import VideoAdapter, VideoOptions  # noqa: E402
from tests.modalities.tiny_pipelines import (SD_SCHEDULE, clip_config, save_pipelines, tiny_t5,  # noqa: E402
                                             tiny_tokenizer, tiny_unet, tiny_vae)

RES = 16
PROMPTS = ["a red cat", "a dog on grass"]
GUIDANCE = 3.0
STEPS = 3
FRAMES = {"animatediff": 4, "wan": 5}


def build_animatediff():
    """AnimateDiff layout: SD 1.5's parts + a MotionAdapter, with AnimateDiff's recommended DDIM (linear betas)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler
    from transformers import CLIPTextModel
    from diffalign.modalities.video.tiny import tiny_motion_adapter
    unet = tiny_unet(32)
    schedule = dict(SD_SCHEDULE, beta_schedule="linear")
    return AnimateDiffPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(clip_config()), tokenizer=tiny_tokenizer(),
                               unet=unet, motion_adapter=tiny_motion_adapter(unet.config.block_out_channels, 1),
                               scheduler=DDIMScheduler(clip_sample=False, **schedule))


def build_wan():
    """Wan 2.1 layout: a T5 encoder (Wan's is UMT5, the same interface), the tiny Wan transformer and VAE, and the
    UniPC flow sampler Wan ships (flow_shift 3)."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
    from diffusers import WanPipeline
    from diffalign.modalities.video.tiny import tiny_wan
    t5, tokenizer = tiny_t5()
    _, vae, _, _, _ = tiny_wan(RES)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=4, out_channels=4, text_dim=t5.config.d_model, freq_dim=32,
                                        ffn_dim=32, num_layers=2, rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae, scheduler=scheduler, transformer=transformer)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_pipelines({"animatediff": build_animatediff, "wan": build_wan}, tmp_path_factory)


def load(saved, arch, **options):
    return VideoAdapter.from_options(VideoOptions(model=saved[arch][0], architecture=arch, resolution=RES,
                                                  num_frames=FRAMES[arch], **options))


@pytest.mark.parametrize("arch", ["animatediff", "wan"])
def test_conditions_are_the_pipelines_encode_prompt(saved, arch):
    _, pipe = saved[arch]
    cond = load(saved, arch).encode_conditions(PROMPTS)
    if arch == "wan":
        emb, neg = pipe.encode_prompt(PROMPTS, None, True, 1, max_sequence_length=512, device="cpu")
    else:
        emb, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    torch.testing.assert_close(cond["prompt_embeds"], emb.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond["neg_prompt_embeds"], neg.detach(), rtol=1e-5, atol=1e-5)
    assert cond["prompt_embeds"].abs().sum() > 0


@pytest.mark.parametrize("arch", ["animatediff", "wan"])
def test_guided_chain_is_the_pipelines_sampler_and_decodes(saved, arch):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
    _, pipe = saved[arch]
    adapter = load(saved, arch)
    assert type(adapter.denoiser).__name__ == ("WanTransformer3DModel" if arch == "wan" else "UNetMotionModel")
    cond = adapter.encode_conditions(PROMPTS)
    x_T = adapter.initial_noise(cond, torch.Generator().manual_seed(1))
    assert x_T.shape == (2,) + ((4, 2, 4, 4) if arch == "wan" else (4, 4, 8, 8))

    rule = make_step_rule("flow_ode", adapter.scheduler, STEPS) if arch == "wan" else \
        make_step_rule("ddim", adapter.scheduler, STEPS, eta=0.0)
    ours = DiffusionPolicy(adapter, rule, guidance_scale=GUIDANCE).sample(cond, x_T=x_T.clone()).x0

    components = dict(pipe.components)
    call = dict(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=x_T.clone(),
                height=RES, width=RES, num_frames=FRAMES[arch], output_type="latent")
    if arch == "wan":  # the Euler ODE over the same shifted sigmas (Wan ships UniPC, a multistep solver)
        components["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=3.0)
        call["max_sequence_length"] = 512
    else:
        components["scheduler"] = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False)
        call["eta"] = 0.0
    reference = type(pipe)(**components)
    reference.set_progress_bar_config(disable=True)
    expected = reference(**call).frames
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (ours - x_T).abs().mean() > 0.1  # the chain moved

    frames = adapter.decode(ours, cond)
    assert frames.shape == (2, FRAMES[arch], 3, RES, RES) and frames.min() >= 0 and frames.max() <= 1
