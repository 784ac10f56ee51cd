"""Comparison groups for reward-model training and preference evaluation.

A :class:`Comparison` is one prompt, K >= 2 samples and, per aspect, a rank for each sample (lower is
preferred, equal ranks are a tie, NaN is "not labelled"). A preference pair is a group of K = 2.

Sources (:func:`read_comparisons`):

- the *ranked* JSONL/JSON layout, read here so ranked groups and ties survive (the pairwise readers
  decompose rankings into pairs and drop ties). One object per line:

  - ``{"prompt": str, "images": [ref, ...], "ranks": [r, ...]}``: one ranking (rank 1 = best; equal ranks
    tie; ``null`` leaves an image unranked). ``"image_path"``/``"rank"`` are accepted too (HPD v2 test
    split, ImageRewardDB groups).
  - ``"ranks": {"aesthetics": [...], "detail": [...], "overall": [...]}``: per-aspect rankings (MHP-style
    multi-dimensional feedback); an aspect left out is unlabelled for that group.
  - ``{"prompt", "chosen", "rejected", "tie": true|false}``: a pair with an explicit tie flag.
  - ranked *edits* (HIVE): any of the above plus ``"input": ref`` (or ``"input_image"``), the image that
    every sample of the group is an edit of; the prompt is then the instruction (``"instruction"`` is
    accepted for ``"prompt"``). Such a group's :attr:`Comparison.item` is the edit prompt item
    ``{"text": instruction, "image": input path}`` that edit rewards and the reward model read.

  Image refs are paths relative to the file's folder (or absolute). A malformed line is an error naming
  the file, the line and the field. Rows that cannot be used are skipped and counted by reason in the
  load report, naming the file and line: an edit or input image that does not decode ("undecodable"),
  and, in a file of ranked edits, a row without an input image ("malformed").
- anything :func:`diffalign.data.load_preference_data` reads (JSONL pairs, Pick-a-Pic parquet,
  HPD v2, ImageRewardDB, hub ids): each pair becomes a K = 2 group; ties those readers skip are
  counted in the report (``report.ties``) but are not in the groups.

A plain rank list (or a pair) labels the *primary* aspect of whatever model consumes it (the key
``None`` in ``Comparison.ranks``); a dict labels aspects by name.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from diffalign.data.types import LoadReport, PreferenceDataError, check_sample, resolve_path

RANKED_FORMAT = "ranked"


@dataclasses.dataclass
class Comparison:
    prompt: str
    samples: List[Any]
    ranks: Dict[Optional[str], List[float]]   # aspect (None = the primary one) -> rank per sample, NaN unlabelled
    input: Any = None                         # ranked edits: the input image every sample edits (a path)

    @property
    def item(self) -> Any:
        """What a reward is called with for this group's samples: the prompt, or for edits the edit item."""
        if self.input is None:
            return self.prompt
        return {"text": self.prompt, "image": self.input}

    def ranks_for(self, aspect: str, primary: str) -> Optional[List[float]]:
        if aspect in self.ranks:
            return self.ranks[aspect]
        if aspect == primary and None in self.ranks:
            return self.ranks[None]
        return None


def count_tied_pairs(groups: Sequence[Comparison]) -> int:
    """Labelled pairs with equal ranks, over all groups and aspects."""
    n = 0
    for g in groups:
        for ranks in g.ranks.values():
            for a, b in itertools.combinations(ranks, 2):
                if not (math.isnan(a) or math.isnan(b)) and a == b:
                    n += 1
    return n


def _is_ranked_row(row: Any) -> bool:
    if not isinstance(row, dict):
        return False
    images = row.get("images", row.get("image_path"))
    return (isinstance(images, list) and ("ranks" in row or "rank" in row)) or "tie" in row


def _rank_list(value: Any, n: int, where: str, field: str) -> List[float]:
    if not isinstance(value, list) or len(value) != n:
        raise PreferenceDataError(f"{where}: field {field!r} must be a list of {n} ranks (one per image), "
                                  f"got {value!r}")
    out = []
    for v in value:
        if v is None:
            out.append(math.nan)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PreferenceDataError(f"{where}: field {field!r} holds {v!r}; ranks are numbers (1 = best) or null")
        else:
            out.append(float(v))
    return out


INPUT_FIELDS = ("input", "input_image")


def _input_field(row: Dict[str, Any]) -> Optional[str]:
    return next((f for f in INPUT_FIELDS if f in row), None)


def _parse_ranked(row: Dict[str, Any], where: str) -> Comparison:
    group = _parse_ranked_samples(row, where)
    field = _input_field(row)
    if field is not None:
        ref = row[field]
        if not isinstance(ref, str) or not ref.strip():
            raise PreferenceDataError(f"{where}: field {field!r} must be the path of the input image, got {ref!r}")
        group.input = ref
    return group


def _parse_ranked_samples(row: Dict[str, Any], where: str) -> Comparison:
    prompt = row.get("prompt", row.get("caption", row.get("instruction")))
    if not isinstance(prompt, str) or not prompt.strip():
        raise PreferenceDataError(f"{where}: field 'prompt' must be a non-empty string, got {prompt!r}")
    if "tie" in row:
        if row.get("chosen") is None or row.get("rejected") is None:
            raise PreferenceDataError(f"{where}: a row with 'tie' needs fields 'chosen' and 'rejected'")
        if not isinstance(row["tie"], bool):
            raise PreferenceDataError(f"{where}: field 'tie' must be true or false, got {row['tie']!r}")
        ranks = [1.0, 1.0] if row["tie"] else [1.0, 2.0]
        return Comparison(prompt.strip(), [row["chosen"], row["rejected"]], {None: ranks})
    images = row.get("images", row.get("image_path"))
    field = "images" if "images" in row else "image_path"
    if not isinstance(images, list) or len(images) < 2:
        raise PreferenceDataError(f"{where}: field {field!r} must be a list of at least 2 images, got {images!r}")
    rank_field = "ranks" if "ranks" in row else "rank"
    value = row.get(rank_field)
    if isinstance(value, dict):
        if not value:
            raise PreferenceDataError(f"{where}: field {rank_field!r} is an empty mapping (give aspect -> ranks)")
        ranks = {str(k): _rank_list(v, len(images), where, f"{rank_field}.{k}") for k, v in value.items()}
    else:
        ranks = {None: _rank_list(value, len(images), where, rank_field)}
    return Comparison(prompt.strip(), list(images), ranks)


def _read_records(path: str) -> List[Tuple[int, Any]]:
    """(line number, record) of a JSON list or a JSONL file; a bad line is an error naming it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            data = data["data"] if isinstance(data.get("data"), list) else [data]
        if isinstance(data, list):
            return [(i + 1, r) for i, r in enumerate(data)]
    except json.JSONDecodeError:
        pass
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PreferenceDataError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
    return records


def read_ranked(path: str, verify_images: bool = True,
                max_records: Optional[int] = None) -> Tuple[List[Comparison], LoadReport]:
    """The ranked layout (module docstring). Groups with an image that does not decode are skipped and counted."""
    records = _read_records(path)
    if max_records is not None:
        records = records[:max_records]
    root = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    report = LoadReport(path, RANKED_FORMAT)
    read: List[Tuple[str, Comparison]] = []   # (where, group) of the rows whose images decode
    for n, row in records:
        report.rows += 1
        where = f"{name} line {n}"
        if not isinstance(row, dict):
            raise PreferenceDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        g = _parse_ranked(row, where)
        g.samples = [resolve_path(s, root) if isinstance(s, str) else s for s in g.samples]
        if g.input is not None:
            g.input = resolve_path(g.input, root)
        if verify_images:
            bad = next(((i, why) for i, s in enumerate(g.samples) if (why := check_sample(s)) is not None), None)
            if bad is not None:
                report.skip("undecodable", f"{where} image {bad[0]}: {bad[1]}")
                continue
            if g.input is not None and (why := check_sample(g.input)) is not None:
                report.skip("undecodable", f"{where} input image: {why}")
                continue
        read.append((where, g))
    edits = any(g.input is not None for _, g in read)
    for where, g in read:  # in a file of ranked edits, a group without its input cannot be scored
        if edits and g.input is None:
            report.skip("malformed", f"{where}: no 'input' image in a file of ranked edits")
    groups = [g for _, g in read if not edits or g.input is not None]
    report.kept = len(groups)
    report.ties = count_tied_pairs(groups)
    if not groups:
        raise PreferenceDataError(f"no usable comparisons in {path}: {report.summary()}")
    return groups, report


def _first_records(path: str) -> List[Any]:
    try:
        return [r for _, r in _read_records(path)[:20]]
    except (PreferenceDataError, UnicodeDecodeError):
        return []


def read_comparisons(path: str, format: Optional[str] = None, split: str = "train", verify_images: bool = True,
                     max_records: Optional[int] = None) -> Tuple[List[Comparison], LoadReport]:
    """Comparison groups and the load report from a ranked file or any layout the preference readers know."""
    from diffalign.data import FORMATS, load_preference_data
    if format is not None and format not in FORMATS + (RANKED_FORMAT,):
        raise PreferenceDataError(f"data.format must be one of {FORMATS + (RANKED_FORMAT,)}, got {format!r}")
    is_file = os.path.isfile(path) and path.endswith((".json", ".jsonl"))
    if format == RANKED_FORMAT or (format is None and is_file and any(_is_ranked_row(r) for r in _first_records(path))):
        if not os.path.isfile(path):
            raise PreferenceDataError(f"ranked preference data {path!r} is not a file")
        return read_ranked(path, verify_images, max_records)
    ds = load_preference_data(path, format=format, split=split, verify_images=verify_images, max_records=max_records)
    if not ds.pairs:
        raise PreferenceDataError(f"{path} holds binary feedback (one sample per record), not comparisons")
    groups = [Comparison(p.prompt, [p.chosen, p.rejected], {None: [1.0, 2.0]}) for p in ds.pairs]
    return groups, ds.report


def write_ranked(groups: Sequence[Comparison], path: str) -> bool:
    """Write groups in the ranked layout (absolute image paths). False, writing nothing, when a sample
    is not a file path (Pick-a-Pic bytes, decoded images, vectors), which JSON cannot reference."""
    refs = [s for g in groups for s in list(g.samples) + ([g.input] if g.input is not None else [])]
    if not all(isinstance(s, str) for s in refs):
        return False
    with open(path, "w", encoding="utf-8") as f:
        for g in groups:
            ranks: Any = {k: [None if math.isnan(v) else v for v in r] for k, r in g.ranks.items()}
            row = {"prompt": g.prompt, "images": [os.path.abspath(s) for s in g.samples],
                   "ranks": ranks[None] if list(ranks) == [None] else {k: v for k, v in ranks.items() if k is not None}}
            if g.input is not None:
                row["input"] = os.path.abspath(g.input)
            if None in ranks and len(ranks) > 1:
                raise ValueError("a group mixing plain and per-aspect ranks cannot be written")
            f.write(json.dumps(row) + "\n")
    return True


def rank_tensor(groups: Sequence[Comparison], aspects: Sequence[str], primary: str) -> torch.Tensor:
    """(G, K_max, A) float64 ranks, NaN where unlabelled or padded."""
    kmax = max(len(g.samples) for g in groups)
    out = torch.full((len(groups), kmax, len(aspects)), math.nan, dtype=torch.float64)
    for gi, g in enumerate(groups):
        for ai, a in enumerate(aspects):
            r = g.ranks_for(a, primary)
            if r is not None:
                out[gi, : len(r), ai] = torch.tensor(r, dtype=torch.float64)
    return out


def split_groups(groups: Sequence[Comparison], eval_fraction: float,
                 seed: int) -> Tuple[List[Comparison], List[Comparison]]:
    """A seeded random (train, held-out) split of whole groups, so no image is in both."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"data.eval_fraction must lie in [0, 1), got {eval_fraction}")
    n_eval = int(round(len(groups) * eval_fraction))
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(int(seed) + 1)).tolist()
    held = set(perm[:n_eval])
    return [g for i, g in enumerate(groups) if i not in held], [g for i, g in enumerate(groups) if i in held]
