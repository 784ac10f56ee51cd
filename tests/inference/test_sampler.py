import torch

from diffalign.inference.sampler import (EvalCounter, count_evaluations, decode_with_grad, draw_noise, sample_chain,
                                         sample_images, seeded_generators)

from .conftest import toy_policy


def test_chain_reproduces_policy_sample_at_the_same_seeds(toy, image):
    for policy, prompts in ((toy, ["cat", "dog", "car"]), (image, ["a red cat", "a dog", "a house"])):
        seeds = [3, 14, 15]
        cond = policy.adapter.encode_conditions(prompts)
        reference = policy.sample(cond, generator=seeded_generators(seeds)).x0
        assert torch.allclose(sample_images(policy, prompts, seeds, batch_size=2).x0, reference.cpu(), atol=1e-5)


def test_stochastic_noise_is_per_sample_and_batch_independent(toy):
    cond = toy.adapter.encode_conditions(["cat", "dog"])
    x_T, noises = draw_noise(toy, cond, [1, 2])
    x_T1, noises1 = draw_noise(toy, toy.adapter.encode_conditions(["dog"]), [2])
    assert torch.equal(x_T[1:], x_T1) and torch.equal(noises[1:], noises1)
    assert noises.shape[:2] == (2, toy.rule.num_steps)  # (B, T, ...)


def test_evaluations_count_guided_rows():
    policy = toy_policy(steps=5, guidance=3.0, pretrain=0)
    batch = sample_images(policy, ["cat"] * 4, range(4), batch_size=3)
    assert batch.evaluations == 5 * 2 * 4  # steps x (uncond + cond) x samples
    unguided = toy_policy(steps=5, guidance=1.0, pretrain=0)
    assert sample_images(unguided, ["cat"] * 4, range(4)).evaluations == 5 * 4
    # nested blocks: the inner counts its own rows, the outer everything
    with count_evaluations(unguided.adapter) as outer:
        sample_images(unguided, ["cat"], [0])
        with count_evaluations(unguided.adapter) as inner:
            sample_images(unguided, ["cat", "dog"], [0, 1])
    assert (outer.evaluations, inner.evaluations) == (15, 10)
    assert "denoise" not in vars(unguided.adapter)  # the wrapper is removed


def test_checkpointed_chain_gradient_equals_plain_backprop():
    policy = toy_policy(steps=6, guidance=2.0, pretrain=0)
    policy.adapter.denoiser.double()
    cond = policy.adapter.encode_conditions(["cat", "dog"])
    x_T, noises = draw_noise(policy, cond, [5, 6])
    x_T, noises = x_T.double(), noises.double()
    grads = []
    for ckpt in (True, False):
        x = x_T.clone().requires_grad_(True)
        counter = EvalCounter()
        with count_evaluations(policy.adapter, counter):
            sample_chain(policy, cond, x, noises, checkpoint=ckpt).pow(2).sum().backward()
        grads.append(x.grad)
        # checkpointing recomputes each step once in the backward pass, and that is counted
        assert counter.evaluations == 6 * 2 * 2 * (2 if ckpt else 1)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert grads[0].abs().sum() > 0


def test_decode_with_grad_reaches_the_latents(image):
    cond = image.adapter.encode_conditions(["a cat"])
    x0 = torch.randn(1, 4, 16, 16, requires_grad=True)
    decode_with_grad(image.adapter, x0, cond).mean().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(decode_with_grad(image.adapter, x0, cond), image.adapter.decode(x0, cond))
