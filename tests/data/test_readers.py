"""Readers on small files written here in each public layout, including the bad-row cases."""
import io
import json
import os

import pytest
import torch
from PIL import Image

from diffalign.data import PreferenceDataError, load_preference_data, load_sample


def png(path, color):
    Image.new("RGB", (8, 8), color).save(path)
    return str(path)


def jpeg_bytes(color):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def color_of(sample):
    return load_sample(sample).getpixel((0, 0))


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_jsonl_pairs_with_relative_paths_and_bad_rows(tmp_path):
    os.makedirs(tmp_path / "img")
    png(tmp_path / "img" / "w.png", (255, 0, 0))
    png(tmp_path / "img" / "l.png", (0, 0, 255))
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "a cat", "chosen": "img/w.png", "rejected": "img/l.png", "chosen_reward": 2, "rejected_reward": 1},
        {"prompt": "", "chosen": "img/w.png", "rejected": "img/l.png"},            # missing caption
        {"prompt": "a dog", "chosen": "img/broken.png", "rejected": "img/l.png"},  # undecodable
        {"prompt": "a dog", "chosen": "img/missing.png", "rejected": "img/l.png"},  # undecodable (absent)
        {"prompt": "a dog", "chosen": "img/w.png"},                                # malformed
        "{not json",                                                                # malformed
    ])
    with pytest.warns(UserWarning, match="1 missing caption"):
        ds = load_preference_data(path)
    r = ds.report
    assert (r.layout, r.rows, r.kept, r.missing_caption, r.undecodable, r.malformed, r.ties) == \
        ("jsonl", 6, 1, 1, 2, 2, 0)
    (pair,) = ds.pairs
    assert pair.prompt == "a cat" and os.path.isabs(pair.chosen)
    assert color_of(pair.chosen) == (255, 0, 0) and color_of(pair.rejected) == (0, 0, 255)
    assert (pair.chosen_reward, pair.rejected_reward) == (2.0, 1.0) and ds.has_rewards
    assert "2 undecodable" in r.summary() and "broken.png" in r.summary()


def test_pair_rewards_both_numbers_or_both_absent():
    from diffalign.data.types import pair_rewards
    assert pair_rewards({}) == (None, None)
    assert pair_rewards({"chosen_reward": 2, "rejected_reward": -0.5}) == (2.0, -0.5)
    for bad in ({"chosen_reward": 1.0}, {"chosen_reward": True, "rejected_reward": 0.0},
                {"chosen_reward": "1", "rejected_reward": 0.0}, {"chosen_reward": float("nan"), "rejected_reward": 0.0}):
        with pytest.raises(ValueError, match="chosen_reward"):
            pair_rewards(bad)


def test_jsonl_half_scored_pairs_are_malformed_and_mapping_prompts_stay_items(tmp_path):
    """A pair with one reward, or a reward that is not a number, is counted with its line (it used to raise, or to
    turn E2PO's soft labels off silently); a mapping prompt (diffalign feedback on structured items) is kept as the
    item, not its repr."""
    rows = [{"prompt": {"text": "hop", "start_seed": 3}, "chosen": [1.0], "rejected": [0.0],
             "chosen_reward": 1.0, "rejected_reward": 0.0},
            {"prompt": "p", "chosen": [1.0], "rejected": [0.0], "chosen_reward": 1.0},
            {"prompt": "p", "chosen": [1.0], "rejected": [0.0], "chosen_reward": "high", "rejected_reward": 0.0}]
    with pytest.warns(UserWarning, match="2 malformed"):
        ds = load_preference_data(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert ds.prompts == [{"text": "hop", "start_seed": 3}] and ds.has_rewards
    assert "pairs.jsonl record 1" in ds.report.examples["malformed"][0]
    assert "'high'" in ds.report.examples["malformed"][1]


def test_inline_vectors_and_folder_path(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": [1.0, 2.0], "rejected": [0.0, -1.0]}])
    ds = load_preference_data(str(tmp_path))  # a folder with one jsonl
    assert torch.equal(load_sample(ds.pairs[0].chosen), torch.tensor([1.0, 2.0]))
    assert ds.report.skipped == 0


def test_binary_feedback_and_pairs_as_labels(tmp_path):
    png(tmp_path / "a.png", (1, 2, 3))
    path = write_jsonl(tmp_path / "fb.jsonl", [
        {"prompt": "x", "image": "a.png", "desirable": True},
        {"prompt": "y", "image": "a.png", "desirable": False},
        {"prompt": "z", "image": "a.png", "desirable": "maybe"},  # malformed
    ])
    with pytest.warns(UserWarning):
        ds = load_preference_data(path)
    assert ds.kind == "labels" and [s.desirable for s in ds.labels] == [True, False]
    assert ds.report.malformed == 1
    pairs = load_preference_data(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": [1], "rejected": [2]}]))
    labels = pairs.as_labels()
    assert [(s.prompt, s.sample, s.desirable) for s in labels] == [("q", [1], True), ("q", [2], False)]


def test_pickapic_parquet_ties_and_bad_images(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    red, blue = jpeg_bytes((250, 0, 0)), jpeg_bytes((0, 0, 250))
    table = pa.table({
        "caption": ["first", "tie", None, "second", "broken"],
        "jpg_0": [red, red, red, red, b"\x00garbage"],
        "jpg_1": [blue, blue, blue, blue, blue],
        "label_0": [1.0, 0.5, 1.0, 0.0, 1.0],
        "label_1": [0.0, 0.5, 0.0, 1.0, 0.0],
    })
    os.makedirs(tmp_path / "shards")
    pq.write_table(table.slice(0, 3), tmp_path / "shards" / "train-0.parquet")
    pq.write_table(table.slice(3), tmp_path / "shards" / "train-1.parquet")
    with pytest.warns(UserWarning, match="1 ties"):
        ds = load_preference_data(str(tmp_path / "shards"))
    r = ds.report
    assert (r.layout, r.rows, r.kept, r.ties, r.missing_caption, r.undecodable) == ("pickapic", 5, 2, 1, 1, 1)
    first, second = ds.pairs
    assert first.prompt == "first" and color_of(first.chosen)[0] > 200   # label_0 = 1: jpg_0 wins
    assert second.prompt == "second" and color_of(second.chosen)[2] > 200  # label_1 = 1: jpg_1 wins
    with pytest.warns(UserWarning, match="1 ties"):
        single = load_preference_data(str(tmp_path / "shards" / "train-0.parquet"), format="pickapic")
    assert single.report.rows == 3


def test_hpdv2_rank_and_human_preference(tmp_path):
    paths = [png(tmp_path / f"{i}.png", (i * 60, 0, 0)) for i in range(4)]
    data = [
        {"prompt": "ranked", "image_path": ["0.png", "1.png", "2.png"], "rank": [2, 1, 2]},  # 2 pairs + 1 tie
        {"prompt": "train", "image_path": ["0.png", "3.png"], "human_preference": [0, 1]},
        {"prompt": "bad", "image_path": ["0.png", "nope.png"], "rank": [1, 2]},              # undecodable
        {"image_path": ["0.png", "1.png"], "rank": [1, 2]},                                  # missing caption
    ]
    (tmp_path / "test.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning):
        ds = load_preference_data(str(tmp_path / "test.json"))
    r = ds.report
    assert (r.layout, r.rows, r.kept, r.ties, r.undecodable, r.missing_caption) == ("hpdv2", 4, 3, 1, 1, 1)
    got = {(p.prompt, os.path.basename(p.chosen), os.path.basename(p.rejected)) for p in ds.pairs}
    assert got == {("ranked", "1.png", "0.png"), ("ranked", "1.png", "2.png"), ("train", "3.png", "0.png")}
    assert paths


def test_imagerewarddb_groups_decomposed_into_all_pairs(tmp_path):
    for i in range(4):
        png(tmp_path / f"{i}.png", (0, i * 60, 0))
    rows = [{"prompt_id": "a", "prompt": "four", "image_path": f"{i}.png", "rank": rank}
            for i, rank in enumerate([3, 1, 4, 2])]
    rows += [{"prompt_id": "b", "prompt": "tied", "image_path": "0.png", "rank": 1},
             {"prompt_id": "b", "prompt": "tied", "image_path": "1.png", "rank": 1},
             {"prompt_id": "c", "prompt": "x", "image_path": "0.png"}]  # malformed: no rank
    (tmp_path / "meta.json").write_text(json.dumps(rows))
    with pytest.warns(UserWarning):
        ds = load_preference_data(str(tmp_path / "meta.json"))
    r = ds.report
    assert (r.layout, r.kept, r.ties, r.malformed) == ("imagerewarddb", 6, 1, 1)  # C(4,2) = 6 pairs
    order = {"1.png": 1, "3.png": 2, "0.png": 3, "2.png": 4}
    for p in ds.pairs:
        assert order[os.path.basename(p.chosen)] < order[os.path.basename(p.rejected)]
    grouped = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "g", "images": ["0.png", "1.png", "2.png"],
                                                  "ranks": [1, 2, 3]}])
    assert load_preference_data(grouped, format="imagerewarddb").report.kept == 3


def test_no_usable_pairs_is_an_error_naming_the_file(tmp_path):
    path = write_jsonl(tmp_path / "empty_pairs.jsonl", [{"prompt": "", "chosen": [1], "rejected": [2]}])
    with pytest.raises(PreferenceDataError, match="empty_pairs.jsonl.*1 missing caption"):
        load_preference_data(path)
    with pytest.raises(PreferenceDataError, match="does not exist"):
        load_preference_data(str(tmp_path / "nothing.jsonl"))
    (tmp_path / "odd.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(PreferenceDataError, match="odd.json.*data.format"):
        load_preference_data(str(tmp_path / "odd.json"))
    with pytest.raises(PreferenceDataError, match="data.format must be one of"):
        load_preference_data(path, format="csv")


def test_hub_id_needs_datasets_or_reads_through_it(tmp_path, monkeypatch):
    """A hub id goes through datasets.load_dataset (faked here: nothing downloads in tests)."""
    import sys
    import types
    red, blue = jpeg_bytes((250, 0, 0)), jpeg_bytes((0, 0, 250))
    rows = [{"caption": "c", "jpg_0": red, "jpg_1": blue, "label_0": 0, "label_1": 1},
            {"caption": "t", "jpg_0": red, "jpg_1": blue, "label_0": 0.5, "label_1": 0.5}]

    class FakeDS(list):
        def select(self, idx):
            return FakeDS(self[i] for i in idx)
    calls = []
    fake = types.SimpleNamespace(load_dataset=lambda name, split: calls.append((name, split)) or FakeDS(rows))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.warns(UserWarning, match="1 ties"):
        ds = load_preference_data("someone/pickapic_v2", split="validation")
    assert calls == [("someone/pickapic_v2", "validation")]
    assert ds.report.layout == "pickapic" and color_of(ds.pairs[0].chosen)[2] > 200
    # streaming reads only the first max_records rows
    streamed = []
    fake.load_dataset = lambda name, split, streaming: streamed.append(streaming) or iter(rows * 1000)
    ds = load_preference_data("someone/pickapic_v2", max_records=1, streaming=True)
    assert streamed == [True] and ds.report.rows == 1 and ds.report.kept == 1


def test_hub_imagerewarddb_rows_with_decoded_images(monkeypatch):
    """ImageRewardDB on the hub: per-image rows whose 'image' column datasets decodes to PIL images."""
    import sys
    import types
    imgs = [Image.new("RGB", (8, 8), (0, 0, 60 * i)) for i in range(3)]
    rows = [{"prompt_id": "p", "prompt": "three", "image": im, "rank": r} for im, r in zip(imgs, [2, 1, 3])]
    fake = types.SimpleNamespace(load_dataset=lambda name, split: rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ds = load_preference_data("someone/ImageRewardDB")
    assert ds.report.layout == "imagerewarddb" and ds.report.kept == 3 and ds.report.skipped == 0
    ranks = {60: 1, 0: 2, 120: 3}  # blue channel -> rank
    for p in ds.pairs:
        assert ranks[color_of(p.chosen)[2]] < ranks[color_of(p.rejected)[2]]


def test_jsonl_objects_counts_every_line_it_does_not_yield(tmp_path):
    from diffalign.data.types import LoadReport, jsonl_objects
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"a": 2}\n{"a": 3}\n')
    report = LoadReport(str(path), "test")
    rows = list(jsonl_objects(str(path), report))
    assert rows == [("rows.jsonl line 1", {"a": 1}), ("rows.jsonl line 5", {"a": 2}), ("rows.jsonl line 6", {"a": 3})]
    assert (report.rows, report.malformed) == (5, 2)
    assert "rows.jsonl line 3: not JSON" in report.examples["malformed"][0]
    assert report.examples["malformed"][1] == "rows.jsonl line 4: not a JSON object"
    capped = LoadReport(str(path), "test")
    assert [r["a"] for _, r in jsonl_objects(str(path), capped, max_records=2)] == [1]
    assert capped.rows == 2
