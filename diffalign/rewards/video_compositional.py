"""A temporal compositional reward for clips of the shapes world (:mod:`diffalign.data.shapes_clips`): ``shapes_video``.

Every frame's objects come from the image demo's exact detector (:func:`diffalign.rewards.compositional.detect_batch`,
one call for all frames of a batch); the caption (``"two blue squares moving up"``, ``"a red circle"``) is checked
in five attributes, each a value in [0, 1]:

- ``color``, ``shape``, ``count``: the image reward's constraints for the caption's object spec
  (:func:`~diffalign.rewards.compositional.score_detections`: an object of the colour; one of the colour and
  shape; exactly ``n`` of them), each valued as the fraction of frames in which it holds.
- ``direction``: the objects' tracks (below) move the stated way. A track's displacement d (last observed centre
  minus first) must go at least ``min_travel`` px along the direction's axis and more along it than across it;
  for a still caption |d| must be at most ``max_still`` px. Valued as the fraction of tracks that do, 0 without
  a track.
- ``smoothness``: constant velocity. For each track and each three consecutive frames, the change of the step
  |(p[t+2] - p[t+1]) - (p[t+1] - p[t])| must be at most ``max_accel`` px (a frame where the track is lost counts
  as not smooth). Valued as the fraction of those triples that are smooth, averaged over tracks, 0 without one.

An attribute holds (``attributes``, and ``correct`` when all hold) when its value is at least ``min_fraction``
(default 0.75: six of eight frames; ``direction`` needs every track). The reward of a clip is the mean of the
five values, in [0, 1]. Pixel thresholds are for 32 px frames and scale with the frame side.

Tracks: the detections of the caption's colour and shape are linked frame to frame, starting from the first
frame with any, each track taking the nearest unused detection within ``max_jump`` px (greedy over pairs in
order of distance). Where no frame has an object of the colour and shape, the colour's detections are tracked,
else the shape's, else all detections: so a clip of the wrong colour fails ``color`` (and, as in the image
reward, ``shape`` and ``count``, which are stated for the colour) but is still judged on its motion, and a clip
moving the wrong way fails ``direction`` alone.

Not differentiable (thresholds, components and linking): use it with online RL or to label pairs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from diffalign.data.shapes import Scene
from diffalign.data.shapes_clips import CLIP_KINDS, DIRECTION_VECTORS, ClipScene, clip_caption, parse_clip_caption
from diffalign.rewards.checks import Check, CheckedSample, accuracies
from diffalign.rewards.compositional import Detection, DetectorConfig, detect_batch, score_detections
from diffalign.rewards.video import check_video

VIDEO_ATTRIBUTES: Tuple[str, ...] = ("color", "shape", "count", "direction", "smoothness")


@dataclass(frozen=True)
class MotionConfig:
    """Thresholds of the motion attributes (module doc). Pixels are for 32 px frames and scale with the side."""
    min_travel: float = 4.0    # px a moving track must cover along its direction, first to last observation
    max_still: float = 2.0     # px a still track may drift
    max_jump: float = 8.0      # px an object may move between consecutive frames and stay the same track
    max_accel: float = 1.5     # px the step may change between consecutive frame pairs
    min_fraction: float = 0.75  # an attribute holds when its value reaches this

    def __post_init__(self):
        for name in ("min_travel", "max_still", "max_jump", "max_accel"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"MotionConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_fraction <= 1:
            raise ValueError(f"MotionConfig.min_fraction must be in [0, 1], got {self.min_fraction}")


@dataclass(frozen=True)
class VideoScoreResult(CheckedSample):
    """One clip's checks (one per attribute in VIDEO_ATTRIBUTES, graded), the tracks and the per-frame detections."""
    tracks: Tuple[Tuple[Optional[Tuple[float, float]], ...], ...] = field(repr=False, default=())
    detections: Tuple[Tuple[Detection, ...], ...] = field(repr=False, default=())

    def as_dict(self) -> dict:
        return {**super().as_dict(), "tracks": [[list(p) if p is not None else None for p in t] for t in self.tracks],
                "detections": [[asdict(d) for d in frame] for frame in self.detections]}


# ---------------------------------------------------------------- tracks

def _candidates(scene: ClipScene, detections: Sequence[Sequence[Detection]]) -> List[List[Detection]]:
    """Per frame, the detections to track: colour and shape, else colour, else shape, else all (module doc)."""
    o = scene.obj
    for keep in (lambda d: d.color == o.color and d.shape == o.shape, lambda d: d.color == o.color,
                 lambda d: d.shape == o.shape, lambda d: True):
        picked = [[d for d in frame if keep(d)] for frame in detections]
        if any(picked):
            return picked
    return [[] for _ in detections]


def link_tracks(points: Sequence[Sequence[Tuple[float, float]]], max_jump: float) -> List[List[Optional[Tuple[float, float]]]]:
    """Tracks through per-frame points: from the first frame with points, each track takes the nearest unused point
    of the next frame within ``max_jump`` (greedy in order of distance, measured from the track's last observed
    position); a track with none is unobserved (None) in that frame. Returns one list of F positions per track."""
    n_frames = len(points)
    start = next((t for t, p in enumerate(points) if p), None)
    if start is None:
        return []
    tracks: List[List[Optional[Tuple[float, float]]]] = [[None] * start + [tuple(p)] for p in points[start]]
    last = [tuple(p) for p in points[start]]
    for t in range(start + 1, n_frames):
        pairs = sorted((float(np.hypot(q[0] - last[i][0], q[1] - last[i][1])), i, j)
                       for i in range(len(tracks)) for j, q in enumerate(points[t]))
        taken_tracks, taken_points = set(), set()
        for dist, i, j in pairs:
            if dist <= max_jump and i not in taken_tracks and j not in taken_points:
                taken_tracks.add(i)
                taken_points.add(j)
                tracks[i].append(tuple(points[t][j]))
                last[i] = tuple(points[t][j])
        for i in range(len(tracks)):
            if i not in taken_tracks:
                tracks[i].append(None)
    return tracks


def track_direction_ok(track: Sequence[Optional[Tuple[float, float]]], direction: Optional[str],
                       config: MotionConfig, scale: float = 1.0) -> bool:
    """Does the track move ``direction`` (None: stay still)? See the module doc."""
    seen = [p for p in track if p is not None]
    if len(seen) < 2:
        return False
    dx, dy = seen[-1][0] - seen[0][0], seen[-1][1] - seen[0][1]
    if direction is None:
        return float(np.hypot(dx, dy)) <= config.max_still * scale
    ux, uy = DIRECTION_VECTORS[direction]
    along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
    return along >= config.min_travel * scale and along > across


def track_smoothness(track: Sequence[Optional[Tuple[float, float]]], config: MotionConfig, scale: float = 1.0) -> float:
    """Fraction of consecutive frame triples whose step changes by at most ``max_accel`` px (lost frames fail)."""
    if len(track) < 3:
        return 1.0 if all(p is not None for p in track) else 0.0
    smooth = 0
    for a, b, c in zip(track, track[1:], track[2:]):
        if a is None or b is None or c is None:
            continue
        jerk = np.hypot((c[0] - b[0]) - (b[0] - a[0]), (c[1] - b[1]) - (b[1] - a[1]))
        smooth += bool(jerk <= config.max_accel * scale)
    return smooth / (len(track) - 2)


# ---------------------------------------------------------------- scoring

def score_clip_detections(scene_or_caption: Union[ClipScene, str], detections: Sequence[Sequence[Detection]],
                          frame_size: int = 32, config: DetectorConfig = DetectorConfig(),
                          motion: MotionConfig = MotionConfig()) -> VideoScoreResult:
    """Check the clip caption's five attributes against per-frame detections (module doc)."""
    scene = parse_clip_caption(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    n_frames = len(detections)
    if n_frames < 1:
        raise ValueError("shapes_video: a clip needs at least one frame of detections")
    scale = frame_size / 32.0
    per_frame = [score_detections(Scene((scene.obj,)), dets, frame_size, config) for dets in detections]
    cons: List[Check] = []
    for attr in ("color", "shape", "count"):
        held = [r.attributes[attr] for r in per_frame]
        text = next(c.text for c in per_frame[0].constraints if c.attribute == attr)
        value = float(np.mean(held))
        cons.append(Check(attr, f"{text} (in {sum(held)}/{n_frames} frames)", value >= motion.min_fraction, value))
    points = [[d.centre for d in frame] for frame in _candidates(scene, detections)]
    tracks = link_tracks(points, motion.max_jump * scale)
    moves = [track_direction_ok(t, scene.direction, motion, scale) for t in tracks]
    way = f"moving {scene.direction}" if scene.direction else "still"
    cons.append(Check("direction", f"{len(tracks)} track(s) {way}: {sum(moves)} do", bool(moves) and all(moves),
                      float(np.mean(moves)) if moves else 0.0))
    smooth = [track_smoothness(t, motion, scale) for t in tracks]
    value = float(np.mean(smooth)) if smooth else 0.0
    cons.append(Check("smoothness", f"constant velocity (step change <= {motion.max_accel * scale:g} px)",
                      bool(smooth) and value >= motion.min_fraction, value))
    return VideoScoreResult(clip_caption(scene), scene.kind, tuple(cons),
                            tuple(tuple(p for p in t) for t in tracks), tuple(tuple(d) for d in detections))


def _frames_hwc(videos) -> np.ndarray:
    v = check_video(torch.as_tensor(videos) if isinstance(videos, np.ndarray) else videos)
    if v.shape[2] != 3:
        raise ValueError(f"shapes_video: videos must be RGB (B, F, 3, H, W), got shape {tuple(v.shape)}")
    return v.detach().float().clamp(0, 1).permute(0, 1, 3, 4, 2).cpu().numpy()


def score_clips(videos, prompts: Sequence[Union[str, ClipScene]], config: DetectorConfig = DetectorConfig(),
                motion: MotionConfig = MotionConfig()) -> List[VideoScoreResult]:
    """Score every (clip, caption) pair of a batch (B, F, 3, H, W) in [0, 1], one detector call for all frames."""
    arr = _frames_hwc(videos)
    b, f, h, w = arr.shape[:4]
    if len(prompts) != b:
        raise ValueError(f"shapes_video: {b} videos but {len(prompts)} prompts")
    dets = detect_batch(arr.reshape(b * f, h, w, 3), config)
    return [score_clip_detections(p, dets[i * f:(i + 1) * f], min(h, w), config, motion) for i, p in enumerate(prompts)]


def video_accuracies(results: Sequence[VideoScoreResult]) -> Dict[str, float]:
    """``accuracy`` (all attributes hold), ``reward`` (mean), ``n``, each attribute's accuracy and ``accuracy/<kind>``
    (:func:`diffalign.rewards.checks.accuracies`)."""
    return accuracies(results, VIDEO_ATTRIBUTES, CLIP_KINDS)


def shapes_video_reward(videos, prompts: Sequence[str], min_travel: float = MotionConfig.min_travel,
                        max_still: float = MotionConfig.max_still, max_jump: float = MotionConfig.max_jump,
                        max_accel: float = MotionConfig.max_accel,
                        min_fraction: float = MotionConfig.min_fraction) -> torch.Tensor:
    """Each clip's reward (the mean of its five attribute values): float32 Tensor[B] in [0, 1]. Not differentiable."""
    motion = MotionConfig(min_travel, max_still, max_jump, max_accel, min_fraction)
    out = torch.tensor([r.reward for r in score_clips(videos, prompts, DetectorConfig(), motion)], dtype=torch.float32)
    return out.to(videos.device) if isinstance(videos, torch.Tensor) else out


def shapes_video_report(videos, prompts: Sequence[str], config: DetectorConfig = DetectorConfig(),
                        motion: MotionConfig = MotionConfig()) -> dict:
    """``{"accuracies": video_accuracies(...), "results": [per-clip VideoScoreResult.as_dict()]}`` for reports."""
    results = score_clips(videos, prompts, config, motion)
    return {"accuracies": video_accuracies(results), "results": [r.as_dict() for r in results]}
