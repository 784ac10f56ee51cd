"""Readers for the public preference-data layouts (survey Table 2) and a plain JSONL.

Layouts (``data.format``; detected from the file when not given):

- ``jsonl``: one object per line, ``{"prompt", "chosen", "rejected"}``; chosen/rejected are image paths
  (relative to the file's folder), or inline numeric vectors (toy modality). Optional
  ``chosen_reward`` / ``rejected_reward`` (what AI feedback writes; E2PO's soft labels read them).
- ``binary``: one object per line, ``{"prompt", "image", "desirable"}`` (KTO's binary feedback).
- ``pickapic``: Pick-a-Pic parquet rows ``caption, jpg_0, jpg_1, label_0, label_1`` (image bytes; labels
  1/0, or 0.5/0.5 for a tie). A folder of parquet shards is read shard by shard.
- ``hpdv2``: HPD v2 json, a list of ``{"prompt", "image_path": [...], "rank": [...]}`` (rank 1 = best;
  the test split) or ``"human_preference": [...]`` (1 marks the preferred image; the train split).
  Every pair of images with different ranks becomes one pair, as the HPD v2 pairwise preferences are
  derived from the rankings (survey 5.1.1); equal ranks are ties.
- ``imagerewarddb``: ImageRewardDB-style metadata, a list of per-image rows ``{"prompt_id", "prompt",
  "image_path" (or a hub dataset's "image" column), "rank"}`` (rank 1 = best) grouped by prompt, or
  groups ``{"prompt", "images": [...], "ranks": [...]}``. A ranking of K images is decomposed into its C(K, 2) pairwise comparisons, the
  decomposition of listwise feedback into pairs of the survey's Plackett-Luce discussion (section 3.1).

A hub id (``owner/name``, not an existing path) is read through ``datasets.load_dataset`` (installed
separately: ``pip install datasets``) and its rows go through the same row parser.

Every record that cannot be used is counted by reason in a :class:`LoadReport` (ties, undecodable
images, missing captions, malformed rows), printed as a warning at load; a source with no usable
pair is a :class:`PreferenceDataError` naming it.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from diffalign.data.types import (LabelledSample, LoadReport, PreferenceDataError, PreferenceDataset, PreferencePair,
                                  check_sample, pair_rewards, resolve_path)

FORMATS = ("jsonl", "binary", "pickapic", "hpdv2", "imagerewarddb")


def _caption(value: Any):
    """A row's prompt: stripped text, or a structured item (a mapping, as ``diffalign feedback`` writes for
    modalities whose prompts are mappings) kept as it is rather than turned into its repr. None when empty."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value or None
    text = str(value).strip()
    return text or None


def _sample_ref(value: Any, root: Optional[str]):
    """Resolve relative paths against the source folder so a pair is self-contained."""
    if isinstance(value, str):
        return resolve_path(value, root)
    return value


class _Builder:
    """Collects pairs or labels, verifying samples and counting every skip."""

    def __init__(self, source: str, layout: str, root: Optional[str], verify: bool):
        self.report = LoadReport(source, layout)
        self.root, self.verify = root, verify
        self.pairs: List[PreferencePair] = []
        self.labels: List[LabelledSample] = []

    def _bad(self, refs, where: str) -> bool:
        if not self.verify:
            return False
        for ref in refs:
            why = check_sample(ref, None)
            if why is not None:
                self.report.skip("undecodable", f"{where}: {why}")
                return True
        return False

    def pair(self, prompt, chosen, rejected, where: str, chosen_reward=None, rejected_reward=None, checked=False):
        """checked: the samples were already verified (a ranked group checks each image once). The rewards were
        checked by ``pair_rewards``."""
        chosen, rejected = _sample_ref(chosen, self.root), _sample_ref(rejected, self.root)
        if not checked and self._bad([chosen, rejected], where):
            return
        self.pairs.append(PreferencePair(prompt, chosen, rejected, chosen_reward, rejected_reward))
        self.report.kept += 1

    def label(self, prompt, sample, desirable: bool, where: str):
        sample = _sample_ref(sample, self.root)
        if self._bad([sample], where):
            return
        self.labels.append(LabelledSample(prompt, sample, bool(desirable)))
        self.report.kept += 1

    def finish(self) -> PreferenceDataset:
        report = self.report
        if report.kept == 0:
            raise PreferenceDataError(f"no usable preference data in {report.source}: {report.summary()}")
        if report.skipped:
            warnings.warn(f"preference data: {report.summary()}", stacklevel=3)
        return PreferenceDataset(self.pairs, self.labels, report)


# ---- per-layout row parsers (rows are dicts; shared by files and hub datasets) -------------------------
def _jsonl_row(b: _Builder, row: Dict[str, Any], where: str) -> None:
    prompt = _caption(row.get("prompt", row.get("caption")))
    if prompt is None:
        b.report.skip("missing_caption", where)
        return
    if row.get("chosen") is None or row.get("rejected") is None:
        b.report.skip("malformed", f"{where}: needs 'chosen' and 'rejected'")
        return
    try:
        rewards = pair_rewards(row)
    except ValueError as exc:
        b.report.skip("malformed", f"{where}: {exc}")
        return
    b.pair(prompt, row["chosen"], row["rejected"], where, *rewards)


def _binary_row(b: _Builder, row: Dict[str, Any], where: str) -> None:
    prompt = _caption(row.get("prompt", row.get("caption")))
    if prompt is None:
        b.report.skip("missing_caption", where)
        return
    desirable = row.get("desirable", row.get("label"))
    if row.get("image") is None or not isinstance(desirable, (bool, int, float)) or desirable not in (0, 1):
        b.report.skip("malformed", f"{where}: needs 'image' and a boolean 'desirable'")
        return
    b.label(prompt, row["image"], bool(desirable), where)


def _pickapic_row(b: _Builder, row: Dict[str, Any], where: str) -> None:
    prompt = _caption(row.get("caption"))
    if prompt is None:
        b.report.skip("missing_caption", where)
        return
    try:
        l0, l1 = float(row["label_0"]), float(row["label_1"])
    except (KeyError, TypeError, ValueError):
        b.report.skip("malformed", f"{where}: needs numeric label_0 and label_1")
        return
    if l0 == l1:
        b.report.skip("ties", f"{where}: label_0 = label_1 = {l0}")
        return
    images = row.get("jpg_0"), row.get("jpg_1")
    if images[0] is None or images[1] is None:
        b.report.skip("undecodable", f"{where}: jpg_0/jpg_1 missing")
        return
    win = 0 if l0 > l1 else 1
    b.pair(prompt, images[win], images[1 - win], where)


def _ranked_group(b: _Builder, prompt, images: List[Any], ranks: List[float], where: str) -> None:
    """All C(K, 2) pairs of a ranking (lower rank = preferred); equal ranks are ties."""
    if prompt is None:
        b.report.skip("missing_caption", where)
        return
    if len(images) != len(ranks) or len(images) < 2:
        b.report.skip("malformed", f"{where}: {len(images)} images for {len(ranks)} ranks")
        return
    bad = set()
    if b.verify:
        for i, ref in enumerate(images):
            why = check_sample(_sample_ref(ref, b.root), None)
            if why is not None:
                bad.add(i)
    for i, j in itertools.combinations(range(len(images)), 2):
        at = f"{where} images {i},{j}"
        if i in bad or j in bad:
            b.report.skip("undecodable", f"{at}: image {i if i in bad else j} does not decode")
            continue
        if ranks[i] == ranks[j]:
            b.report.skip("ties", f"{at}: equal rank {ranks[i]}")
            continue
        win, lose = (i, j) if ranks[i] < ranks[j] else (j, i)
        b.pair(prompt, images[win], images[lose], at, checked=True)


def _hpdv2_row(b: _Builder, row: Dict[str, Any], where: str) -> None:
    images = row.get("image_path", row.get("image"))
    if not isinstance(images, list):
        b.report.skip("malformed", f"{where}: 'image_path' must be a list")
        return
    if "rank" in row:
        ranks = row["rank"]
    elif "human_preference" in row:  # 1 marks the preferred image: rank it first
        ranks = [1 if v else 2 for v in row["human_preference"]] if isinstance(row["human_preference"], list) else None
    else:
        ranks = None
    if not isinstance(ranks, list):
        b.report.skip("malformed", f"{where}: needs a 'rank' or 'human_preference' list")
        return
    _ranked_group(b, _caption(row.get("prompt")), images, ranks, where)


def _imagereward_groups(b: _Builder, rows: List[Dict[str, Any]], where: str) -> None:
    groups: Dict[Any, List[Tuple[int, Dict[str, Any]]]] = {}
    for i, row in enumerate(rows):
        if "images" in row:  # already a group
            b.report.rows += 1
            _ranked_group(b, _caption(row.get("prompt")), list(row.get("images") or []), list(row.get("ranks") or []),
                          f"{where} group {i}")
            continue
        b.report.rows += 1
        key = row.get("prompt_id", row.get("prompt"))
        if key is None:
            b.report.skip("missing_caption", f"{where} row {i}")
            continue
        image = row.get("image_path", row.get("image"))  # a path, or the hub dataset's image column
        if image is None or not isinstance(row.get("rank"), (int, float)):
            b.report.skip("malformed", f"{where} row {i}: needs 'image_path' (or 'image') and a numeric 'rank'")
            continue
        groups.setdefault(key, []).append((i, dict(row, image_path=image)))
    for key, members in groups.items():
        prompt = next((p for p in (_caption(r.get("prompt")) for _, r in members) if p is not None), None)
        _ranked_group(b, prompt, [r["image_path"] for _, r in members], [r["rank"] for _, r in members],
                      f"{where} prompt {key!r}")


ROW_PARSERS: Dict[str, Callable] = {"jsonl": _jsonl_row, "binary": _binary_row, "pickapic": _pickapic_row,
                                    "hpdv2": _hpdv2_row}


# ---- sources -------------------------------------------------------------------------------------------
def _read_json_records(path: str) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
        if isinstance(data, dict):  # {"data": [...]} or a single record
            data = data["data"] if isinstance(data.get("data"), list) else [data]
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        pass
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append({"__unparsable__": f"line {n}"})
    return records


def _detect_records(records: List[Dict[str, Any]], source: str) -> str:
    for row in records[:20]:
        if not isinstance(row, dict) or "__unparsable__" in row:
            continue
        keys = set(row)
        if {"chosen", "rejected"} <= keys:
            return "jsonl"
        if "desirable" in keys:
            return "binary"
        if {"jpg_0", "jpg_1"} <= keys:
            return "pickapic"
        images = row.get("image_path", row.get("image"))
        if isinstance(images, list) and keys & {"rank", "human_preference"}:
            return "hpdv2"
        if (keys & {"image_path", "image"} and "rank" in keys) or {"images", "ranks"} <= keys:
            return "imagerewarddb"
    raise PreferenceDataError(f"cannot detect the preference-data layout of {source}: set data.format to one of "
                              f"{FORMATS}")


def _parse_records(b: _Builder, records: Iterable[Dict[str, Any]], layout: str, where: str) -> None:
    if layout == "imagerewarddb":
        good = []
        for i, row in enumerate(records):
            if not isinstance(row, dict) or "__unparsable__" in row:
                b.report.rows += 1
                b.report.skip("malformed", f"{where} record {i}: not a JSON object")
            else:
                good.append(row)
        _imagereward_groups(b, good, where)
        return
    parse = ROW_PARSERS[layout]
    for i, row in enumerate(records):
        b.report.rows += 1
        if not isinstance(row, dict) or "__unparsable__" in row:
            b.report.skip("malformed", f"{where} record {i}: not a JSON object")
            continue
        parse(b, row, f"{where} record {i}")


def _parquet_files(path: str) -> List[str]:
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    return [path]


def _read_parquet(b: _Builder, files: List[str]) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is an install requirement
        raise PreferenceDataError("reading parquet needs pyarrow (pip install pyarrow)") from None
    columns = ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    for path in files:
        pf = pq.ParquetFile(path)
        present = [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=256, columns=present):
            start = b.report.rows
            for i, row in enumerate(batch.to_pylist()):
                b.report.rows += 1
                _pickapic_row(b, row, f"{os.path.basename(path)} row {start + i}")


def looks_like_hub_id(path: str) -> bool:
    return not os.path.exists(path) and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def load_preference_data(path: str, format: Optional[str] = None, split: str = "train",
                         verify_images: bool = True, max_records: Optional[int] = None,
                         streaming: bool = False) -> PreferenceDataset:
    """Read a preference dataset from a file, a folder or a hub id (see the module docstring).

    ``verify_images`` decodes every image at load so broken ones are counted, not hit mid-training;
    turn it off for very large local sets (a broken image then raises when its batch is encoded).
    The records are held in memory (Pick-a-Pic rows with their JPEG bytes): bound a large set with
    ``max_records``, and for a hub id with ``streaming`` (reads only the first max_records rows
    instead of downloading every shard).
    """
    if format is not None and format not in FORMATS:
        raise PreferenceDataError(f"data.format must be one of {FORMATS}, got {format!r}")
    if looks_like_hub_id(path):
        return _load_hub(path, format, split, verify_images, max_records, streaming)
    if not os.path.exists(path):
        raise PreferenceDataError(f"preference data {path!r} does not exist (a file, a folder or a hub id owner/name)")
    if os.path.isdir(path):
        parquet = _parquet_files(path)
        if parquet and format in (None, "pickapic"):
            b = _Builder(path, "pickapic", path, verify_images)
            _read_parquet(b, parquet)
            return b.finish()
        candidates = sorted(glob.glob(os.path.join(path, "*.jsonl")) + glob.glob(os.path.join(path, "*.json")))
        if len(candidates) != 1:
            raise PreferenceDataError(f"folder {path!r} holds {len(candidates)} json/jsonl files and no parquet "
                                      "shards: give data.path as the file to read")
        path = candidates[0]
    root = os.path.dirname(os.path.abspath(path))
    if path.endswith(".parquet"):
        if format not in (None, "pickapic"):
            raise PreferenceDataError(f"{path!r} is parquet, which only the 'pickapic' layout reads (got {format!r})")
        b = _Builder(path, "pickapic", root, verify_images)
        _read_parquet(b, [path])
        return b.finish()
    records = _read_json_records(path)
    if max_records is not None:
        records = records[:max_records]
    if not records:
        raise PreferenceDataError(f"no usable preference data in {path}: the file holds no records")
    layout = format or _detect_records(records, path)
    b = _Builder(path, layout, root, verify_images)
    _parse_records(b, records, layout, os.path.basename(path))
    return b.finish()


def _load_hub(hub_id: str, format: Optional[str], split: str, verify_images: bool,
              max_records: Optional[int], streaming: bool = False) -> PreferenceDataset:
    try:
        import datasets
    except ImportError:
        raise PreferenceDataError(f"{hub_id!r} looks like a hub id and reading it needs the `datasets` package "
                                  "(pip install datasets), or give a local file or folder") from None
    if streaming:
        ds = datasets.load_dataset(hub_id, split=split, streaming=True)
        rows = list(itertools.islice(iter(ds), max_records))
    else:
        ds = datasets.load_dataset(hub_id, split=split)
        if max_records is not None:
            ds = ds.select(range(min(max_records, len(ds))))
        rows = ds
    first = [rows[i] for i in range(min(20, len(rows)))]
    layout = format or _detect_records(first, hub_id)
    b = _Builder(f"{hub_id} [{split}]", layout, None, verify_images)
    _parse_records(b, iter(rows), layout, hub_id)
    return b.finish()
