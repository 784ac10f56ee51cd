import numpy as np
import pytest
import torch

from diffalign.rewards import load_reward
from diffalign.rewards.base import Reward
from diffalign.rewards.combine import Normalizer, WeightedSum, parse_components
from diffalign.rewards.registry import bind_reward_kwargs, call_reward, resolve_reward


class Scaled(Reward):
    """a * mean pixel: differentiable, with a known gradient."""
    name = "scaled"

    def __init__(self, a):
        super().__init__()
        self.a = a

    def score(self, inputs, prompts):
        return self.a * inputs.mean(dim=(1, 2, 3))


def mean_pixel(samples, prompts):
    return samples.mean(dim=(1, 2, 3))


def test_running_normalizer_matches_float64_statistics_of_everything_seen():
    norm = Normalizer("running")
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n).astype(np.float32).astype(np.float64) for n in (5, 1, 7, 4)]
    seen = []
    for b in batches:
        out = norm(torch.tensor(b, dtype=torch.float32))
        seen.extend(b)
        ref = (b - np.mean(seen)) / np.std(seen)  # population std of all scores so far, this batch included
        assert np.allclose(out.numpy(), ref, atol=1e-5)
    assert norm.count == 17 and abs(norm.mean - np.mean(seen)) < 1e-12


def test_fixed_batch_and_none_normalizers():
    r = torch.tensor([1.0, 2.0, 4.0])
    assert torch.allclose(Normalizer("fixed", mean=2.0, std=0.5)(r), torch.tensor([-2.0, 0.0, 4.0]))
    z = Normalizer("batch")(r)
    assert torch.allclose(z, (r - r.mean()) / r.std(unbiased=False))
    assert torch.equal(Normalizer("none")(r), r)
    assert torch.equal(Normalizer("batch")(torch.ones(3)), torch.zeros(3))  # eps floor: no division by zero
    with pytest.raises(ValueError, match="normalize 'zscore' is unknown"):
        Normalizer("zscore")
    with pytest.raises(ValueError, match="needs mean and a positive std"):
        Normalizer("fixed", mean=0.0, std=0.0)


def test_weighted_sum_value_gradient_and_components():
    x = torch.rand(3, 3, 4, 4, requires_grad=True)
    ws = WeightedSum([Scaled(2.0), mean_pixel], [0.5, -1.0], [Normalizer("fixed", mean=1.0, std=4.0), Normalizer()])
    assert not ws.differentiable  # a plain callable is not known to be differentiable
    m = x.mean(dim=(1, 2, 3))
    out = ws(x, ["a", "b", "c"])
    assert torch.allclose(out, 0.5 * (2 * m - 1.0) / 4.0 - m)
    assert torch.allclose(ws.last_components["scaled"], 2 * m.detach())
    out.sum().backward()  # d/dx of 0.5 * 2m/4 - m = -0.75 m; dm/dx = 1/48
    assert torch.allclose(x.grad, torch.full_like(x, -0.75 / 48))
    assert WeightedSum([Scaled(1.0), Scaled(2.0)], [1, 1]).differentiable
    with pytest.raises(ValueError, match="2 rewards but 1 weights"):
        WeightedSum([Scaled(1.0), Scaled(2.0)], [1.0])


def test_load_weighted_sum_from_config_components():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    comps = [{"name": "jpeg_compressibility", "weight": 0.1, "normalize": "batch"},
             {"name": "color_target", "weight": 2.0, "kwargs": {"target": [0, 0, 1]}},
             {"name": "jpeg_compressibility", "weight": 1.0}]
    ws = load_reward("weighted_sum", components=comps)
    from diffalign.rewards import color_target, jpeg_compressibility
    j, c = jpeg_compressibility(x, [""] * 4), color_target(x, [""] * 4, target=[0, 0, 1])
    expected = 0.1 * (j - j.mean()) / j.std(unbiased=False) + 2.0 * c + j
    assert torch.allclose(ws(x, ["p"] * 4), expected, atol=1e-6)
    assert list(ws.last_components) == ["jpeg_compressibility", "color_target", "jpeg_compressibility_2"]
    # through the trainer's reward.name / reward.kwargs
    fn = bind_reward_kwargs(resolve_reward("weighted_sum"), "weighted_sum", {"components": comps})
    assert torch.allclose(call_reward(fn, x, ["p"] * 4, "cpu"), expected, atol=1e-6)


def test_component_errors_name_the_component():
    with pytest.raises(ValueError, match="components must be a non-empty list"):
        parse_components([])
    with pytest.raises(ValueError, match=r"components\[1\] must be a mapping with a 'name'"):
        parse_components([{"name": "brightness"}, {"weight": 1}])
    with pytest.raises(ValueError, match=r"components\[0\] \(brightness\) has unknown keys \['wieght'\]"):
        parse_components([{"name": "brightness", "wieght": 1}])
    with pytest.raises(ValueError, match="reward 'nope' is unknown"):
        load_reward("weighted_sum", components=[{"name": "nope"}])


def test_config_validation_refuses_wrapped_rewards_that_would_fail_at_their_first_call(monkeypatch):
    """weighted_sum and per_frame load their inner rewards lazily; their RewardType.check runs at validation."""
    import yaml
    from diffalign.config import ConfigError, load_config
    from diffalign.rewards import loading
    calls = []
    monkeypatch.setattr(loading, "load_reward", lambda *a, **k: calls.append(a))  # nothing may load while checking
    with open("diffalign/configs/video_vader_tiny.yaml") as f:
        data = yaml.safe_load(f)
    load_config(data=data)  # the shipped config passes
    bad = {**data, "reward": {"name": "per_frame", "kwargs": {"reward": "differentiable_brightnes", "frames": 2}}}
    with pytest.raises(ConfigError, match="reward 'per_frame'.*'differentiable_brightnes' is unknown"):
        load_config(data=bad)
    bad["reward"]["kwargs"] = {"reward": "brightness", "reduce": "median"}
    with pytest.raises(ConfigError, match="reduce 'median' is not one of"):
        load_config(data=bad)
    bad["reward"]["kwargs"] = {"reward": "color_target", "reward_kwargs": {"colour": [1, 0, 0]}}
    with pytest.raises(ConfigError, match="do not fit reward 'color_target'"):
        load_config(data=bad)
    data = {**data, "algorithm": {"name": "ddpo"}}
    ws = {"name": "weighted_sum", "kwargs": {"components": [{"name": "brightness"}, {"name": "jpeg_compressibilty"}]}}
    with pytest.raises(ConfigError, match=r"weighted_sum: components\[1\]: reward.name 'jpeg_compressibilty' is unknown"):
        load_config(data={**data, "reward": ws})
    ws["kwargs"]["components"][1] = {"name": "per_frame", "kwargs": {"reward": "brightnes"}}  # nested twice
    with pytest.raises(ConfigError, match=r"components\[1\]: reward 'per_frame'.*'brightnes' is unknown"):
        load_config(data={**data, "reward": ws})
    ws["kwargs"]["components"][1] = {"name": "per_frame", "kwargs": {"reward": "brightness", "reduce": "min"}}
    load_config(data={**data, "reward": ws})
    assert calls == []
