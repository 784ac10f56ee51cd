"""Model rewards on tiny random configs saved in their published layouts (nothing is downloaded)."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffalign.rewards import MissingRewardWeights, load_reward, testing
from diffalign.rewards.base import CLIP_MEAN, CLIP_STD, normalize
from diffalign.rewards.hps import load_hps
from diffalign.rewards.image_reward import ours_to_published, published_to_ours
from diffalign.rewards.registry import bind_reward_kwargs, call_reward, resolve_reward

PROMPTS = ["a photo of a cat", "a red car on the table"]
BUILDERS = {
    "clip_score": lambda d: testing.tiny_clip_score(d, clip_negative=False),
    "pickscore": testing.tiny_pickscore,
    "aesthetic": testing.tiny_aesthetic,
    "hps_v2": lambda d: testing.tiny_hps(d, version="v2.0"),
    "hps_v2.1": testing.tiny_hps,
    "image_reward": testing.tiny_image_reward,
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_rewards")
    return {name: build(str(root / name)) for name, build in BUILDERS.items()}


def images(seed=0, size=(40, 48)):
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def clip_inputs(x):
    """Reference preprocessing for images already at the tiny model's size: normalisation only."""
    return normalize(x.double(), CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_shape_determinism_gradient_and_round_trip(tiny_dirs, name, tmp_path):
    reward = load_reward(tiny_dirs[name])
    assert reward.reward_type == name and reward.differentiable and not reward.training
    x = images().requires_grad_(True)
    out = reward(x, PROMPTS)
    assert out.shape == (2,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(reward(x, PROMPTS), out)  # deterministic (eval mode: dropout off)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0  # gradients reach the images
    # save the reloaded reward again in the published layout: the same outputs after reloading that copy
    # (allclose, not equal: without grad, torch's attention takes its fused inference path)
    reward.save_pretrained(str(tmp_path / "again"))
    again = load_reward(str(tmp_path / "again"))
    assert torch.allclose(again(x.detach(), PROMPTS), out.detach(), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        assert torch.equal(again(x, PROMPTS), reward(x, PROMPTS))
    # and through the trainer's path: reward.name = the directory
    assert torch.allclose(call_reward(resolve_reward(tiny_dirs[name]), x.detach(), PROMPTS, "cpu"), out.detach(),
                          atol=1e-6, rtol=1e-6)


def test_pil_and_uint8_inputs_match_tensors(tiny_dirs):
    reward = load_reward(tiny_dirs["pickscore"])
    x = (images() * 255).round() / 255
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    expected = reward(x, PROMPTS)
    assert torch.allclose(reward([Image.fromarray(a) for a in arr], PROMPTS), expected, atol=1e-5)
    assert torch.allclose(reward(arr, PROMPTS), expected, atol=1e-5)


def test_dtype_and_device_arguments(tiny_dirs):
    r32 = load_reward(tiny_dirs["hps_v2.1"])
    r64 = load_reward(tiny_dirs["hps_v2.1"], device="cpu", dtype="float64")
    assert r64.dtype == torch.float64 and r64.device == torch.device("cpu")
    out64 = r64(images(), PROMPTS)
    assert out64.dtype == torch.float32
    assert torch.allclose(out64, r32(images(), PROMPTS), atol=1e-5)


def test_clip_score_and_pickscore_match_their_formulas(tiny_dirs):
    x = images(size=(32, 32))  # the tiny models' input size: no resize
    for name in ("clip_score", "pickscore"):
        reward = load_reward(tiny_dirs[name], dtype="float64")
        m = reward.model
        tok = reward.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        img = F.normalize(m.get_image_features(pixel_values=clip_inputs(x)).pooler_output, dim=-1)
        txt = F.normalize(m.get_text_features(**tok).pooler_output, dim=-1)
        cos = (img * txt).sum(-1)
        expected = 100 * cos if name == "clip_score" else m.logit_scale.exp() * cos
        assert torch.allclose(reward(x, PROMPTS).double(), expected.float().double(), atol=1e-5)
    clipped = load_reward(tiny_dirs["clip_score"], clip_negative=True, scale=2.5)  # Hessel et al.'s w = 2.5
    free = load_reward(tiny_dirs["clip_score"], scale=2.5)
    assert torch.allclose(clipped(x, PROMPTS), free(x, PROMPTS).clamp(min=0))


def test_aesthetic_is_an_affine_map_of_the_normalised_clip_embedding(tiny_dirs):
    reward = load_reward(tiny_dirs["aesthetic"], dtype="float64")
    sd = torch.load(os.path.join(tiny_dirs["aesthetic"], "sac+logos+ava1-l14-linearMSE.pth"))
    assert sorted(sd) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    x = images(size=(32, 32))
    emb = F.normalize(reward.clip.get_image_features(pixel_values=clip_inputs(x)).pooler_output, dim=-1)
    h = emb
    for i in (0, 2, 4, 6, 7):  # the public predictor has no activations between its Linear layers
        h = h @ sd[f"layers.{i}.weight"].double().T + sd[f"layers.{i}.bias"].double()
    assert torch.allclose(reward(x, PROMPTS).double(), h[:, 0], atol=1e-5)


def test_hps_matches_open_clip_forward_and_checkpoint_layout(tiny_dirs):
    path = os.path.join(tiny_dirs["hps_v2.1"], "HPS_v2.1_compressed.pt")
    ckpt = torch.load(path)
    assert set(ckpt) == {"state_dict"} and "visual.conv1.weight" in ckpt["state_dict"]
    assert "token_embedding.weight" in ckpt["state_dict"] and "logit_scale" in ckpt["state_dict"]
    assert os.path.isfile(os.path.join(tiny_dirs["hps_v2"], "HPS_v2_compressed.pt"))
    reward = load_reward(tiny_dirs["hps_v2.1"], dtype="float64")
    x = images(size=(32, 32))
    feats = reward.model(clip_inputs(x), reward.tokenizer(PROMPTS))  # open_clip returns normalised features
    img, txt = (feats["image_features"], feats["text_features"]) if isinstance(feats, dict) else feats[:2]
    assert torch.allclose(reward(x, PROMPTS).double(), torch.diagonal(img @ txt.T), atol=1e-6)
    # a raw state dict (no {"state_dict": ...} wrapper) loads as well
    raw = os.path.join(os.path.dirname(path), "..", "raw_hps.pt")
    torch.save(ckpt["state_dict"], raw)
    r2 = load_reward(tiny_dirs["hps_v2.1"], checkpoint=os.path.abspath(raw))
    assert torch.allclose(r2(x, PROMPTS), reward(x, PROMPTS), atol=1e-5)


def _ref_vit(sd, x, heads, patch, eps=1e-6):
    """BLIP's timm-style ViT in float64, written from the published key layout."""
    g = lambda k: sd["blip.visual_encoder." + k].double()  # noqa: E731
    h = F.conv2d(x, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"), stride=patch).flatten(2).transpose(1, 2)
    h = torch.cat([g("cls_token").expand(x.shape[0], -1, -1), h], 1) + g("pos_embed")
    b, n, d = h.shape
    i = 0
    while f"blocks.{i}.norm1.weight" in {k[len("blip.visual_encoder."):] for k in sd}:
        p = f"blocks.{i}."
        y = F.layer_norm(h, (d,), g(p + "norm1.weight"), g(p + "norm1.bias"), eps)
        q, k, v = F.linear(y, g(p + "attn.qkv.weight"), g(p + "attn.qkv.bias")).reshape(b, n, 3, heads, d // heads) \
            .permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        h = h + F.linear(a.transpose(1, 2).reshape(b, n, d), g(p + "attn.proj.weight"), g(p + "attn.proj.bias"))
        y = F.layer_norm(h, (d,), g(p + "norm2.weight"), g(p + "norm2.bias"), eps)
        h = h + F.linear(F.gelu(F.linear(y, g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias"))), g(p + "mlp.fc2.weight"),
                         g(p + "mlp.fc2.bias"))
        i += 1
    return F.layer_norm(h, (d,), g("norm.weight"), g("norm.bias"), eps)


def _ref_bert_cls(sd, ids, mask, image, heads, layers, eps=1e-12):
    """BLIP's BERT encoder with cross-attention (post-LayerNorm), float64, from the published key layout."""
    g = lambda k: sd["blip.text_encoder." + k].double()  # noqa: E731
    h = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[:ids.shape[1]]
    d = h.shape[-1]
    h = F.layer_norm(h, (d,), g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)

    def attention(p, q_in, kv_in, kv_mask):
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        q = split(F.linear(q_in, g(p + "self.query.weight"), g(p + "self.query.bias")))
        k = split(F.linear(kv_in, g(p + "self.key.weight"), g(p + "self.key.bias")))
        v = split(F.linear(kv_in, g(p + "self.value.weight"), g(p + "self.value.bias")))
        s = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        s = s.masked_fill(~kv_mask.bool()[:, None, None, :], float("-inf"))
        ctx = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(q_in.shape)
        out = F.linear(ctx, g(p + "output.dense.weight"), g(p + "output.dense.bias"))
        return F.layer_norm(out + q_in, (d,), g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"), eps)

    ones = torch.ones(image.shape[:2], dtype=torch.long)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        h = attention(p + "attention.", h, h, mask)
        h = attention(p + "crossattention.", h, image, ones)
        y = F.gelu(F.linear(h, g(p + "intermediate.dense.weight"), g(p + "intermediate.dense.bias")))
        h = F.layer_norm(F.linear(y, g(p + "output.dense.weight"), g(p + "output.dense.bias")) + h, (d,),
                         g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"), eps)
    return h[:, 0]


def test_image_reward_matches_a_reference_written_from_the_published_keys(tiny_dirs):
    sd = torch.load(os.path.join(tiny_dirs["image_reward"], "ImageReward.pt"))
    assert {"blip.visual_encoder.cls_token", "blip.visual_encoder.pos_embed", "blip.visual_encoder.norm.weight",
            "blip.visual_encoder.blocks.1.attn.qkv.weight", "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight",
            "blip.text_encoder.embeddings.word_embeddings.weight", "mlp.layers.7.bias"} <= set(sd)
    assert all(k.startswith(("blip.visual_encoder.", "blip.text_encoder.", "mlp.layers.")) for k in sd)
    reward = load_reward(tiny_dirs["image_reward"], dtype="float64")
    x = images(size=(32, 32))
    image_tokens = _ref_vit(sd, clip_inputs(x), heads=4, patch=8)
    assert torch.allclose(reward.vision(pixel_values=clip_inputs(x)).last_hidden_state, image_tokens, atol=1e-8)
    tok = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tok["input_ids"].shape == (2, 35) and (tok["attention_mask"] == 0).any()  # padding must be masked
    cls = _ref_bert_cls(sd, tok["input_ids"], tok["attention_mask"], image_tokens, heads=4, layers=2)
    h = cls
    for i in (0, 2, 4, 6, 7):
        h = h @ sd[f"mlp.layers.{i}.weight"].double().T + sd[f"mlp.layers.{i}.bias"].double()
    expected = (h[:, 0] - 0.16717362830052426) / 1.0333394966054072
    assert torch.allclose(reward(x, PROMPTS).double(), expected, atol=1e-5)


def test_image_reward_key_mapping_is_a_bijection_and_rejects_foreign_checkpoints(tiny_dirs, tmp_path):
    reward = load_reward(tiny_dirs["image_reward"])
    ours = list(reward.state_dict())
    assert [published_to_ours(ours_to_published(k)) for k in ours] == ours
    assert published_to_ours("blip.vision_proj.weight") is None  # BLIP's ITC head: unused, ignored
    sd = reward.published_state_dict()
    sd["blip.vision_proj.weight"] = torch.zeros(2, 2)  # present in the published file; must not break loading
    reward.load_published_state_dict(sd)
    del sd["blip.visual_encoder.norm.weight"]
    sd["something.else"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['vision.post_layernorm.weight'\], unknown keys \['something.else'\]"):
        reward.load_published_state_dict(sd, "bad.pt")


def test_missing_weights_name_the_source_and_how_to_provide_it(tmp_path, tiny_dirs):
    missing = str(tmp_path / "nowhere")
    for name, key in [("clip_score", "model"), ("pickscore", "model"), ("image_reward", "model"),
                      ("hps_v2.1", "checkpoint"), ("aesthetic", "clip_model")]:
        kwargs = {key: missing}
        if name == "aesthetic":
            kwargs["head"] = os.path.join(tiny_dirs["aesthetic"], "sac+logos+ava1-l14-linearMSE.pth")
        with pytest.raises(MissingRewardWeights, match=f"cannot load weights from '{missing}'.*No such local path"):
            load_reward(name, **kwargs)
    # a hub id that is not cached, offline: the id and the download command
    with pytest.raises(MissingRewardWeights, match=r"pickscore: cannot load weights from 'nobody/no-such-model'.*"
                                                   r"huggingface-cli download nobody/no-such-model"):
        load_reward("pickscore", model="nobody/no-such-model", local_files_only=True)
    with pytest.raises(MissingRewardWeights, match=r"HPS_v2_compressed.pt.*huggingface-cli download xswu/HPSv2"):
        load_reward("hps_v2", checkpoint="nobody/no-such-repo", local_files_only=True)
    with pytest.raises(MissingRewardWeights, match=r"aesthetic: .*No head given.*improved-aesthetic-predictor"):
        load_reward("aesthetic", clip_model=tiny_dirs["aesthetic"])
    with pytest.raises(MissingRewardWeights, match=r"The directory has no ImageReward.pt"):
        load_reward("image_reward", model=str(tmp_path))
    with pytest.raises(ValueError, match="hps version 'v3' is unknown"):
        load_hps(None, version="v3")
    with pytest.raises(ValueError, match=r"reward type 'hps_v2': keyword arguments \['version'\] do not fit"):
        load_reward("hps_v2", version="v3")


def test_trainer_config_names_model_rewards_with_kwargs(tiny_dirs):
    fn = bind_reward_kwargs(resolve_reward("pickscore"), "pickscore", {"model": tiny_dirs["pickscore"]})
    x = images()
    assert torch.equal(call_reward(fn, x, PROMPTS, "cpu"), load_reward(tiny_dirs["pickscore"])(x, PROMPTS))
    with pytest.raises(ValueError, match="do not fit reward 'pickscore'"):
        bind_reward_kwargs(resolve_reward("pickscore"), "pickscore", {"modle": tiny_dirs["pickscore"]})
