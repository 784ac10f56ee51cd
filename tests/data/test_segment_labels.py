"""The segment preference-label reader: both layouts, windows into longer rows, and bad rows counted by
reason with the file and line named."""
import json

import numpy as np
import pytest

from diffalign.data.segment_labels import SKIP_REASONS, read_segment_labels, write_segment_labels
from diffalign.data.types import PreferenceDataError


def _segments(n=4, T=6, D=3):
    return np.arange(n * T * D, dtype=np.float32).reshape(n, T, D)


def _write(tmp_path, rows, name="labels.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_jsonl_layout_indices_windows_and_ties(tmp_path):
    seg = _segments()
    np.savez(tmp_path / "segments.npz", segments=seg)
    long = np.concatenate([seg, seg], axis=1)                  # rows of 12 steps, windows of 6
    np.savez(tmp_path / "episodes.npz", segments=long)
    path = _write(tmp_path, [{"a": 0, "b": 3, "attribute": "speed", "label": 1},
                             "",
                             {"a": [1, 2, 8], "b": [2, 6, 12], "attribute": "jump_height", "label": 0.5,
                              "segments": "episodes.npz"}])
    prefs = read_segment_labels(path)
    assert len(prefs) == 2 and prefs.attributes == ["speed", "jump_height"]
    assert prefs.labels.tolist() == [1.0, 0.5]
    np.testing.assert_array_equal(prefs.a[0].numpy(), seg[0])
    np.testing.assert_array_equal(prefs.b[0].numpy(), seg[3])
    np.testing.assert_array_equal(prefs.a[1].numpy(), long[1, 2:8])
    np.testing.assert_array_equal(prefs.b[1].numpy(), long[2, 6:12])
    assert (prefs.report.rows, prefs.report.kept, prefs.report.ties, prefs.report.skipped) == (2, 2, 1, 0)


def test_bad_rows_counted_by_reason_naming_file_and_line(tmp_path):
    np.savez(tmp_path / "segments.npz", segments=_segments())
    np.savez(tmp_path / "short.npz", segments=_segments(T=4))
    nan = _segments()
    nan[2, 1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", segments=nan)
    good = {"a": 0, "b": 1, "attribute": "speed", "label": 0}
    rows = [good,                                                            # line 1: kept
            "{not json",                                                     # 2 malformed
            {"a": 0, "b": 1, "label": 1},                                    # 3 malformed (no attribute)
            {**good, "label": 2},                                            # 4 bad_label
            {**good, "label": True},                                         # 5 bad_label
            {**good, "b": 9},                                                # 6 bad_index
            {**good, "a": [0, 4, 9]},                                        # 7 bad_index (past the 6 steps)
            {**good, "attribute": "colour"},                                 # 8 unknown_attribute
            {**good, "segments": "short.npz"},                               # 9 shape_mismatch
            {**good, "b": 2, "segments": "nan.npz"},                         # 10 non_finite
            {**good, "segments": "absent.npz"},                              # 11 missing_file
            {**good, "a": "0"}]                                              # 12 malformed (ref type)
    path = _write(tmp_path, rows)
    prefs = read_segment_labels(path, attributes=["speed", "jump_height"])
    r = prefs.report
    counts = {reason: getattr(r, reason) for reason in SKIP_REASONS}
    assert counts == {"malformed": 3, "bad_label": 2, "bad_index": 2, "unknown_attribute": 1, "shape_mismatch": 1,
                      "non_finite": 1, "missing_file": 1}
    assert (r.rows, r.kept, r.skipped) == (12, 1, 11)
    assert any("labels.jsonl line 2" in e for e in r.examples["malformed"])
    assert r.examples["bad_label"][0].startswith("labels.jsonl line 4: label 2")
    unknown = r.examples["unknown_attribute"][0]
    assert "labels.jsonl line 8" in unknown and "'colour'" in unknown
    assert "absent.npz" in r.examples["missing_file"][0]
    assert "11 skipped" not in r.summary() and "2 bad label" in r.summary()


def test_pairs_npz_layout_and_its_bad_pairs(tmp_path):
    a, b = _segments(5), _segments(5)[::-1].copy()
    a[3, 0, 0] = np.inf
    np.savez(tmp_path / "pairs.npz", a=a, b=b, attribute=np.array(["speed"] * 4 + ["energy"]),
             label=np.array([1.0, 0.0, 0.3, 0.5, 1.0]))
    prefs = read_segment_labels(str(tmp_path / "pairs.npz"), attributes=["speed"])
    assert prefs.labels.tolist() == [1.0, 0.0] and len(prefs) == 2
    r = prefs.report
    assert (r.bad_label, r.non_finite, r.unknown_attribute, r.kept) == (1, 1, 1, 2)
    assert r.examples["bad_label"] == ["pairs.npz pair 2: label 0.3 is not 0, 0.5 or 1"]
    np.savez(tmp_path / "broken.npz", a=a, b=b)
    with pytest.raises(PreferenceDataError, match="missing \\['attribute', 'label'\\]"):
        read_segment_labels(str(tmp_path / "broken.npz"))


def test_nothing_usable_and_missing_file_are_errors(tmp_path):
    with pytest.raises(PreferenceDataError, match="is not a file"):
        read_segment_labels(str(tmp_path / "none.jsonl"))
    path = _write(tmp_path, [{"a": 0, "b": 1, "attribute": "speed", "label": 1}])
    with pytest.raises(PreferenceDataError, match="no usable labelled segment pairs.*1 missing file"):
        read_segment_labels(path)


def test_writer_round_trip_and_max_records(tmp_path):
    seg = _segments(3)
    path = write_segment_labels(str(tmp_path / "out"), seg, [(0, 1), ((2, 0, 6), 1)], ["speed", "energy"], [1, 0.5])
    prefs = read_segment_labels(path)
    assert prefs.attributes == ["speed", "energy"] and prefs.labels.tolist() == [1.0, 0.5]
    np.testing.assert_array_equal(prefs.a[1].numpy(), seg[2])
    assert len(read_segment_labels(path, max_records=1)) == 1
    with pytest.raises(ValueError, match="differ in number"):
        write_segment_labels(str(tmp_path / "x"), seg, [(0, 1)], ["speed"], [1, 0])
