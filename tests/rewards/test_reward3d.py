"""Reward3D-style multi-view reward model: view pooling against float64 references, the ranked-views reader and
its shapes-world writer (ground truth checked by the compositional detector), Bradley-Terry training above chance
on held-out pairs (and above a one-view model), saving and reloading with load_reward."""
import json
import math
import os

import numpy as np
import pytest
import torch

from diffalign.config import ConfigError
from diffalign.data.multiview import (RANKINGS_FILE, draw_view, read_ranked_views, view_azimuths, view_files,
                                      write_shapes_views)
from diffalign.data.types import PreferenceDataError
from diffalign.rewards.loading import load_reward
from diffalign.rewards.multiview import (MULTIVIEW_TYPE, MultiViewRewardModel, ViewPooling, load_multiview_model,
                                         multiview_comparisons)
from diffalign.rewards.training.model import build_model
from diffalign.trainer.reward_model import load_reward_train_config, train_reward_model

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "diffalign", "configs", "reward3d_tiny.yaml")


def _config(out, *overrides):
    return load_reward_train_config(CONFIG, [f"output_dir={out}", "data.synthetic.num_groups=160", "epochs=40"]
                                    + list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reward3d")
    return str(out), train_reward_model(_config(out))


def _tiny_model(views=3, pooling="mean", seed=0):
    base = build_model("tiny", ["overall"], head_hidden=8, tiny={"layers": 1}, seed=seed)
    return MultiViewRewardModel.from_model(base, views, pooling)


# ---- pooling -------------------------------------------------------------------------------------------
def test_view_pooling_matches_float64_references_and_ignores_view_order():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(4, 5, 6, generator=g)
    mean = ViewPooling(6, "mean")
    assert torch.allclose(mean(e).double(), e.double().sum(1) / 5, atol=1e-6)
    att = ViewPooling(6, "attention")
    assert torch.allclose(att(e), mean(e), atol=1e-6)  # a zero query starts as the mean
    with torch.no_grad():
        att.query.copy_(torch.randn(6, generator=g))
    q, ed = att.query.double(), e.double()
    logits = torch.einsum("nvd,d->nv", ed, q)
    w = torch.exp(logits - logits.max(1, keepdim=True).values)
    w = w / w.sum(1, keepdim=True)
    assert torch.allclose(att(e).double(), (w[..., None] * ed).sum(1), atol=1e-6)
    perm = torch.randperm(5, generator=g)
    assert torch.allclose(att(e[:, perm]), att(e), atol=1e-6)
    with pytest.raises(ValueError, match="one of"):
        ViewPooling(6, "max")
    with pytest.raises(ValueError, match=r"\(N, V, D\)"):
        att(e[0])


def test_multiview_model_scores_tensors_and_images_alike_and_is_differentiable():
    torch.manual_seed(0)
    model = _tiny_model(views=3, pooling="attention")
    views = torch.rand(2, 3, 3, 32, 32, requires_grad=True)
    out = model(views, ["a red circle", "a blue square"])
    assert out.shape == (2,)
    out.sum().backward()
    assert views.grad is not None and views.grad.abs().sum() > 0
    # B lists of V uint8 pictures score as the same tensor does (up to the 8-bit rounding)
    pics = (views.detach() * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    again = model([list(p) for p in pics], ["a red circle", "a blue square"])
    rounded = model((torch.from_numpy(pics).permute(0, 1, 4, 2, 3).float() / 255), ["a red circle", "a blue square"])
    assert torch.allclose(again, rounded, atol=1e-5)
    # the score is the head of the pooled view embeddings, views sharing the encoder
    emb = torch.stack([model.image_embeds(views[b].detach()) for b in range(2)])
    direct = model.head_scores(emb, model.text_embeds(["a red circle", "a blue square"]))[:, 0]
    assert torch.allclose(direct, out.detach(), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, 3, H, W\)"):
        model(torch.rand(2, 4, 3, 32, 32), ["a", "b"])
    with pytest.raises(ValueError, match="object 0 has 2 views"):
        model([list(pics[0][:2])], ["a"])
    with pytest.raises(ValueError, match="2 objects but 1 prompts"):
        model(views.detach(), ["a"])
    with pytest.raises(ValueError, match="model.views"):
        MultiViewRewardModel.from_model(build_model("tiny", ["overall"]), 0)
    with pytest.raises(ValueError, match="not edits"):
        MultiViewRewardModel.from_model(build_model("tiny", ["overall"], input_image=True), 2)


def test_saved_model_reloads_through_load_reward(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model(views=2, pooling="attention")
    with torch.no_grad():
        model.view_pool.query.normal_()
    model.save(str(tmp_path / "r"), extra={"note": 1})
    views = torch.rand(3, 2, 3, 32, 32)
    prompts = ["a red circle", "a green square", "a blue triangle"]
    loaded = load_reward(str(tmp_path / "r"))
    assert isinstance(loaded, MultiViewRewardModel) and loaded.views == 2 and loaded.pooling == "attention"
    assert torch.allclose(loaded(views, prompts), model.eval()(views, prompts), atol=1e-6)
    meta = json.load(open(tmp_path / "r" / "diffalign_reward.json"))
    assert meta["type"] == MULTIVIEW_TYPE and meta["views"] == 2
    with pytest.raises(ValueError, match="accepts only the keyword 'aspect'"):
        load_multiview_model(str(tmp_path / "r"), colour="red")
    with pytest.raises(ValueError, match="trained folder"):
        load_multiview_model(None)


# ---- data ----------------------------------------------------------------------------------------------
def test_shapes_views_ranks_follow_what_the_compositional_detector_sees(tmp_path):
    from PIL import Image

    from diffalign.rewards.compositional import score_batch
    path = write_shapes_views(str(tmp_path), num_groups=6, group_size=3, views=8, image_size=32, seed=3)
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 6
    for r in rows:
        measured = []
        for name in r["candidates"]:
            files = view_files(os.path.join(tmp_path, name))
            assert len(files) == 8
            pics = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
            measured.append(float(np.mean([s.correct for s in score_batch(pics, [r["prompt"]] * 8)])))
        assert measured == pytest.approx(r["quality"])          # quality = the fraction of views showing the prompt
        order = sorted(range(3), key=lambda k: -measured[k])
        assert [r["ranks"][k] for k in order] == [1.0, 2.0, 3.0]  # ranked by it, best first
        assert min(abs(a - b) for i, a in enumerate(measured) for b in measured[i + 1:]) >= 2 / 8 - 1e-9
    assert view_azimuths(4) == [0.0, 90.0, 180.0, 270.0]


def test_draw_view_moves_an_off_centre_object_with_the_camera():
    def centre_x(img):
        return float(np.nonzero(img.any(-1))[1].mean())
    right = draw_view("red", "circle", 0.0, (0.6, 0.0), 5.0, 32)
    left = draw_view("red", "circle", 180.0, (0.6, 0.0), 5.0, 32)
    side = draw_view("red", "circle", 90.0, (0.6, 0.0), 5.0, 32)
    assert centre_x(right) > 20 and centre_x(left) < 12 and abs(centre_x(side) - 16) < 1
    assert (side.any(-1).sum() > right.any(-1).sum())  # nearer the camera: drawn larger


def test_reader_counts_bad_rows_by_reason_naming_file_and_line(tmp_path):
    write_shapes_views(str(tmp_path), num_groups=2, group_size=2, views=3, image_size=16, min_gap=1)
    good = [json.loads(line) for line in open(tmp_path / RANKINGS_FILE)]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "000.png").write_bytes(b"not an image")
    (tmp_path / "two").mkdir()
    for v in ("000.png", "001.png"):
        os.link(tmp_path / good[0]["candidates"][0] / v, tmp_path / "two" / v)
    bad = [{"prompt": "", "candidates": good[0]["candidates"], "ranks": [1, 2]},            # line 3
           {"prompt": "a red circle", "candidates": ["only_one"], "ranks": [1]},            # line 4
           {"prompt": "a red circle", "candidates": good[0]["candidates"], "ranks": [1]},   # line 5
           {"prompt": "a red circle", "candidates": ["nowhere", good[0]["candidates"][0]], "ranks": [1, 2]},
           {"prompt": "a red circle", "candidates": ["broken", good[0]["candidates"][0]], "ranks": [1, 2]},
           {"prompt": "a red circle", "candidates": ["two", good[0]["candidates"][0]], "ranks": [1, 2]},
           [1, 2]]                                                                          # line 9
    lines = [json.dumps(r) for r in good + bad] + ["{not json"]
    lines.insert(2, "")  # blank lines are not rows
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    rows, report = read_ranked_views(str(tmp_path / "mixed.jsonl"))
    assert (report.rows, report.kept) == (10, 2) and len(rows) == 2
    assert report.missing_caption == 1 and "mixed.jsonl line 4" in report.examples["missing_caption"][0]
    assert report.malformed == 5 and report.undecodable == 2
    text = " | ".join(report.examples["malformed"] + report.examples["undecodable"])
    for needle in ("line 5: field 'candidates'", "line 6: field 'ranks'", "line 7: candidate folder",
                   "line 8: view"):
        assert needle in text, (needle, text)
    assert all(len(c) == 3 and all(os.path.isabs(v) for v in c) for r in rows for c in r.candidates)
    # a folder stands for its rankings.jsonl; the comparisons hold each candidate's views as its sample
    groups, _ = multiview_comparisons(str(tmp_path), views=3)
    assert groups[0].samples[0] == rows[0].candidates[0] and groups[0].ranks[None] == rows[0].ranks
    # a view count other than the model's is malformed; nothing usable is an error naming the file
    with pytest.raises(PreferenceDataError, match="2 usable|0 usable"):
        read_ranked_views(str(tmp_path), views=4)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PreferenceDataError, match="empty.jsonl"):
        read_ranked_views(str(tmp_path / "empty.jsonl"))
    with pytest.raises(PreferenceDataError, match="no such file"):
        read_ranked_views(str(tmp_path / "missing"))


# ---- training ------------------------------------------------------------------------------------------
def test_trained_model_ranks_held_out_objects_above_chance_and_reloads(trained):
    out, summary = trained
    assert summary["views"] == 8 and summary["held_out_groups"] == 40
    assert summary["held_out_accuracy"] >= 0.7, summary
    # the loaded reward redoes the held-out pairwise accuracy from the views themselves
    from diffalign.rewards.training.data import split_groups
    from diffalign.rewards.training.metrics import pairwise_accuracy
    reward = load_reward(os.path.join(out, "reward"))
    groups, _ = multiview_comparisons(os.path.join(out, "synthetic_data"), views=8)
    _, held = split_groups(groups, 0.25, seed=0)
    with torch.no_grad():
        scores = torch.stack([reward([list(c) for c in g.samples], [g.prompt] * len(g.samples)) for g in held])
    ranks = torch.tensor([g.ranks[None] for g in held], dtype=torch.float64)
    acc = pairwise_accuracy(scores, ranks)
    assert acc.accuracy == pytest.approx(summary["held_out_accuracy"], abs=1e-9)
    log = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert log[-1]["train_loss"] < log[0]["train_loss"]


def test_all_views_rank_better_than_one_view(trained, tmp_path):
    """One view sees the prompt with probability quality, so a one-view model of the same objects ranks worse."""
    out, summary = trained
    data = os.path.join(out, "synthetic_data")
    rows = [json.loads(line) for line in open(os.path.join(data, RANKINGS_FILE))]
    for r in rows:
        for name in r["candidates"]:
            (tmp_path / name).mkdir()
            os.symlink(os.path.join(data, name, "000.png"), tmp_path / name / "000.png")
    (tmp_path / RANKINGS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = train_reward_model(_config(tmp_path / "one", "model.views=1", "data.format=multiview",
                                     f"data.path={tmp_path}"))
    assert one["held_out_accuracy"] <= summary["held_out_accuracy"] - 0.05, (one, summary)


def test_backbone_tuning_runs_through_the_views(tmp_path):
    summary = train_reward_model(_config(tmp_path, "data.synthetic.num_groups=8", "data.synthetic.views=2",
                                         "data.synthetic.min_gap=1", "model.views=2", "epochs=1", "model.backbone_mode=full",
                                         "model.view_pooling=attention", "train.batch_size=4"))
    assert summary["backbone_mode"] == "full" and math.isfinite(summary["held_out_accuracy"])
    reward = load_reward(os.path.join(tmp_path, "reward"))
    assert reward.views == 2 and reward.pooling == "attention"


def test_config_and_data_must_agree_on_views(tmp_path):
    with pytest.raises(ConfigError, match="needs ranked views"):
        _config(tmp_path, "data.path=synthetic:images")
    with pytest.raises(ConfigError, match="set model.views"):
        _config(tmp_path, "model.views=0")
    with pytest.raises(ConfigError, match="view_pooling"):
        _config(tmp_path, "model.view_pooling=max")
    with pytest.raises(ConfigError, match="data.synthetic.views"):
        _config(tmp_path, "data.synthetic.views=4")
    with pytest.raises(ConfigError, match="model.views"):
        _config(tmp_path, "model.views=-1")
