"""The editing_jsonl reader (pairs of edits, binary feedback on one edit): what it keeps, every bad line counted by
reason with its file and line, and its registration as the editing modality's ``data.format``."""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from diffalign import registry  # noqa: E402
from diffalign.data.types import PreferenceDataError  # noqa: E402
from diffalign.modalities.editing import load_editing_preferences  # noqa: E402


def write_images(folder, names):
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(folder / name)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_pairs_keep_the_preferred_edit_and_the_input_as_the_item(tmp_path):
    write_images(tmp_path, ["in.png", "a.png", "b.png"])
    path = write_jsonl(tmp_path / "edits.jsonl", [
        {"instruction": "make it red", "input": "in.png", "edit_0": "a.png", "edit_1": "b.png", "label": 0},
        {"instruction": " add a hat ", "input": "in.png", "edit_0": "a.png", "edit_1": "b.png", "label": 1},
        {"instruction": "make it red", "input": "in.png", "edit_0": "b.png", "edit_1": "a.png", "label": 1}])
    data = load_editing_preferences(path)
    assert data.kind == "pairs" and len(data) == 3 and data.report.kept == 3 and data.report.skipped == 0
    first, second, third = data.pairs
    assert third.prompt == first.prompt and third.chosen == first.chosen
    assert first.prompt == {"text": "make it red", "image": str(tmp_path / "in.png")}  # resolved against the file
    assert (first.chosen, first.rejected) == (str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert (second.chosen, second.rejected) == (str(tmp_path / "b.png"), str(tmp_path / "a.png"))
    assert second.prompt["text"] == "add a hat"
    assert data.prompts == [first.prompt, second.prompt]  # mapping prompts, distinct, in first-seen order
    labels = data.as_labels()  # KTO splits each pair into a desirable and an undesirable edit
    assert [(s.sample, s.desirable) for s in labels[:2]] == [(first.chosen, True), (first.rejected, False)]


def test_binary_feedback_rows_are_labelled_edits(tmp_path):
    write_images(tmp_path, ["in.png", "a.png"])
    path = write_jsonl(tmp_path / "fb.jsonl", [
        {"instruction": "make it red", "input": "in.png", "edit": "a.png", "desirable": True},
        {"instruction": "make it blue", "input": "in.png", "edit": "a.png", "desirable": False},
        {"instruction": "make it red", "input": "in.png", "edit_0": "a.png", "edit_1": "a.png", "label": 0}])
    with pytest.warns(UserWarning, match="1 malformed"):
        data = load_editing_preferences(path)
    assert data.kind == "labels" and [s.desirable for s in data.labels] == [True, False]
    assert data.labels[1].prompt == {"text": "make it blue", "image": str(tmp_path / "in.png")}
    assert "fb.jsonl line 3" in data.report.examples["malformed"][0]  # a pair in a file of single edits


def test_bad_lines_are_counted_by_reason_with_file_and_line(tmp_path):
    write_images(tmp_path, ["in.png", "a.png", "b.png"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good = {"instruction": "make it red", "input": "in.png", "edit_0": "a.png", "edit_1": "b.png", "label": 0}
    path = write_jsonl(tmp_path / "edits.jsonl", [
        good,
        "{not json",                                        # line 2: malformed
        json.dumps([1, 2]),                                 # line 3: malformed (not an object)
        {**good, "instruction": ""},                        # line 4: missing instruction
        {**good, "label": 0.5},                             # line 5: a tie
        {**good, "label": 2},                               # line 6: malformed label
        {**good, "label": True},                            # line 7: a bool is no label
        {**good, "edit_1": "broken.png"},                   # line 8: undecodable
        {**good, "input": "missing.png"},                   # line 9: undecodable (missing file)
        {k: v for k, v in good.items() if k != "edit_0"},   # line 10: malformed (no edit_0)
        ""])                                                # blank: not a record
    with pytest.warns(UserWarning, match="edits.jsonl"):
        data = load_editing_preferences(path)
    r = data.report
    assert (r.rows, r.kept, r.malformed, r.missing_caption, r.ties, r.undecodable) == (10, 1, 5, 1, 1, 2)
    assert r.examples["malformed"][0].startswith("edits.jsonl line 2")
    assert r.examples["ties"] == ["edits.jsonl line 5"]
    assert "line 8" in r.examples["undecodable"][0] and "line 9" in r.examples["undecodable"][1]
    assert "'label' must be 0, 1" in r.examples["malformed"][2]
    # verify=False skips decoding: the broken and missing images are kept (counted only when read)
    assert load_editing_preferences(path, verify=False).report.undecodable == 0
    assert load_editing_preferences(path, max_records=1).report.rows == 1


def test_a_file_with_nothing_usable_is_an_error_naming_it(tmp_path):
    with pytest.raises(PreferenceDataError, match="does not exist"):
        load_editing_preferences(str(tmp_path / "none.jsonl"))
    path = write_jsonl(tmp_path / "ties.jsonl", [{"instruction": "x", "input": "i.png", "edit_0": "a.png",
                                                  "edit_1": "b.png", "label": 0.5}])
    with pytest.raises(PreferenceDataError, match="ties.jsonl.*1 records -> 0 usable"):
        load_editing_preferences(path)


def test_the_modality_entry_registers_the_reader_and_its_reward():
    entry = registry.modalities["editing"]
    assert entry.readers()["editing_jsonl"] is load_editing_preferences
    assert "edit_tint" in entry.rewards()


def test_ai_feedback_rows_on_edits_are_ordered_pairs_with_rewards(tmp_path):
    """What `diffalign feedback` writes for an editing model (mapping prompts, chosen/rejected files, rewards) reads
    back as pairs of the edit item; a half-scored row and a row whose prompt is no edit item are counted."""
    from diffalign.inference.feedback import write_feedback
    import torch
    write_images(tmp_path, ["in.png"])
    item = {"text": "make it red", "image": str(tmp_path / "in.png")}
    edits = [Image.new("RGB", (8, 8), (200, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 200))]
    save = lambda img, folder, name: (img.save(os.path.join(folder, name + ".png")), name + ".png")[1]  # noqa: E731
    path = write_feedback(str(tmp_path / "fb"), edits, [item, item], torch.tensor([0.9, 0.1], dtype=torch.float64), [(0, 1)], save=save)
    with open(path, "a") as f:
        row = json.loads(open(path).readline())
        f.write(json.dumps({**row, "rejected_reward": None}) + "\n")          # half-scored
        f.write(json.dumps({**row, "prompt": "make it red"}) + "\n")          # not an edit item
    with pytest.warns(UserWarning, match="1 malformed"):
        data = load_editing_preferences(path)
    (pair,) = data.pairs
    assert pair.prompt == item and (pair.chosen_reward, pair.rejected_reward) == (0.9, 0.1) and data.has_rewards
    assert Image.open(pair.chosen).getpixel((0, 0)) == (200, 0, 0)
    assert data.report.missing_caption == 1 and "rejected_reward" in data.report.examples["malformed"][0]
