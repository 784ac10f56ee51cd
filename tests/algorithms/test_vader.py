"""VADER (Prabhudesai et al. 2024) on a tiny AnimateDiff model in float64: DRaFT-K's truncated backprop through the
last K sampling steps, with VADER's frame subsampling of the decoded clip before the reward, matches an autograd
reference written here (DDIM with v-prediction, the earlier steps detached); K = all steps is full backprop; gradient
checkpointing changes nothing; only the subsampled frames receive gradient."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.algorithms import DRaFT, DRaFTConfig  # noqa: E402
from diffalign.algorithms.direct_reward import SamplingBatch  # noqa: E402
from diffalign.mdp import DiffusionPolicy, make_step_rule  # noqa: E402
from diffalign.rewards.video import PerFrameReward  # noqa: E402

T, FRAMES, KEPT = 3, 4, 2
PROMPTS = ["a red circle", "a blue square"]


def frame_reward(images, prompts):
    """A non-linear differentiable image reward of (N, 3, H, W): mean squared red minus mean green."""
    return (images[:, 0] ** 2).mean(dim=(1, 2)) - images[:, 1].mean(dim=(1, 2))


@pytest.fixture(scope="module")
def policy():
    from diffalign.modalities.video import VideoAdapter, VideoOptions
    adapter = VideoAdapter.from_options(VideoOptions(resolution=16, num_frames=FRAMES, lora_rank=4, lora_alpha=8))
    with torch.no_grad():  # LoRA B starts at zero: move it so the LoRA path carries gradient into A as well
        g = torch.Generator().manual_seed(3)
        for p in adapter.trainable_parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    adapter.denoiser.double()
    adapter.vae.double()
    adapter.text_encoder.double()
    adapter.dtype = torch.float64  # what denoise / decode cast to: the whole chain runs in float64
    return DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, T, eta=1.0), guidance_scale=1.0)


def make_batch(policy, seed=0):
    adapter = policy.adapter
    cond = adapter.encode_conditions(PROMPTS)
    cond = {k: v.double() if v.is_floating_point() else v for k, v in cond.items()}
    g = torch.Generator().manual_seed(seed)
    shape = (len(PROMPTS),) + tuple(adapter.latent_shape)
    x_T = torch.randn(shape, generator=g, dtype=torch.float64)
    noise = torch.randn((len(PROMPTS), T) + shape[1:], generator=g, dtype=torch.float64)
    reward = PerFrameReward(frame_reward, frames=KEPT, generator=torch.Generator().manual_seed(seed + 1))

    def score(x0):
        return reward(adapter.decode_with_grad(x0, cond), PROMPTS)
    return SamplingBatch(cond, PROMPTS, x_T, noise, score, torch.Generator().manual_seed(seed + 2)), reward


# ---- the reference: DDIM(eta = 1) with v-prediction from the scheduler's alphas, earlier steps detached ----------
def ref_step(policy, x, i, cond, z):
    ac = policy.adapter.scheduler.alphas_cumprod.double()
    t = int(policy.rule.timesteps[i])
    a, ap = ac[t], ac[max(t - policy.adapter.scheduler.config.num_train_timesteps // T, 0)]
    v = policy.adapter.denoise(x, policy.rule.timesteps[i].expand(x.shape[0]), cond)
    x0 = a.sqrt() * x - (1 - a).sqrt() * v
    eps = (1 - a).sqrt() * x + a.sqrt() * v
    std = ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
    return ap.sqrt() * x0 + (1 - ap - std ** 2).sqrt() * eps + std * z


def ref_loss(policy, batch, grad_from, seed=0):
    x = batch.x_T
    for i in range(T):
        x = ref_step(policy, x, i, batch.cond, batch.noise[:, i])
        if i < grad_from:
            x = x.detach()
    reward = PerFrameReward(frame_reward, frames=KEPT, generator=torch.Generator().manual_seed(seed + 1))
    frames = policy.adapter.decode_with_grad(x, batch.cond)
    return -reward(frames, PROMPTS).mean()


def grads(policy, loss):
    return torch.autograd.grad(loss, policy.adapter.trainable_parameters(), allow_unused=True)


def assert_close(a, b, tol=1e-9):
    assert len(a) == len(b)
    nonzero = 0
    for u, v in zip(a, b):
        u = torch.zeros(()) if u is None else u
        v = torch.zeros(()) if v is None else v
        assert torch.allclose(u.double(), v.double(), rtol=tol, atol=tol), (u - v).abs().max()
        nonzero += int(u.abs().max() > 0)
    assert nonzero > 0  # the LoRA weights receive gradient at all


@pytest.mark.parametrize("k", [1, 2, T])
def test_vader_truncated_backprop_matches_a_detached_reference_chain(policy, k):
    batch, reward = make_batch(policy)
    loss, metrics = DRaFT(DRaFTConfig(truncation=k, checkpointing=False)).loss(batch, policy, None)
    assert reward.last_index.shape == (len(PROMPTS), KEPT) and metrics["truncation"] == k
    expected = ref_loss(policy, batch, grad_from=T - k)
    assert abs(float(loss.detach()) - float(expected.detach())) < 1e-10
    assert_close(grads(policy, loss), grads(policy, expected))


def test_vader_k_all_steps_is_full_backprop_and_differs_from_k_1(policy):
    batch, _ = make_batch(policy)
    loss = DRaFT(DRaFTConfig(truncation=T, checkpointing=False)).loss(batch, policy, None)[0]
    full = grads(policy, ref_loss(policy, batch, grad_from=-1))  # nothing detached
    assert_close(grads(policy, loss), full)
    batch, _ = make_batch(policy)
    last = DRaFT(DRaFTConfig(truncation=1, checkpointing=False)).loss(batch, policy, None)[0]
    assert any(not torch.allclose(u, v) for u, v in zip(grads(policy, last), full) if u is not None)


@pytest.mark.parametrize("k", [1, T])
def test_vader_checkpointing_gives_the_gradients_of_plain_backprop(policy, k):
    batch, _ = make_batch(policy)
    plain = DRaFT(DRaFTConfig(truncation=k, checkpointing=False)).loss(batch, policy, None)[0]
    batch, _ = make_batch(policy)
    ckpt = DRaFT(DRaFTConfig(truncation=k, checkpointing=True)).loss(batch, policy, None)[0]
    assert float(plain.detach()) == pytest.approx(float(ckpt.detach()), abs=1e-12)
    assert_close(grads(policy, plain), grads(policy, ckpt))


def test_vader_frame_subsampling_sends_gradient_to_the_kept_frames_only(policy):
    batch, reward = make_batch(policy)
    x0 = batch.x_T.clone().requires_grad_(True)
    frames = policy.adapter.decode_with_grad(x0, batch.cond)
    frames.retain_grad()
    reward(frames, PROMPTS).sum().backward()
    per_frame = frames.grad.abs().flatten(2).sum(2)  # (B, F)
    kept = torch.zeros_like(per_frame, dtype=torch.bool).scatter_(1, reward.last_index, True)
    assert (per_frame[kept] > 0).all() and (per_frame[~kept] == 0).all()


def test_reward_frames_decodes_only_the_drawn_frames(policy):
    """``reward_frames: K`` (VADER's decode_frame): decode_with_grad returns K frames per clip, equal to those frames
    of the full decode, drawn anew each call; the latents of the other frames get no gradient."""
    from diffalign.modalities.video import VideoOptions
    adapter = policy.adapter
    batch, _ = make_batch(policy)
    full = adapter.decode(batch.x_T, batch.cond)
    adapter.options.reward_frames = KEPT
    try:
        x0 = batch.x_T.clone().requires_grad_(True)
        part = adapter.decode_with_grad(x0, batch.cond)
        index = adapter.last_reward_frames
        assert part.shape == (len(PROMPTS), KEPT) + full.shape[2:] and index.shape == (len(PROMPTS), KEPT)
        assert (index.diff(dim=1) > 0).all()  # sorted, distinct
        torch.testing.assert_close(part.detach(), full[torch.arange(len(PROMPTS))[:, None], index])
        part.pow(2).sum().backward()
        kept = torch.zeros(len(PROMPTS), FRAMES, dtype=torch.bool).scatter_(1, index, True)
        per_frame = x0.grad.abs().sum(dim=(1, 3, 4))  # (B, F) of the latents
        assert (per_frame[kept] > 0).all() and (per_frame[~kept] == 0).all()
        draws = set()
        for _ in range(8):
            adapter.decode_with_grad(batch.x_T, batch.cond)
            draws.add(tuple(adapter.last_reward_frames.flatten().tolist()))
        assert len(draws) > 1  # a new draw per call
    finally:
        adapter.options.reward_frames = None
    with pytest.raises(ValueError, match=r"reward_frames' is a frame count in \[1, num_frames = 4\]"):
        VideoOptions(num_frames=4, reward_frames=5)
    with pytest.raises(ValueError, match="for animatediff only"):
        VideoOptions(architecture="wan", num_frames=5, reward_frames=1)
