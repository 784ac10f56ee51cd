"""Edit rewards on known edits: closed forms, and the CLIP similarities against a float64 re-computation."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffalign.rewards import resolve_reward
from diffalign.rewards.base import CLIP_MEAN, CLIP_STD
from diffalign.rewards.editing import edit_preservation
from diffalign.rewards.editing_inputs import clear_cache, input_images
from diffalign.rewards.loading import load_reward
from diffalign.rewards.testing import TINY_IMAGE_SIZE, tiny_clip_score

S = TINY_IMAGE_SIZE  # images at the CLIP's own size: its preprocessing is then only the normalisation


def _save(path, img):
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture()
def inputs(tmp_path):
    """Two input images saved as PNGs, the tensors as read back (uint8-rounded), and their items."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, S, S, generator=g)
    imgs = (imgs * 255).round() / 255
    paths = [_save(tmp_path / f"in{i}.png", imgs[i]) for i in range(2)]
    items = [{"text": "make it red", "image": paths[0], "input_caption": "a grey square",
              "output_caption": "a red square"},
             {"text": "make it blue", "image": paths[1], "input_caption": "a noisy photo",
              "output_caption": "a blue photo"}]
    clear_cache()
    return imgs, items


def test_input_images_reads_resizes_and_names_bad_items(inputs, tmp_path):
    imgs, items = inputs
    assert torch.allclose(input_images(items, (S, S)), imgs, atol=1e-6)
    half = input_images(items, (S // 2, S // 2))
    assert half.shape == (2, 3, S // 2, S // 2)
    # antialiased bilinear halving of a constant image stays that constant
    flat = _save(tmp_path / "flat.png", torch.full((3, S, S), 0.4))
    assert torch.allclose(input_images([{"text": "x", "image": flat}], (8, 8)), torch.full((1, 3, 8, 8), 102 / 255),
                          atol=1e-6)
    # an RGB triple is a uniform input (as the editing adapter reads it)
    assert torch.equal(input_images([{"text": "x", "image": [0.2, 0.5, 1.0]}], (4, 4)),
                       torch.tensor([0.2, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="prompt item 0 .* has no 'image'"):
        input_images([{"text": "x"}], (S, S))
    with pytest.raises(ValueError, match="prompt item 0 .* has no 'image'"):
        input_images(["just a text"], (S, S))
    with pytest.raises(ValueError, match="item 1: input image .*missing.png.* does not exist"):
        input_images([items[0], {"text": "x", "image": str(tmp_path / "missing.png")}], (S, S))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="item 0: input image .*bad.png.* unreadable"):
        input_images([{"text": "x", "image": str(bad)}], (S, S))


def test_edit_preservation_closed_form(inputs):
    imgs, items = inputs
    assert torch.allclose(edit_preservation(imgs, items), torch.ones(2), atol=1e-6)
    shifted = (imgs + 0.1).clamp(0, 1)
    want_l1 = 1 - (shifted - imgs).double().abs().flatten(1).mean(1)
    want_l2 = 1 - (shifted - imgs).double().square().flatten(1).mean(1)
    assert torch.allclose(edit_preservation(shifted, items).double(), want_l1, atol=1e-6)
    assert torch.allclose(edit_preservation(shifted, items, metric="l2").double(), want_l2, atol=1e-6)
    # the inverse image is the farthest: 1 - mean |1 - 2x|
    inv = 1 - imgs
    assert torch.allclose(edit_preservation(inv, items).double(), 1 - (1 - 2 * imgs.double()).abs().flatten(1).mean(1),
                          atol=1e-6)
    # differentiable in the edits
    x = shifted.clone().requires_grad_(True)
    edit_preservation(x, items).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="metric must be one of"):
        edit_preservation(imgs, items, metric="ssim")
    # reachable by name, with its kwargs checked
    fn = resolve_reward("edit_preservation")
    assert torch.allclose(fn(imgs, items), torch.ones(2), atol=1e-6)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_score(str(tmp_path_factory.mktemp("clip")), clip_negative=False)


def _reference(clip_dir, edits, inputs, items):
    """float64 CLIP embeddings with the normalisation written out here, and the three cosines by formula."""
    from transformers import CLIPModel, CLIPTokenizer
    model = CLIPModel.from_pretrained(clip_dir).double().eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)

    def img(x):
        out = model.get_image_features(pixel_values=(x.double() - mean) / std)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return out / out.norm(dim=-1, keepdim=True)

    def txt(texts):
        t = tok(texts, padding=True, return_tensors="pt")
        out = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return out / out.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        e, i = img(edits), img(inputs)
        d_img = e - i
        d_txt = txt([it["output_caption"] for it in items]) - txt([it["input_caption"] for it in items])
        directional = (d_img * d_txt).sum(-1) / (d_img.norm(dim=-1) * d_txt.norm(dim=-1))
        instruction = (e * txt([it["text"] for it in items])).sum(-1)
        image = (e * i).sum(-1)
    return {"clip_directional_similarity": directional, "clip_instruction_similarity": instruction,
            "clip_image_similarity": image}


@pytest.mark.parametrize("name", ["clip_directional_similarity", "clip_instruction_similarity",
                                  "clip_image_similarity"])
def test_clip_edit_similarities_match_float64_reference(name, clip_dir, inputs):
    imgs, items = inputs
    edits = imgs.clone()
    edits[0, 0] = 1.0                      # a red-channel edit on the first image
    edits[1] = edits[1] * 0.5 + torch.tensor([0.0, 0.0, 0.5]).view(3, 1, 1)   # a blue wash on the second
    reward = load_reward(name, model=clip_dir)
    got = reward(edits, items).double()
    want = _reference(clip_dir, edits, imgs, items)[name]
    assert torch.allclose(got, want, atol=2e-5), (got, want)
    # the trainer's way: by name through the registry, kwargs bound
    from diffalign.rewards import bind_reward_kwargs
    fn = bind_reward_kwargs(resolve_reward(name), name, {"model": clip_dir})
    assert torch.allclose(fn(edits, items).double(), want, atol=2e-5)
    # gradients reach the edited images
    x = edits.clone().requires_grad_(True)
    reward(x, items).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_clip_edit_similarities_known_edits(clip_dir, inputs):
    imgs, items = inputs
    # the input returned unchanged: image similarity 1, no image change so no direction (cosine 0 by convention)
    assert torch.allclose(load_reward("clip_image_similarity", model=clip_dir)(imgs, items), torch.ones(2), atol=1e-5)
    assert torch.allclose(load_reward("clip_directional_similarity", model=clip_dir)(imgs, items), torch.zeros(2),
                          atol=1e-5)
    # an edit whose captions say "no change" has no text direction either
    same = [dict(it, output_caption=it["input_caption"]) for it in items]
    assert torch.allclose(load_reward("clip_directional_similarity", model=clip_dir)(1 - imgs, same), torch.zeros(2),
                          atol=1e-5)


def test_clip_directional_names_missing_captions(clip_dir, inputs):
    imgs, items = inputs
    reward = load_reward("clip_directional_similarity", model=clip_dir)
    no_caption = [items[0], {k: v for k, v in items[1].items() if k != "output_caption"}]
    with pytest.raises(ValueError, match="prompt item 1 .* has no 'output_caption'"):
        reward(imgs, no_caption)
    with pytest.raises(ValueError, match="2 edits but 1 prompt items"):
        reward(imgs, items[:1])


def test_clip_edit_similarity_saves_and_reloads(clip_dir, inputs, tmp_path):
    imgs, items = inputs
    reward = load_reward("clip_image_similarity", model=clip_dir)
    out = str(tmp_path / "saved")
    reward.save_pretrained(out)
    assert os.path.isfile(os.path.join(out, "diffalign_reward.json"))
    again = load_reward(out)
    assert again.name == "clip_image_similarity"
    assert torch.allclose(again(1 - imgs, items), reward(1 - imgs, items), atol=1e-6)
