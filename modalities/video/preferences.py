"""The video preference layout: JSONL, one comparison per line, either
``{"prompt": str, "video_0": path, "video_1": path, "label": 0 | 1 | 0.5}`` (human labels) or
``{"prompt": str, "chosen": path, "rejected": path, "chosen_reward": float, "rejected_reward": float}`` (what
``diffalign feedback`` writes; the rewards are optional and kept for the losses that read them).

``label`` is the index of the preferred clip (0.5: a tie, counted and skipped); paths are video files or frame
folders, relative to the file's folder. Every line that cannot be used is counted by reason in the
:class:`~diffalign.data.types.LoadReport` (ties, undecodable clips, missing captions, malformed lines), as the
image readers (diffalign/data/readers.py) count theirs; a file with no usable pair is a PreferenceDataError
naming it. The data layer stays modality-free: this reader lives with the video adapter, which registers it
as ``data.format: video_jsonl``.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

from diffalign.data.types import (LoadReport, PreferenceDataError, PreferenceDataset, PreferencePair, jsonl_objects,
                                  pair_rewards, resolve_path)

FORMAT = "video_jsonl"


def _check_clip(path: str) -> Optional[str]:
    from diffalign.modalities.video.io import read_video
    try:
        read_video(path)
    except ValueError as exc:
        return str(exc)
    return None


def load_video_preferences(path: str, verify: bool = True, max_records: Optional[int] = None) -> PreferenceDataset:
    """Pairs from a video preference JSONL (module docstring). ``verify`` decodes every clip at load, so a
    broken one is counted here rather than hit mid-training."""
    if not os.path.isfile(path):
        raise PreferenceDataError(f"video preference file {path!r} does not exist")
    root = os.path.dirname(os.path.abspath(path))
    report = LoadReport(path, FORMAT)
    pairs = []
    for where, row in jsonl_objects(path, report, max_records):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            report.skip("missing_caption", where)
            continue
        ordered = "chosen" in row or "rejected" in row  # the AI-feedback form: already ordered, maybe scored
        if ordered:
            clips, label = [row.get("chosen"), row.get("rejected")], 0
            fields = "'chosen' and 'rejected'"
        else:
            clips, label = [row.get("video_0"), row.get("video_1")], row.get("label")
            fields = "'video_0' and 'video_1'"
        if not all(isinstance(c, str) and c for c in clips):
            report.skip("malformed", f"{where}: needs {fields} paths")
            continue
        if isinstance(label, bool) or label not in (0, 1, 0.5):
            report.skip("malformed", f"{where}: 'label' must be 0, 1 (the preferred clip) or 0.5 (a tie), "
                                     f"got {label!r}")
            continue
        try:
            rewards = pair_rewards(row) if ordered else (None, None)
        except ValueError as exc:
            report.skip("malformed", f"{where}: {exc}")
            continue
        if label == 0.5:
            report.skip("ties", where)
            continue
        clips = [resolve_path(c, root) for c in clips]
        why = next((w for w in map(_check_clip, clips) if w is not None), None) if verify else None
        if why is not None:
            report.skip("undecodable", f"{where}: {why}")
            continue
        chosen, rejected = (clips[0], clips[1]) if label == 0 else (clips[1], clips[0])
        pairs.append(PreferencePair(prompt.strip(), chosen, rejected, *rewards))
        report.kept += 1
    if report.kept == 0:
        raise PreferenceDataError(f"no usable preference data in {path}: {report.summary()}")
    if report.skipped:
        warnings.warn(f"preference data: {report.summary()}", stacklevel=2)
    return PreferenceDataset(pairs, [], report)
