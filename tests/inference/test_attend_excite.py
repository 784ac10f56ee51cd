import pytest
import torch

from diffalign.inference import AttendExciteConfig, attend_and_excite, attention_store, sample_images
from diffalign.inference.attend_excite import (StoringCrossAttnProcessor, attend_excite_loss, subject_attention_maps,
                                               subject_token_indices)
from diffalign.modalities.base import unwrap

from .conftest import image_policy


def _maps(policy, prompts, step=0):
    cond = policy.adapter.encode_conditions(prompts)
    x = torch.randn(len(prompts), 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), attention_store(policy.adapter) as store:
        store.active, store.latent_hw = True, (16, 16)
        policy.adapter.denoise(x, policy.rule.model_timesteps(step, x), cond)
        return store


def test_processors_store_cross_attention_and_are_restored(image):
    unet = unwrap(image.adapter.denoiser)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    cond = image.adapter.encode_conditions(["a red cat"])
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        plain = image.adapter.denoise(x, torch.tensor([500]), cond)
        with attention_store(image.adapter) as store:
            kinds = {k: type(v) for k, v in unet.attn_processors.items()}
            assert all((kinds[k] is StoringCrossAttnProcessor) == (".attn2." in k) for k in kinds)
            stored = image.adapter.denoise(x, torch.tensor([500]), cond)  # inactive: records nothing
            assert store.maps == {}
    assert torch.allclose(plain, stored, atol=1e-5)  # the storing processor computes the same attention
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_maps_have_the_right_shape_and_follow_the_named_token(image):
    store = _maps(image, ["a red cat", "a blue dog"])
    assert store.sizes() == [(8, 8), (16, 16)]  # tiny UNet: two blocks at 16x16 latents, the mid block at 8x8
    maps = store.aggregate(16)
    assert maps.shape == (2, 16, 16, 16)  # (B, tokens, h, w): CharTokenizer max_length 16
    assert torch.allclose(maps.sum(dim=1), torch.ones(2, 16, 16), atol=1e-5)  # probabilities over tokens
    assert store.aggregate(8).shape[-2:] == (8, 8)
    cat, n = subject_token_indices(image.adapter, "a red cat", "cat")
    red, _ = subject_token_indices(image.adapter, "a red cat", "red")
    assert (cat, red, n) == ([7, 8, 9], [3, 4, 5], 11)  # <bos> a _ r e d _ c a t <eos>
    m_cat = subject_attention_maps(maps[:1], [[(cat, n)]])
    m_red = subject_attention_maps(maps[:1], [[(red, n)]])
    assert m_cat.shape == (1, 1, 16, 16) and not torch.allclose(m_cat, m_red)
    # the subject's map is the mean of its tokens' maps after the text-token softmax (no smoothing)
    raw = subject_attention_maps(maps[:1], [[(cat, n)]], kernel_size=1)
    text = torch.softmax(maps[0, 1:n - 1] * 100, dim=0)
    assert torch.allclose(raw[0, 0], text[[6, 7, 8]].mean(0), atol=1e-6)
    both = subject_attention_maps(maps[:1], [[(cat, n), (red, n)]])
    expected = max(1 - float(m_cat.max()), 1 - float(m_red.max()))  # the most neglected subject
    assert abs(float(attend_excite_loss(both)) - expected) < 1e-6
    with pytest.raises(ValueError, match="not among the tokens"):
        subject_token_indices(image.adapter, "a red cat", "dog")


def test_attend_and_excite_lowers_its_loss_against_plain_sampling_at_the_same_seeds():
    policy = image_policy(steps=8, lora_rank=4)  # LoRA'd UNet: the processors keep peft's layers in the path
    prompts, subjects, seeds = ["a red cat", "a blue dog"], [["cat", "red"], ["dog"]], [0, 1]
    plain = attend_and_excite(policy, prompts, subjects, seeds, AttendExciteConfig(scale_factor=0.0), progress=False)
    assert torch.allclose(plain.x0, sample_images(policy, prompts, seeds).x0, atol=1e-5)  # scale 0 = plain sampling
    res = attend_and_excite(policy, prompts, subjects, seeds, AttendExciteConfig(scale_factor=200.0), progress=False)
    assert res.losses.shape == (4, 2)  # the first half of 8 steps is altered
    assert torch.allclose(res.losses[0], plain.losses[0])  # same x_T: same loss before the first update
    assert (res.losses[1:] < plain.losses[1:]).all() and (res.final_losses < plain.final_losses).all()
    assert not torch.allclose(res.x0, plain.x0)
    assert res.evaluations > plain.evaluations and res.grad_evaluations > 0
    with pytest.raises(ValueError, match="not among the tokens"):
        attend_and_excite(policy, ["a cat"], [["dog"]], [0], progress=False)


def test_attend_and_excite_needs_a_cross_attention_unet(toy):
    with pytest.raises(ValueError, match="cross-attention"):
        attend_and_excite(toy, ["cat"], [["cat"]], [0], progress=False)


def test_attend_and_excite_on_an_sdxl_unet():
    policy = image_policy(steps=4, architecture="sdxl")  # pooled text embeddings and time ids go through denoise
    runs = [attend_and_excite(policy, ["a red cat"], [["cat"]], [0], AttendExciteConfig(scale_factor=s),
                              progress=False) for s in (0.0, 100.0)]
    assert runs[1].final_losses[0] < runs[0].final_losses[0]
