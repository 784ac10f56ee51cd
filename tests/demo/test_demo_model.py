"""The shipped demo model: its files, loading through the image adapter, the word tokenizer, the training script."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffalign.demo import model as dm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_shipped_files_small_and_metadata_measured():
    assert dm.is_demo_model_dir(dm.DEMO_MODEL_DIR)
    assert _folder_bytes(dm.DEMO_MODEL_DIR) <= 20 * 2**20
    for rel in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                "scheduler/scheduler_config.json", "tokenizer.json"):
        assert os.path.isfile(os.path.join(dm.DEMO_MODEL_DIR, rel)), rel
    meta = dm.demo_metadata()
    assert "scripts/train_demo_model.py" in meta["command"] and "--seed" in meta["command"]
    assert isinstance(meta["seed"], int) and meta["steps"] > 0 and meta["train_wall_seconds"] > 0
    base = meta["base_eval"]
    for key in ("accuracy", "reward", "color", "shape", "position"):
        assert 0.0 <= base[key] <= 1.0, key
    # "draws recognisable shapes but still gets many compositions wrong": most constraints hold, most images fail
    assert base["reward"] > 0.4 and base["accuracy"] < 0.8
    assert 0.0 <= meta["caption_noise"] <= 1.0


def test_load_param_counts_match_metadata():
    unet, text, tok, sched, meta = dm.load_demo_model()
    assert sum(p.numel() for p in unet.parameters()) == meta["unet_params"]
    assert sum(p.numel() for p in text.parameters()) == meta["text_encoder_params"]
    assert unet.config.in_channels == 3 and unet.config.sample_size == dm.RESOLUTION
    assert sched.config.prediction_type == "v_prediction"
    from diffalign.demo import shapes
    assert set(shapes.VOCAB) <= set(tok.vocab)  # every caption word has its own id


def test_adapter_loads_demo_by_name_and_path_pixel_space():
    from PIL import Image

    from diffalign.modalities.image import ImageAdapter
    from diffalign.modalities.image.options import ImageOptions
    for model in ("demo", dm.DEMO_MODEL_DIR):
        adapter = ImageAdapter.from_options(ImageOptions(model=model, lora_rank=4), device="cpu")
        assert adapter.vae is None and adapter.latent_channels == 3 and adapter.latent_size == 32
    cond = adapter.encode_conditions(["a red circle", "two blue squares"])
    x = adapter.initial_noise(cond, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32)
    # decode = (x + 1) / 2 clamped; encode(PIL) is its inverse on 8-bit images
    x0 = torch.linspace(-1.5, 1.5, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    assert torch.equal(adapter.decode(x0, cond), ((x0 + 1) / 2).clamp(0, 1))
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back, back_cond = adapter.encode([Image.fromarray(rgb)], ["a red circle"])
    assert torch.equal(back_cond["prompt_embeds"], cond["prompt_embeds"][:1])
    assert torch.allclose(adapter.decode(back, cond)[0].permute(1, 2, 0) * 255, torch.from_numpy(rgb).float(), atol=1e-3)


def test_adapter_rejects_wrong_resolution():
    from diffalign.modalities.image import ImageAdapter
    from diffalign.modalities.image.options import ImageOptions
    with pytest.raises(ValueError, match="resolution 32"):
        ImageAdapter.from_options(ImageOptions(model="demo", resolution=64), device="cpu")


def test_deterministic_sample_with_fixed_seed():
    from diffalign.demo.run import base_sampler
    sample = base_sampler("demo", {"num_steps": 4})
    a = sample(["a red circle", "two blue squares"], [1, 2])
    b = sample(["two blue squares", "a red circle"], [2, 1])  # batch order must not matter
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b.flip(0))
    c = sample(["a red circle"], [3])
    assert not torch.equal(a[:1], c)


def test_word_tokenizer_ids_unknowns_and_roundtrip(tmp_path):
    tok = dm.WordTokenizer(["a", "red", "circle"], max_length=6)
    ids = tok(["a red circle", "A Red", "a blue circle"])
    assert ids.tolist() == [[0, 4, 5, 6, 2, 1], [0, 4, 5, 2, 1, 1], [0, 4, 3, 6, 2, 1]]
    assert tok.unknown_words("a blue circle") == ["blue"]
    assert tok([""]).tolist() == [[0, 2, 1, 1, 1, 1]]
    tok.save(str(tmp_path / "t.json"))
    again = dm.WordTokenizer.load(str(tmp_path / "t.json"))
    assert again.vocab == tok.vocab and again.model_max_length == 6
    (tmp_path / "bad.json").write_text(json.dumps({"type": "bpe"}))
    with pytest.raises(ValueError, match="bad.json"):
        dm.WordTokenizer.load(str(tmp_path / "bad.json"))


def test_load_rejects_non_demo_folder(tmp_path):
    with pytest.raises(ValueError, match="not a diffalign demo model folder"):
        dm.load_demo_model(str(tmp_path))
    assert dm.resolve_demo_path(str(tmp_path)) is None and dm.resolve_demo_path("demo") == dm.DEMO_MODEL_DIR


def _train(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "scripts", "train_demo_model.py"), "--output", str(out), "--steps", "2",
           "--num-images", "16", "--batch-size", "4", "--eval-per-kind", "1", *extra]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)


def test_training_script_runs_and_saves_loadable_model(tmp_path):
    _train(tmp_path / "m")
    unet, text, tok, sched, meta = dm.load_demo_model(str(tmp_path / "m"))
    assert meta["steps"] == 2 and meta["seed"] == 0 and meta["base_eval"]["samples"] == 3
    assert 0.0 <= meta["base_eval"]["accuracy"] <= 1.0
    assert "--steps 2" in meta["command"]


def test_training_script_caption_noise_and_second_stage(tmp_path):
    _train(tmp_path / "n", "--caption-noise", "0.5", "--no-eval")
    assert dm.load_demo_model(str(tmp_path / "n"))[4]["caption_noise"] == 0.5
    # --init continues from a saved model: it starts from those weights, not from random ones
    _train(tmp_path / "s2", "--init", str(tmp_path / "n"), "--no-eval", "--lr", "0")
    first, second = dm.load_demo_model(str(tmp_path / "n")), dm.load_demo_model(str(tmp_path / "s2"))
    assert second[4]["init"] == str(tmp_path / "n") and second[4]["init_metadata"]["caption_noise"] == 0.5
    for (k, v), (_, w) in zip(first[0].state_dict().items(), second[0].state_dict().items()):
        assert torch.equal(v, w), k  # lr 0: the EMA of unchanged weights is the initial model
    with pytest.raises(subprocess.CalledProcessError) as exc:
        _train(tmp_path / "bad", "--caption-noise", "1.5")
    assert b"--caption-noise" in exc.value.stderr


@pytest.mark.slow
def test_training_script_is_reproducible(tmp_path):
    # same seed, same weights
    _train(tmp_path / "m", "--no-eval")
    _train(tmp_path / "m2", "--no-eval")
    unet = dm.load_demo_model(str(tmp_path / "m"))[0]
    unet2 = dm.load_demo_model(str(tmp_path / "m2"))[0]
    for (k, v), (_, w) in zip(unet.state_dict().items(), unet2.state_dict().items()):
        assert torch.equal(v, w), k
