"""``diffalign demo editing --quick`` end to end, the shipped editor (its save/load and InstructPix2Pix-style
initialisation) and the training script."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.data import shapes_edits as E
from diffalign.demo import editing
from diffalign.eval.paired import paired_change
from diffalign.modalities.editing import demo_model as M
from diffalign.rewards.edit_compositional import EDIT_ATTRIBUTES, edit_accuracies, score_items

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("editing_demo"))
    assert _cli(["demo", "editing", "--quick", "--output", out]) == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


def test_quick_editing_demo_writes_the_image_demos_report_schema(quick_run):
    out, report = quick_run
    assert report["modality"] == "editing" and report["algo"] == editing.DEFAULT_EDITING_ALGO and report["quick"]
    assert {"model", "flags", "torch_threads"} <= set(report["hardware"]) and report["precision"]["chosen"] == "no"
    n = len(E.EDIT_KINDS) * editing.QUICK_SAMPLES_PER_KIND
    for stage in ("before", "after"):
        acc = report[stage]
        assert acc["n"] == n and 0 <= acc["accuracy"] <= 1
        assert set(EDIT_ATTRIBUTES) <= set(acc) and all(f"accuracy/{k}" in acc for k in E.EDIT_KINDS)
    assert report["paired"]["all"]["n"] == n and set(report["paired"]) == {"all", *E.EDIT_KINDS}
    assert report["paired"]["all"]["delta"] == pytest.approx(report["after"]["accuracy"] - report["before"]["accuracy"])
    assert report["info"]["epochs"] >= 1 and report["curve"] and all("reward" in c for c in report["curve"])
    assert report["eval"]["sampling"]["image_guidance_scale"] == editing.EDIT_EVAL_DEFAULTS["image_guidance_scale"]
    for name in ("report.md", "grid.png", "reward_curve.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert "Held-out edit accuracy" in md and "McNemar" in md and "grid.png" in md


def test_quick_editing_demo_samples_reproduce_the_report(quick_run):
    out, report = quick_run
    with open(os.path.join(out, "samples", "prompts.json")) as f:
        index = json.load(f)
    for stage in ("before", "after"):
        names = sorted(k for k in index if k.startswith(stage + "/"))
        items = []
        for name in names:
            entry = index[name]
            path = os.path.join(out, "samples", entry["input"])
            assert os.path.isfile(path) and entry["input"].startswith("inputs/")
            assert E.parse_instruction(entry["prompt"]) == E.Edit.from_dict(entry["edit"])
            assert E.split_of(entry["prompt"]) == "heldout"
            items.append({"text": entry["prompt"], "image": path, "edit": entry["edit"]})
        images = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(out, "samples", n)).convert("RGB")))
                              for n in names]).permute(0, 3, 1, 2).float() / 255
        results = score_items(images, items)
        assert edit_accuracies(results) == pytest.approx(report[stage])
        assert [r.correct for r in results] == [index[n]["correct"] for n in names]
    seeds = [index[k]["seed"] for k in sorted(index) if k.startswith("before/")]
    assert seeds == [index[k]["seed"] for k in sorted(index) if k.startswith("after/")] and len(set(seeds)) == len(seeds)
    before = [index[k]["correct"] for k in sorted(index) if k.startswith("before/")]
    after = [index[k]["correct"] for k in sorted(index) if k.startswith("after/")]
    assert report["paired"]["all"] == json.loads(json.dumps(paired_change(before, after)))
    # the training items are training instructions on training scenes
    train = sorted(os.listdir(os.path.join(out, "train_inputs")))
    assert len(train) == len(editing.TRAIN_KINDS) * 2 == report["info"]["train_items"]
    assert report["info"]["train_kinds"] == list(editing.TRAIN_KINDS)


def test_every_editing_config_evaluates_with_the_editors_evaluation_settings():
    """Before and after edit with EDIT_EVAL_DEFAULTS whatever the rollouts take: demo_editing_rwr.yaml rolls out 5
    steps and evaluates at 10 through its demo option eval_sampling (diffalign.demo.run.train_stage samples the
    aligned weights with it; tests/demo/test_demo_run.py checks that)."""
    from diffalign.demo.run import demo_options, evaluation_sampling, load_demo_config
    items = [{"text": "make the red circle blue", "image": [0.0, 0.0, 0.0]}]
    d = editing.EDIT_EVAL_DEFAULTS
    for algo in editing.editing_algos():
        name = editing.CONFIG_PREFIX + algo
        cfg = load_demo_config(name, "/tmp/unused", items)
        s = evaluation_sampling(cfg, demo_options(name, {}))
        assert (s.num_steps, s.eta, s.guidance_scale, s.batch_size) == \
            (d["num_steps"], d["eta"], d["guidance_scale"], d["batch_size"]), algo
        assert cfg.modality.options["image_guidance_scale"] == d["image_guidance_scale"], algo
    rwr = load_demo_config("editing_rwr", "/tmp/unused", items)
    assert rwr.sampling.num_steps == 5 < d["num_steps"]  # cheaper rollouts than the evaluation


def test_training_items_hold_only_the_asked_kinds_of_the_training_split(tmp_path):
    items = editing.training_items(str(tmp_path), per_kind=3, kinds=("recolour", "remove"))
    assert [it["edit"]["kind"] for it in items] == ["recolour"] * 3 + ["remove"] * 3
    for it in items:
        assert E.split_of(it["text"]) == "train" and os.path.isfile(it["image"])
        assert E.parse_instruction(it["text"]) == E.Edit.from_dict(it["edit"])
    with pytest.raises(ValueError, match="'paint'"):
        editing.training_items(str(tmp_path), per_kind=1, kinds=("paint",))


def test_grid_columns_alternate_the_kinds():
    items = [{"text": E.instruction(e), "edit": e.as_dict()} for k in E.EDIT_KINDS for e in E.split_edits("heldout", k)[:3]]
    idx = editing._grid_indices(items, 8)
    assert [items[i]["edit"]["kind"] for i in idx] == list(E.EDIT_KINDS) * 2
    assert len({items[i]["text"] for i in idx}) == 8


@pytest.mark.parametrize("argv,needle", [(["editing", "--algo", "nope"], "'nope'"),
                                         (["editing", "--method", "best_of_n"], "--method"),
                                         (["editing", "--minutes", "0"], "--minutes"),
                                         (["editing", "oops"], "dotted.key=value")])
def test_cli_rejects_bad_editing_arguments(argv, needle, tmp_path, capsys):
    assert _cli(["demo"] + argv + ["--output", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_editing_configs_are_separate_from_the_image_demos():
    from diffalign.demo.run import available_algos
    assert "rwr" in editing.editing_algos()
    assert not any(a.startswith("editing_") for a in available_algos("image"))


# ---- the shipped editor -------------------------------------------------------------------------------------
def test_editor_initialisation_keeps_the_image_model_exactly():
    from diffalign.modalities.image.demo_model import load_demo_model
    unet0, text0, tok0, _, _ = load_demo_model()
    unet, text, tok, _ = M.editor_from_image_demo(E.VOCAB, seed=0)
    assert unet.config.in_channels == 6 and unet.conv_in.weight[:, 3:].abs().sum() == 0
    # every old token keeps its id and its embedding row; the instruction words are new ids
    assert all(tok.vocab[w] == i for w, i in tok0.vocab.items())
    assert {"make", "move", "add", "remove", "to", "the"} <= set(tok.vocab) - set(tok0.vocab)
    old_rows = text0.get_input_embeddings().weight
    assert torch.equal(text.get_input_embeddings().weight[:len(old_rows)], old_rows)
    ids = tok0(["a red circle left of a blue square", ""])
    with torch.no_grad():
        emb0, emb = text0(ids).last_hidden_state, text(ids).last_hidden_state
        assert torch.equal(emb0, emb)
        g = torch.Generator().manual_seed(0)
        x, image = torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
        t = torch.tensor([500, 20])
        # zero weights on the input image's channels: the editor computes exactly the text-to-image model
        assert torch.allclose(unet(torch.cat([x, M.image_latents(image)], 1), t, encoder_hidden_states=emb).sample,
                              unet0(x, t, encoder_hidden_states=emb0).sample, atol=1e-6)


def test_save_load_round_trip_and_bad_folders(tmp_path):
    unet, text, tok, sched = M.editor_from_image_demo(E.VOCAB, seed=0)
    M.save_editing_demo_model(str(tmp_path / "m"), unet, text, tok, sched, {"seed": 3})
    unet2, text2, tok2, sched2, meta = M.load_editing_demo_model(str(tmp_path / "m"))
    assert meta == {"seed": 3} and tok2.vocab == tok.vocab and not unet2.training
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), unet2.state_dict().values()))
    assert sched2.config.prediction_type == "v_prediction"
    assert M.resolve_editing_demo_path("demo") == M.EDITING_DEMO_MODEL_DIR
    assert M.resolve_editing_demo_path(str(tmp_path / "m")) == str(tmp_path / "m")
    assert M.resolve_editing_demo_path(str(tmp_path)) is None
    with pytest.raises(ValueError, match="not a diffalign editing demo model folder"):
        M.load_editing_demo_model(str(tmp_path))
    with pytest.raises(ValueError, match="image_latents: expected images"):
        M.image_latents(torch.zeros(1, 4, 8, 8))


def test_shipped_editor_is_trained_small_and_documented():
    folder = M.EDITING_DEMO_MODEL_DIR
    sizes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    assert sizes <= 10 * 2 ** 20
    with open(os.path.join(folder, M.MARKER)) as f:
        meta = json.load(f)
    assert meta["command"].startswith("OMP_NUM_THREADS=1 python scripts/train_editing_demo_model.py")
    assert {"seed", "steps", "train_wall_seconds", "cpu", "load_average_at_start", "base_eval"} <= set(meta)
    state = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    assert state["conv_in.weight"].shape[1] == 6 and state["conv_in.weight"][:, 3:].abs().sum() > 0  # trained
    # right on only part of the held-out edits, so alignment has room
    assert 0.0 < meta["base_eval"]["accuracy"] < 0.9


def test_training_script_trains_on_training_edits(tmp_path):
    path = os.path.join(ROOT, "scripts", "train_editing_demo_model.py")
    spec = importlib.util.spec_from_file_location("train_editing_demo_model", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "editor"
    assert script.main(["--output", str(out), "--steps", "2", "--num-edits", "8", "--batch-size", "2",
                        "--warmup", "1", "--eval-per-kind", "1"]) == 0
    unet, _, tok, _, meta = M.load_editing_demo_model(str(out))
    assert meta["steps"] == 2 and "--steps 2" in meta["command"] and meta["base_eval"]["n"] == len(E.EDIT_KINDS)
    assert unet.conv_in.weight[:, 3:].abs().sum() > 0  # the input image's channels moved off zero
    with pytest.raises(SystemExit):
        script.parse_args(["--drop-prob", "0.5"])
    with pytest.raises(SystemExit):
        script.parse_args(["--noise-prob", "1.5"])
    # the shipped editor's second run: continue a saved editor on near-miss captions
    noisy = tmp_path / "noisy"
    assert script.main(["--output", str(noisy), "--init", str(out), "--noise-prob", "1.0", "--steps", "1",
                        "--num-edits", "4", "--batch-size", "2", "--warmup", "1", "--no-eval"]) == 0
    unet2, _, tok2, _, meta2 = M.load_editing_demo_model(str(noisy))
    assert meta2["noise_prob"] == 1.0 and meta2["init_metadata"]["command"] == meta["command"]
    assert tok2.vocab == tok.vocab and str(out) in meta2["init"]
    assert not torch.equal(unet2.conv_in.weight, unet.conv_in.weight)  # it trained from the saved weights
