import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.rewards.base import (FunctionReward, MissingRewardWeights, Reward, as_pixels, clip_preprocess,
                                    missing_weights)
from diffalign.rewards.loading import (lazy_reward, load_reward, register_reward_type, unregister_reward_type,
                                       write_reward_config)
from diffalign.rewards.registry import bind_reward_kwargs, call_reward, resolve_reward


class MeanReward(Reward):
    """scale * mean pixel of the preprocessed image: simple enough to check by hand."""
    name = "mean"

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def score(self, inputs, prompts):
        return self.scale * inputs.mean(dim=(1, 2, 3))


def load_mean(directory, device, dtype, scale=1.0):
    return MeanReward(scale)


@pytest.fixture
def mean_type():
    register_reward_type("test_mean", load_mean)
    yield "test_mean"
    unregister_reward_type("test_mean")


def test_as_pixels_accepts_tensors_uint8_and_pil():
    x = torch.rand(2, 3, 5, 7)
    assert as_pixels(x) is x
    arr = (np.random.default_rng(0).random((2, 5, 7, 3)) * 255).astype(np.uint8)
    from_np = as_pixels(arr)
    assert from_np.shape == (2, 3, 5, 7)
    assert torch.allclose(from_np[1, 2, 3, 4], torch.tensor(arr[1, 3, 4, 2] / 255.0, dtype=torch.float32))
    pil = as_pixels([Image.fromarray(a) for a in arr])
    assert torch.equal(pil, from_np)
    mixed = as_pixels([Image.fromarray(arr[0]), Image.fromarray(arr[0][:4])])
    assert isinstance(mixed, list) and [m.shape for m in mixed] == [(1, 3, 5, 7), (1, 3, 4, 7)]
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        as_pixels(torch.rand(2, 4, 5, 5))


def test_clip_preprocess_matches_resize_crop_and_normalise_and_passes_gradients():
    x = torch.rand(1, 3, 8, 12, requires_grad=True)
    y = clip_preprocess(x, 8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert y.shape == (1, 3, 8, 8)
    # shorter side already 8: only the centre crop (columns 2..9) and normalisation apply
    assert torch.allclose(y, (x[..., 2:10] - 0.5) / 0.25)
    y.sum().backward()
    assert x.grad[..., 2:10].abs().sum() > 0 and x.grad[..., :2].abs().sum() == 0
    assert clip_preprocess(torch.rand(2, 3, 30, 20), 16).shape == (2, 3, 16, 16)


def test_reward_forward_checks_prompts_moves_dtype_and_returns_float32():
    r = MeanReward(2.0).freeze()
    x = torch.rand(3, 3, 4, 4)
    assert torch.allclose(r(x, ["a", "b", "c"]), 2 * x.mean(dim=(1, 2, 3)))
    assert r(x).shape == (3,)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        r(x, ["a", "b"])
    r64 = MeanReward(2.0).to(dtype=torch.float64)
    assert r64.dtype == torch.float64 and r64(x, None).dtype == torch.float32
    assert not any(p.requires_grad for p in r.parameters()) and not r.training


def test_function_reward_wraps_plain_callables():
    r = FunctionReward(lambda s, p: s.flatten(1).sum(1), name="sum")
    assert r.name == "sum" and not r.differentiable
    assert torch.allclose(r(torch.ones(2, 3, 2, 2), ["a", "b"]), torch.full((2,), 12.0))


def test_load_reward_by_type_directory_and_plain_name(mean_type, tmp_path):
    r = load_reward(mean_type, scale=3.0, dtype="float64")
    assert isinstance(r, MeanReward) and r.dtype == torch.float64 and float(r.scale) == 3.0
    write_reward_config(str(tmp_path), mean_type, scale=5.0)
    assert json.loads((tmp_path / "diffalign_reward.json").read_text()) == {"type": mean_type, "scale": 5.0}
    assert float(load_reward(str(tmp_path)).scale) == 5.0
    assert float(load_reward(str(tmp_path), scale=7.0).scale) == 7.0  # explicit kwargs win over the file
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(load_reward("jpeg_compressibility")(x, ["a", "b"]), resolve_reward("jpeg_compressibility")(x, ["a", "b"]))
    with pytest.raises(ValueError, match="reward 'nope' is unknown"):
        load_reward("nope")
    with pytest.raises(ValueError, match="no diffalign_reward.json"):
        load_reward(str(tmp_path / "sub") if (tmp_path / "sub").mkdir() is None else "")
    (tmp_path / "diffalign_reward.json").write_text('{"type": "unknown_type"}')
    with pytest.raises(ValueError, match="reward type 'unknown_type' is unknown"):
        load_reward(str(tmp_path))
    with pytest.raises(ValueError, match="already registered"):
        register_reward_type(mean_type, lambda d, dev, dt: None)
    with pytest.raises(ValueError, match="reward dtype 'float7' is unknown"):
        load_reward(mean_type, dtype="float7")


def test_trainer_reward_name_reaches_model_rewards_lazily(mean_type, tmp_path):
    fn = bind_reward_kwargs(resolve_reward(mean_type), mean_type, {"scale": 4.0})
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(call_reward(fn, x, ["a", "b"], "cpu"), 4 * x.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="do not fit reward 'test_mean'"):  # misspelt keyword caught before training
        bind_reward_kwargs(resolve_reward(mean_type), mean_type, {"scael": 4.0})
    write_reward_config(str(tmp_path), mean_type, scale=6.0)
    by_dir = resolve_reward(str(tmp_path))
    assert torch.allclose(by_dir(x, ["a", "b"]), 6 * x.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="not a registered reward type"):
        lazy_reward("nope")


def test_missing_weights_error_names_source_and_remedy():
    err = missing_weights("clip_score", "org/model", "Download it with huggingface-cli.", OSError("offline"))
    assert isinstance(err, MissingRewardWeights) and isinstance(err, FileNotFoundError)
    assert "clip_score: cannot load weights from 'org/model' (OSError: offline). Download it" in str(err)


def test_clip_preprocess_matches_pil_bicubic_resize_and_centre_crop():
    from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, normalize
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).resize((640, 480), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    ref = img.resize((299, 224), Image.BICUBIC).crop((37, 0, 261, 224))  # shorter side 224, centre 224 x 224
    ref = normalize(torch.from_numpy(np.array(ref)).permute(2, 0, 1)[None].float() / 255, CLIP_MEAN, CLIP_STD)
    diff = (clip_preprocess(x, 224) - ref).abs()
    # PIL rounds to 8 bits: about a third of a grey level on average (measured 0.0042 normalised units)
    assert diff.mean() < 0.01 and diff.max() < 0.03
