"""Tiny models shared by the inference tests (built once per module: a few seconds on 2 cores)."""
import pytest
import torch

from diffalign.mdp import DiffusionPolicy, make_step_rule


def toy_policy(dim=16, steps=10, eta=1.0, guidance=2.0, pretrain=100):
    from diffalign.modalities.toy import ToyAdapter
    adapter = ToyAdapter(["cat", "dog", "car"], dim=dim, pretrain_steps=pretrain)
    return DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, steps, eta=eta), guidance)


def image_policy(steps=6, eta=0.0, guidance=3.0, lora_rank=4, architecture="sd"):
    """The tiny random SD preset, v-prediction (its samples follow the UNet's output), LoRA'd."""
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    adapter = ImageAdapter.from_options(ImageOptions(model="tiny", architecture=architecture,
                                                     prediction_type="v_prediction", lora_rank=lora_rank))
    return DiffusionPolicy(adapter, make_step_rule("ddim", adapter.scheduler, steps, eta=eta), guidance)


@pytest.fixture(scope="module")
def toy():
    return toy_policy()


@pytest.fixture(scope="module")
def image():
    return image_policy()


def mean_red(images, prompts):
    """A differentiable image reward: mean red minus mean green and blue."""
    x = images.float()
    return x[:, 0].mean(dim=(1, 2)) - 0.5 * (x[:, 1] + x[:, 2]).mean(dim=(1, 2))


def toy_reward(samples, prompts):
    from diffalign.modalities.toy import target_distance
    return target_distance(samples, prompts)


@pytest.fixture(autouse=True)
def _threads():
    # the suite runs beside other work on 2 cores: one thread keeps these tests' timings steady
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
