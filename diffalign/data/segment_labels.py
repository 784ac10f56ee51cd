"""Preference labels over pairs of trajectory segments (AlignDiff's "which of the two shows more X?").

Two layouts, both read by :func:`read_segment_labels`:

- **JSONL + segment file** (what annotators produce when they compare clips of a dataset). One object per
  line: ``{"a": REF, "b": REF, "attribute": "speed", "label": 1}`` where a REF is an index ``i`` into the
  segment array, or ``[i, start, stop]`` for steps ``start:stop`` of row ``i`` (indices into longer episodes);
  ``"segments": "file.npz"`` (relative to the JSONL's folder) picks the segment file for that row, default
  ``segments.npz`` beside the JSONL (or the reader's ``segments`` argument). A segment file is an ``.npz``
  holding ``segments``: (N, T, D) float (D = state + action values per step). Blank lines are skipped.
- **one .npz of pairs**: arrays ``a`` and ``b`` (P, T, D), ``attribute`` (P,) strings and ``label`` (P,).

``label``: 1 when segment ``a`` shows the attribute more strongly, 0 when ``b`` does, 0.5 when the annotator
finds them equal. Every segment of a file must have the same (T, D).

Rows that cannot be used are skipped and counted by reason in the report, each with a few examples naming
the file and line (or pair index): ``malformed`` (not a JSON object, a missing or mistyped field),
``bad_label`` (not 0, 0.5 or 1), ``bad_index`` (a REF outside the segment array or its steps),
``unknown_attribute`` (not in the reader's ``attributes``, when given), ``shape_mismatch`` (a segment whose
(T, D) differs from the first one kept), ``non_finite`` (NaN/inf values), ``missing_file`` (a segment
file that does not exist or lacks ``segments``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from diffalign.data.types import LoadReport, PreferenceDataError

SEGMENTS_FORMAT = "segments"
DEFAULT_SEGMENTS_FILE = "segments.npz"
LABELS = (0.0, 0.5, 1.0)
SKIP_REASONS = ("malformed", "bad_label", "bad_index", "unknown_attribute", "shape_mismatch", "non_finite",
                "missing_file")


@dataclasses.dataclass
class SegmentLoadReport(LoadReport):
    """LoadReport with the segment layouts' reasons; ``ties`` counts kept 0.5 labels (not skipped)."""
    bad_label: int = 0
    bad_index: int = 0
    unknown_attribute: int = 0
    shape_mismatch: int = 0
    non_finite: int = 0
    missing_file: int = 0

    @property
    def skipped(self) -> int:
        return sum(getattr(self, r) for r in SKIP_REASONS)

    def summary(self) -> str:
        parts = [f"{self.source} ({self.layout}): {self.rows} rows -> {self.kept} labelled pairs ({self.ties} ties)"]
        for reason in SKIP_REASONS:
            n = getattr(self, reason)
            if n:
                parts.append(f"{n} {reason.replace('_', ' ')} (e.g. {'; '.join(self.examples.get(reason, []))})")
        return ", ".join(parts)


@dataclasses.dataclass
class SegmentPreferences:
    """P labelled pairs: segments ``a``, ``b`` (P, T, D) float32, ``attributes`` (P names), ``labels`` (P,)."""
    a: torch.Tensor
    b: torch.Tensor
    attributes: List[str]
    labels: torch.Tensor
    report: SegmentLoadReport

    def __len__(self) -> int:
        return len(self.attributes)


def _label(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if float(value) in LABELS else None


class _Collector:
    """Checks pairs one by one and keeps the usable ones (the shared part of both layouts)."""

    def __init__(self, report: SegmentLoadReport, attributes: Optional[Sequence[str]]):
        self.report, self.known = report, (set(attributes) if attributes is not None else None)
        self.a: List[np.ndarray] = []
        self.b: List[np.ndarray] = []
        self.names: List[str] = []
        self.labels: List[float] = []
        self.shape: Optional[Tuple[int, ...]] = None

    def add(self, where: str, attribute: Any, label: Any, seg_a: np.ndarray, seg_b: np.ndarray) -> None:
        r = self.report
        if not isinstance(attribute, str) or not attribute:
            return r.skip("malformed", f"{where}: field 'attribute' must be a non-empty string, got {attribute!r}")
        if self.known is not None and attribute not in self.known:
            return r.skip("unknown_attribute", f"{where}: attribute {attribute!r} is not one of {sorted(self.known)}")
        y = _label(label)
        if y is None:
            return r.skip("bad_label", f"{where}: label {label!r} is not 0, 0.5 or 1")
        for seg in (seg_a, seg_b):
            if seg.ndim != 2 or (self.shape is not None and seg.shape != self.shape):
                return r.skip("shape_mismatch", f"{where}: segment shape {seg.shape}, expected "
                                                f"{self.shape or '(T, D)'}")
            if not np.isfinite(seg).all():
                return r.skip("non_finite", f"{where}: a segment holds NaN or inf")
        self.shape = seg_a.shape
        self.a.append(seg_a)
        self.b.append(seg_b)
        self.names.append(attribute)
        self.labels.append(y)
        r.ties += y == 0.5

    def result(self, path: str) -> SegmentPreferences:
        self.report.kept = len(self.labels)
        if not self.labels:
            raise PreferenceDataError(f"no usable labelled segment pairs in {path}: {self.report.summary()}")
        as_t = lambda s: torch.from_numpy(np.stack(s).astype(np.float32))  # noqa: E731
        return SegmentPreferences(as_t(self.a), as_t(self.b), self.names,
                                  torch.tensor(self.labels, dtype=torch.float32), self.report)


def _load_segments(path: str) -> np.ndarray:
    with np.load(path) as f:
        if "segments" not in f:
            raise KeyError(f"{path} has no array 'segments' (it holds {sorted(f.files)})")
        arr = np.asarray(f["segments"])
    if arr.ndim != 3:
        raise KeyError(f"{path}: 'segments' must be (N, T, D), got shape {arr.shape}")
    return arr


def _ref(value: Any, segments: np.ndarray, where: str, field: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(segment, None) or (None, (reason, detail))."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, list) and len(value) == 3
                                                                  and all(isinstance(v, int) and not isinstance(v, bool)
                                                                          for v in value))):
        return None, ("malformed", f"{where}: field {field!r} must be an index or [index, start, stop], got {value!r}")
    i, start, stop = (value, 0, segments.shape[1]) if isinstance(value, int) else value
    if not 0 <= i < segments.shape[0] or not 0 <= start < stop <= segments.shape[1]:
        return None, ("bad_index", f"{where}: field {field!r} = {value!r} is outside the {segments.shape[0]} segments "
                                   f"of {segments.shape[1]} steps")
    return segments[i, start:stop], None


def _read_jsonl(path: str, segments: Optional[str], attributes, max_records: Optional[int]) -> SegmentPreferences:
    root, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    report = SegmentLoadReport(path, SEGMENTS_FORMAT)
    out = _Collector(report, attributes)
    files: Dict[str, Any] = {}   # path -> array, or the reason it cannot be read
    default = segments or os.path.join(root, DEFAULT_SEGMENTS_FILE)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if max_records is not None and report.rows >= max_records:
            break
        report.rows += 1
        where = f"{name} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            report.skip("malformed", f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict) or not {"a", "b", "attribute", "label"} <= set(row):
            report.skip("malformed", f"{where}: expected an object with fields a, b, attribute, label")
            continue
        seg_path = row.get("segments", default)
        if not isinstance(seg_path, str):
            report.skip("malformed", f"{where}: field 'segments' must be a file name, got {seg_path!r}")
            continue
        seg_path = seg_path if os.path.isabs(seg_path) else os.path.join(root, seg_path)
        if seg_path not in files:
            try:
                files[seg_path] = _load_segments(seg_path)
            except (OSError, KeyError, ValueError) as exc:
                files[seg_path] = str(exc).strip("'\"")
        arr = files[seg_path]
        if isinstance(arr, str):
            report.skip("missing_file", f"{where}: segment file {seg_path}: {arr}")
            continue
        picked = []
        for field in ("a", "b"):
            seg, bad = _ref(row[field], arr, where, field)
            if bad is not None:
                report.skip(*bad)
                break
            picked.append(seg)
        if len(picked) == 2:
            out.add(where, row["attribute"], row["label"], *picked)
    return out.result(path)


def _read_pairs_npz(path: str, attributes, max_records: Optional[int]) -> SegmentPreferences:
    name = os.path.basename(path)
    report = SegmentLoadReport(path, SEGMENTS_FORMAT)
    with np.load(path) as f:
        missing = [k for k in ("a", "b", "attribute", "label") if k not in f]
        if missing:
            raise PreferenceDataError(f"{path}: a pairs .npz needs arrays a, b, attribute, label; missing {missing}")
        a, b, attr, label = (np.asarray(f[k]) for k in ("a", "b", "attribute", "label"))
    p = len(label)
    if not (len(a) == len(b) == len(attr) == p) or a.ndim != 3 or b.ndim != 3:
        raise PreferenceDataError(f"{path}: a and b must be (P, T, D) and attribute, label (P,) with one P; got "
                                  f"{a.shape}, {b.shape}, {attr.shape}, {label.shape}")
    out = _Collector(report, attributes)
    for i in range(p if max_records is None else min(p, max_records)):
        report.rows += 1
        y = label[i].item()
        out.add(f"{name} pair {i}", str(attr[i]), y if not (isinstance(y, float) and math.isnan(y)) else None,
                a[i], b[i])
    return out.result(path)


def read_segment_labels(path: str, segments: Optional[str] = None, attributes: Optional[Sequence[str]] = None,
                        max_records: Optional[int] = None) -> SegmentPreferences:
    """Labelled segment pairs from a ``.jsonl`` (+ segment file) or a pairs ``.npz`` (module docstring).

    ``segments``: the default segment file for JSONL rows without a ``"segments"`` field; ``attributes``:
    the attribute names to keep (others are counted as unknown_attribute)."""
    if not os.path.isfile(path):
        raise PreferenceDataError(f"segment preference labels {path!r} is not a file (a .jsonl or a .npz of pairs)")
    if path.endswith(".npz"):
        return _read_pairs_npz(path, attributes, max_records)
    return _read_jsonl(path, segments, attributes, max_records)


def write_segment_labels(directory: str, segments: Any, pairs: Sequence[Tuple[Any, Any]], attributes: Sequence[str],
                         labels: Sequence[float], name: str = "labels.jsonl") -> str:
    """Write the JSONL layout: ``directory/segments.npz`` and ``directory/<name>``; returns the JSONL's path.

    ``pairs``: (ref a, ref b) per label, each an index or (index, start, stop)."""
    if not (len(pairs) == len(attributes) == len(labels)):
        raise ValueError(f"{len(pairs)} pairs, {len(attributes)} attributes and {len(labels)} labels differ in number")
    os.makedirs(directory, exist_ok=True)
    np.savez_compressed(os.path.join(directory, DEFAULT_SEGMENTS_FILE),
                        segments=torch.as_tensor(segments).detach().cpu().float().numpy())
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        for (ra, rb), attr, y in zip(pairs, attributes, labels):
            ref = lambda r: int(r) if np.ndim(r) == 0 else [int(v) for v in r]  # noqa: E731
            f.write(json.dumps({"a": ref(ra), "b": ref(rb), "attribute": attr, "label": float(y)}) + "\n")
    return path
