import pytest
import torch

from diffalign.rewards import (call_reward, jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb, load_prompts,
                               resolve_reward)


def test_jpeg_rewards_rank_flat_above_noisy_images():
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = torch.cat([flat, noisy])
    sizes = jpeg_size_kb(images)
    assert sizes.shape == (2,) and sizes[0] < sizes[1]
    assert torch.equal(jpeg_compressibility(images, ["p", "q"]), -sizes)
    assert torch.equal(jpeg_incompressibility(images, ["p", "q"]), sizes)
    assert jpeg_size_kb(torch.rand(2, 1, 16, 16)).shape == (2,)  # grayscale
    with pytest.raises(ValueError, match=r"\(B, 1\|3, H, W\)"):
        jpeg_size_kb(torch.rand(2, 4, 8, 8))


def user_reward(samples, prompts):
    return samples.flatten(1).sum(1)


def test_resolve_reward_by_name_extra_and_import_path():
    assert resolve_reward("jpeg_compressibility") is jpeg_compressibility
    extra = {"mine": user_reward}
    assert resolve_reward("mine", extra) is user_reward
    assert resolve_reward("tests.rewards.test_rewards:user_reward").__name__ == "user_reward"
    with pytest.raises(ValueError, match="reward.name 'nope' is unknown"):
        resolve_reward("nope")
    with pytest.raises(ValueError, match="reward.name 'os:nothing_here': cannot import"):
        resolve_reward("os:nothing_here")


def test_call_reward_checks_shape_and_finiteness():
    x = torch.ones(3, 2)
    assert call_reward(user_reward, x, ["a", "b", "c"], "cpu").tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match=r"shape \(1,\); expected \(3,\)"):
        call_reward(lambda s, p: torch.ones(1), x, ["a", "b", "c"], "cpu")
    with pytest.raises(ValueError, match="non-finite"):
        call_reward(lambda s, p: torch.tensor([1.0, float("nan"), 0.0]), x, ["a", "b", "c"], "cpu")


def test_load_prompts_from_list_and_file(tmp_path):
    assert load_prompts(["a", 3]) == ["a", "3"]
    f = tmp_path / "p.txt"
    f.write_text("# comment\ncat\n\n dog \n")
    assert load_prompts(file=str(f)) == ["cat", "dog"]
    with pytest.raises(ValueError, match="exactly one"):
        load_prompts(["a"], str(f))
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(file=str(tmp_path / "missing.txt"))


def test_colour_rewards():
    from diffalign.rewards import brightness, color_target
    red, grey = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)
    red[:, 0] = 1.0
    images = torch.cat([red, grey])
    assert torch.allclose(brightness(images, ["a", "b"]), torch.tensor([1 / 3, 0.5]))
    r = color_target(images, ["a", "b"])
    assert r[0].item() == 0.0 and torch.isclose(r[1], -torch.tensor([0.5, 0.5, 0.5]).norm())
    assert color_target(images, ["a", "b"], target=[0.5, 0.5, 0.5])[1].item() == 0.0
    with pytest.raises(ValueError, match="3 numbers"):
        color_target(images, ["a", "b"], target=[1, 0])
    with pytest.raises(ValueError, match=r"RGB images \(B, 3, H, W\)"):
        brightness(torch.rand(2, 1, 8, 8), ["a", "b"])


def test_reward_kwargs_are_bound_and_checked():
    from diffalign.rewards import bind_reward_kwargs, color_target
    assert bind_reward_kwargs(color_target, "color_target", {}) is color_target
    blue = bind_reward_kwargs(color_target, "color_target", {"target": [0, 0, 1]})
    image = torch.zeros(1, 3, 4, 4)
    image[:, 2] = 1.0
    assert blue(image, ["p"]).item() == 0.0
    with pytest.raises(ValueError, match=r"reward.kwargs \{'targt': 1\} do not fit reward 'color_target'"):
        bind_reward_kwargs(color_target, "color_target", {"targt": 1})
