"""Ranked 3D results as multi-view images: the reader of the ranked-views layout and a synthetic writer.

A reward model of 3D results (DreamReward's Reward3D, survey section 4.4) compares *objects*, each seen
through several rendered views. The layout, a JSONL file (or a folder holding ``rankings.jsonl``) beside
one folder of views per candidate object::

    ROOT/rankings.jsonl     one JSON object per line:
        {"prompt": "a red circle", "candidates": ["obj_000_0", "obj_000_1", "obj_000_2"], "ranks": [2, 1, 3]}
    ROOT/obj_000_0/000.png  the views of candidate obj_000_0: every image file of the folder, in file-name
    ROOT/obj_000_0/001.png  order (= view order; name them by azimuth); all candidates have the same count
    ...

``candidates`` are folders relative to the JSONL file's folder (or absolute), at least 2 per row; ``ranks``
gives one rank per candidate (1 = best, equal ranks tie, ``null`` leaves a candidate unranked). Rows
that cannot be used are skipped and counted in the :class:`~diffalign.data.types.LoadReport` by reason,
each example naming the file and line: ``malformed`` (not an object, ``candidates`` or ``ranks`` missing
or of the wrong type or length, or a candidate whose view count differs from the others'),
``missing_caption`` (no non-empty ``prompt``) and ``undecodable`` (a candidate folder that is missing,
holds no image, or holds an image that does not decode). A file with no usable row is an error.

:func:`write_shapes_views` writes such a set from the shapes world (:mod:`diffalign.data.shapes`) with a
known ground truth: each candidate is an object seen from ``views`` azimuths evenly spaced around it,
showing the prompt's colour and shape from an arc of views and a wrong colour or shape from the rest
(the "Janus" failure of text-to-3D), drawn where an orbiting camera sees its off-centre position. A
candidate's quality is the fraction of views that show the prompt, i.e. its multi-view accuracy, and
the ranks sort the candidates by it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, List, Optional, Tuple

import numpy as np

from diffalign.data.types import (IMAGE_EXTENSIONS, LoadReport, PreferenceDataError, check_sample, jsonl_objects,
                                  resolve_path)

MULTIVIEW_FORMAT = "multiview"
RANKINGS_FILE = "rankings.jsonl"


@dataclasses.dataclass
class RankedViews:
    """One row: a prompt, K candidate objects (each a list of V view image paths) and their ranks."""
    prompt: str
    candidates: List[List[str]]
    ranks: List[float]            # one per candidate, 1 = best, NaN unranked
    where: str                    # "FILE line N", for messages


def rankings_path(path: str) -> str:
    """The JSONL file of ``path``: itself, or ``path/rankings.jsonl`` for a folder."""
    if os.path.isdir(path):
        path = os.path.join(path, RANKINGS_FILE)
    if not os.path.isfile(path):
        raise PreferenceDataError(f"ranked views {path!r}: no such file (a JSONL of rankings, or a folder "
                                  f"holding {RANKINGS_FILE})")
    return path


def view_files(folder: str) -> List[str]:
    """The image files of a candidate folder in view (file-name) order; [] when it is missing or empty."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.lower().endswith(IMAGE_EXTENSIONS)]


def _ranks(value: Any, n: int) -> Optional[List[float]]:
    if not isinstance(value, list) or len(value) != n:
        return None
    out = []
    for v in value:
        if v is None:
            out.append(math.nan)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        else:
            out.append(float(v))
    return out


def _parse_row(row: dict, where: str, root: str, report: LoadReport,
               verify_images: bool) -> Optional[RankedViews]:
    """The row (a JSON object) as RankedViews, or None after counting why it is unusable."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        report.skip("missing_caption", f"{where}: field 'prompt' must be a non-empty string, got {prompt!r}")
        return None
    names = row.get("candidates")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(c, str) and c for c in names):
        report.skip("malformed", f"{where}: field 'candidates' must list at least 2 folder names, got {names!r}")
        return None
    ranks = _ranks(row.get("ranks"), len(names))
    if ranks is None:
        report.skip("malformed", f"{where}: field 'ranks' must be a list of {len(names)} numbers or nulls "
                                 f"(1 = best), got {row.get('ranks')!r}")
        return None
    candidates = []
    for name in names:
        folder = resolve_path(name, root)
        files = view_files(folder)
        if not files:
            report.skip("undecodable", f"{where}: candidate folder {folder!r} is missing or holds no image")
            return None
        if verify_images:
            bad = next(((f, why) for f in files if (why := check_sample(f)) is not None), None)
            if bad is not None:
                report.skip("undecodable", f"{where}: view {bad[0]!r}: {bad[1]}")
                return None
        candidates.append(files)
    counts = sorted({len(c) for c in candidates})
    if len(counts) > 1:
        report.skip("malformed", f"{where}: candidates have different view counts {counts}")
        return None
    return RankedViews(prompt.strip(), candidates, ranks, where)


def read_ranked_views(path: str, views: Optional[int] = None, verify_images: bool = True,
                      max_records: Optional[int] = None) -> Tuple[List[RankedViews], LoadReport]:
    """Rows of the ranked-views layout (module docstring) and the load report. ``views``: the view count
    every candidate must have (default: the first usable row's); rows with another count are malformed."""
    path = rankings_path(path)
    root = os.path.dirname(os.path.abspath(path))
    report = LoadReport(path, MULTIVIEW_FORMAT)
    rows: List[RankedViews] = []
    for where, row in jsonl_objects(path, report, max_records):
        parsed = _parse_row(row, where, root, report, verify_images)
        if parsed is None:
            continue
        want = views if views is not None else (len(rows[0].candidates[0]) if rows else None)
        if want is not None and len(parsed.candidates[0]) != want:
            report.skip("malformed", f"{where}: {len(parsed.candidates[0])} views per candidate, expected {want}")
            continue
        rows.append(parsed)
    report.kept = len(rows)
    report.ties = sum(1 for r in rows for i, a in enumerate(r.ranks) for b in r.ranks[i + 1:]
                      if not (math.isnan(a) or math.isnan(b)) and a == b)
    if not rows:
        raise PreferenceDataError(f"no usable ranked views in {path}: {report.summary()}")
    return rows, report


# ---- a synthetic set from the shapes world ----------------------------------------------------------------
def view_azimuths(views: int) -> List[float]:
    """``views`` azimuths in degrees, evenly spaced all around (0, 360/views, ...)."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    return [360.0 * i / views for i in range(views)]


def draw_view(color: str, shape: str, azimuth: float, offset: Tuple[float, float], radius: float,
              size: int) -> np.ndarray:
    """uint8 (size, size, 3): one object seen by a camera orbiting the origin at ``azimuth`` degrees.

    ``offset`` (x, z) is the object's position on the ground plane in units of the image half-width; the
    camera at azimuth a sees it at screen x = x cos a - z sin a and closer (larger, by up to 15%) where its
    depth x sin a + z cos a is towards the camera."""
    from diffalign.data.shapes import Placed, draw
    a = math.radians(azimuth)
    x, z = offset
    sx, depth = x * math.cos(a) - z * math.sin(a), x * math.sin(a) + z * math.cos(a)
    r = radius * size / 32 * (1.0 + 0.15 * depth)
    cx = size / 2 + sx * (size / 2 - r - 1)
    return draw([Placed(color, shape, cx, size / 2, r, (0, 0, size, size))], size)


def _competition_ranks(values: List[float]) -> List[float]:
    return [1.0 + sum(1 for w in values if w > v) for v in values]


def write_shapes_views(out_dir: str, num_groups: int = 200, group_size: int = 3, views: int = 8,
                       image_size: int = 32, seed: int = 0, min_gap: int = 2, shape_errors: float = 0.5) -> str:
    """Write ``num_groups`` ranked groups of ``group_size`` shapes-world objects, ``views`` PNG views each, in
    the ranked-views layout (module docstring) under out_dir; return the JSONL path.

    Prompts are the single-object captions ("a red circle", ...). A candidate shows the prompt from a
    random arc of ``m`` consecutive views (``m`` in 0..views) and, from the others, a wrong shape in the
    prompt's colour (with probability ``shape_errors``) or the prompt's shape in a wrong colour; quality
    ``m / views``. The ``m`` of a group's candidates
    differ pairwise by at least ``min_gap`` views (clear preferences), and ranks sort them by ``m``."""
    from PIL import Image

    from diffalign.data.shapes import COLORS, SHAPES
    if num_groups < 1 or group_size < 2 or views < 1:
        raise ValueError(f"need num_groups >= 1, group_size >= 2, views >= 1; got {num_groups}, {group_size}, {views}")
    if not 0.0 <= shape_errors <= 1.0:
        raise ValueError(f"shape_errors is a probability in [0, 1], got {shape_errors}")
    if (group_size - 1) * min_gap > views:
        raise ValueError(f"min_gap {min_gap}: {group_size} candidates cannot differ by {min_gap} of {views} views")
    rng = np.random.default_rng(int(seed))
    colors, azimuths = list(COLORS), view_azimuths(views)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RANKINGS_FILE)
    with open(path, "w", encoding="utf-8") as f:
        for gi in range(num_groups):
            color, shape = colors[gi % len(colors)], SHAPES[(gi // len(colors)) % len(SHAPES)]
            while True:
                good = sorted(rng.choice(views + 1, size=group_size, replace=False).tolist())
                if all(b - a >= min_gap for a, b in zip(good, good[1:])):
                    break
            rng.shuffle(good)
            names = []
            for k, m in enumerate(good):
                name = f"obj_{gi:05d}_{k}"
                os.makedirs(os.path.join(out_dir, name), exist_ok=True)
                start = int(rng.integers(views))
                shown = {(start + i) % views for i in range(m)}
                offset = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6)))
                radius = float(rng.uniform(5.0, 7.0))
                wrong_color = str(rng.choice([c for c in colors if c != color]))
                wrong_shape = str(rng.choice([s for s in SHAPES if s != shape]))
                wrong = (color, wrong_shape) if rng.random() < shape_errors else (wrong_color, shape)
                for v, az in enumerate(azimuths):
                    c, s = (color, shape) if v in shown else wrong
                    img = draw_view(c, s, az, offset, radius, image_size)
                    Image.fromarray(img).save(os.path.join(out_dir, name, f"{v:03d}.png"))
                names.append(name)
            row = {"prompt": f"a {color} {shape}", "candidates": names,
                   "ranks": _competition_ranks([float(m) for m in good]), "quality": [m / views for m in good]}
            f.write(json.dumps(row) + "\n")
    return path


__all__ = ["MULTIVIEW_FORMAT", "RANKINGS_FILE", "RankedViews", "rankings_path", "view_files", "read_ranked_views",
           "view_azimuths", "draw_view", "write_shapes_views"]
