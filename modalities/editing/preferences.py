"""The editing preference layout (``data.format: editing_jsonl``): JSONL, one judgement of edits per line.

- a comparison of two edits of one input: ``{"instruction": str, "input": path, "edit_0": path, "edit_1": path,
  "label": 0 | 1 | 0.5}``, ``label`` the index of the preferred edit (0.5: a tie, counted and skipped): DPO and
  its family, and KTO (each pair split into a desirable and an undesirable edit);
- binary feedback on one edit: ``{"instruction": str, "input": path, "edit": path, "desirable": true | false}``:
  KTO. A file holds one kind or the other;
- what ``diffalign feedback`` writes for an editing model, already ordered: ``{"prompt": {"text": instruction,
  "image": input path}, "chosen": path, "rejected": path, "chosen_reward": float, "rejected_reward": float}``
  (the rewards optional, both or neither; E2PO's soft labels read them). These are pairs.

Paths are relative to the file's folder. Each sample is the edited image; its prompt is the editing item
``{"text": instruction, "image": <absolute input path>}`` that the adapter's ``encode`` conditions on. Every line
that cannot be used is counted by reason in the :class:`~diffalign.data.types.LoadReport` with its file and line
(ties, undecodable images, missing instructions, malformed lines), as the image and video readers count theirs; a
file with nothing usable is a PreferenceDataError naming it. Ranked edits for reward-model training are the reward
models' reader (diffalign/rewards/training/), not this one.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

from diffalign.data.types import (LabelledSample, LoadReport, PreferenceDataError, PreferenceDataset, PreferencePair,
                                  jsonl_objects, load_sample, pair_rewards, resolve_path)

FORMAT = "editing_jsonl"


def _undecodable(paths) -> Optional[str]:
    """Why the first of ``paths`` that is not a readable image fails, or None."""
    from PIL import Image
    for path in paths:
        try:
            if not isinstance(load_sample(path), Image.Image):
                return f"{path!r} is not an image"
        except ValueError as exc:
            return str(exc)
    return None


def _paths(row: dict, keys, root: str):
    values = [row.get(k) for k in keys]
    if not all(isinstance(v, str) and v for v in values):
        return None
    return [resolve_path(v, root) for v in values]


def _from_feedback(row: dict) -> dict:
    """A ``diffalign feedback`` row in this layout's own terms (the chosen edit is ``edit_0``), so one set of checks
    serves both; a prompt that is not an edit item leaves the instruction or input missing, which is reported."""
    item = row.get("prompt") if isinstance(row.get("prompt"), dict) else {}
    return {"instruction": item.get("text"), "input": item.get("image"), "edit_0": row.get("chosen"),
            "edit_1": row.get("rejected"), "label": 0,
            **{k: row[k] for k in ("chosen_reward", "rejected_reward") if k in row}}


def load_editing_preferences(path: str, verify: bool = True, max_records: Optional[int] = None) -> PreferenceDataset:
    """Pairs or binary feedback from an editing JSONL (module docstring). ``verify`` decodes every image at load,
    so a broken one is counted here rather than hit mid-training."""
    if not os.path.isfile(path):
        raise PreferenceDataError(f"editing preference file {path!r} does not exist")
    root = os.path.dirname(os.path.abspath(path))
    report = LoadReport(path, FORMAT)
    pairs, labels = [], []
    kind = None  # "pairs" or "labels": the first usable line decides, a line of the other kind is malformed
    for where, row in jsonl_objects(path, report, max_records):
        feedback = "chosen" in row or "rejected" in row
        if feedback:
            row = _from_feedback(row)
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            report.skip("missing_caption", f"{where}: " + ("'prompt' is no edit item {text, image}" if feedback
                                                           else "no 'instruction'"))
            continue
        row_kind = "labels" if "edit" in row else "pairs"
        if kind is not None and row_kind != kind:
            report.skip("malformed", f"{where}: a {'single edit' if row_kind == 'labels' else 'pair of edits'} in a "
                                     f"file of {'pairs' if kind == 'pairs' else 'single edits'}")
            continue
        keys = ("input", "edit") if row_kind == "labels" else ("input", "edit_0", "edit_1")
        paths = _paths(row, keys, root)
        if paths is None:
            report.skip("malformed", f"{where}: needs the paths {', '.join(repr(k) for k in keys)}")
            continue
        if row_kind == "labels":
            desirable = row.get("desirable")
            if not isinstance(desirable, bool):
                report.skip("malformed", f"{where}: 'desirable' must be true or false, got {desirable!r}")
                continue
        else:
            label = row.get("label")
            if isinstance(label, bool) or label not in (0, 1, 0.5):
                report.skip("malformed", f"{where}: 'label' must be 0, 1 (the preferred edit) or 0.5 (a tie), "
                                         f"got {label!r}")
                continue
            if label == 0.5:
                report.skip("ties", where)
                continue
            try:
                rewards = pair_rewards(row)
            except ValueError as exc:
                report.skip("malformed", f"{where}: {exc}")
                continue
        why = _undecodable(paths) if verify else None
        if why is not None:
            report.skip("undecodable", f"{where}: {why}")
            continue
        item = {"text": instruction.strip(), "image": paths[0]}
        if row_kind == "labels":
            labels.append(LabelledSample(item, paths[1], desirable))
        else:
            chosen, rejected = (paths[1], paths[2]) if label == 0 else (paths[2], paths[1])
            pairs.append(PreferencePair(item, chosen, rejected, *rewards))
        kind = row_kind
        report.kept += 1
    if report.kept == 0:
        raise PreferenceDataError(f"no usable preference data in {path}: {report.summary()}")
    if report.skipped:
        warnings.warn(f"preference data: {report.summary()}", stacklevel=2)
    return PreferenceDataset(pairs, labels, report)
