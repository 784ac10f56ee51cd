"""Image rewards on videos: score frames with any image reward and reduce the frame scores to one per clip.

Videos are float tensors (B, F, C, H, W) in [0, 1] (what the video modality's ``decode`` returns). A per-frame
reward flattens the chosen frames to (B * K, C, H, W), calls the image reward once with every prompt repeated
per frame, and reduces the (B, K) scores with one rule (``reduce``):

- ``mean``: the mean over the scored frames.
- ``min``: the worst scored frame (a clip is as good as its worst frame; its gradient reaches only that frame).
- ``segmental``: InstructVideo's segmental sparse sampling with temporally attenuated rewards (Yuan et al. 2024;
  the rule as VGen's ``utils/reward/reward.py`` implements it, selection_method "TSN" with exponential_TSN):
  the F frames are split into S = ``segments`` segments of ``F // S`` frames (frames past ``S * (F // S)`` are
  never scored); one frame is taken per segment (``segment_frame``: ``random``, a uniform frame within the
  segment, drawn independently per clip as TSN does; ``first``, VGen's "fixed_first"; or ``middle``); frame i's
  score is weighted by ``exp(-attenuation * |i - F // 2|)``, and the clip's reward is the MEAN over the S segments
  of weight * score (the weights are not renormalised, as in VGen). VGen's defaults: ``lambda_TAR = 1.0``
  (tools/modules/config.py) and 4 segments in the published training config (8 in config.py's defaults);
  here ``attenuation`` = 1.0 and ``segments`` = 4. ``attenuation: 0`` gives the plain mean of the sampled frames.

VADER's frame subsampling (Prabhudesai et al. 2024: the cost of reward gradients grows with the frames, so the
reward sees a random subset of the decoded frames): ``frames: K`` scores K frames drawn without replacement per
clip (sorted, so reductions see them in time order) before the reduction; gradients then reach only those
frames. With ``segmental``, the segments are drawn and subsampling does not apply.

Random draws use ``generator`` (a ``torch.Generator``) or, from a config, a generator seeded by ``seed`` once
when the reward is built; ``seed: null`` draws from torch's global generator.

From a config (the wrapped reward is anything ``load_reward`` takes, or a differentiable reward's name)::

    reward:
      name: per_frame
      kwargs: {reward: tiny_cnn, reduce: segmental, segments: 4, attenuation: 1.0}

The wrapper is differentiable where the image reward is (``differentiable`` copies the wrapped reward's flag;
plain callables of :mod:`diffalign.rewards.differentiable` count as differentiable).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from diffalign.registry import RewardType
from diffalign.rewards.base import Reward

REDUCTIONS = ("mean", "min", "segmental")
SEGMENT_FRAMES = ("random", "first", "middle")
DEFAULT_SEGMENTS = 4         # VGen's InstructVideo training config (segments: 4)
DEFAULT_ATTENUATION = 1.0    # VGen's cfg.lambda_TAR


def check_video(videos) -> torch.Tensor:
    """``videos`` as a float tensor (B, F, C, H, W); ValueError naming the shape otherwise."""
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5:
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"video rewards want a float tensor (B, F, C, H, W) in [0, 1], got {shape}")
    if videos.shape[1] < 1:
        raise ValueError(f"video rewards want at least one frame, got shape {tuple(videos.shape)}")
    return videos if videos.is_floating_point() else videos.float()


def gather_frames(videos: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Frames ``index`` (B, K) of each clip: (B, K, C, H, W). Gradients flow only to the gathered frames."""
    b = torch.arange(videos.shape[0], device=videos.device)[:, None]
    return videos[b, index.to(videos.device)]


def subsample_index(batch: int, num_frames: int, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """VADER's frame subsampling: ``k`` distinct frames per clip, uniformly without replacement, in time order (B, k)."""
    if not 1 <= k <= num_frames:
        raise ValueError(f"per_frame: frames = {k} must be in [1, {num_frames}] (the clip's frames)")
    keys = torch.rand(batch, num_frames, generator=generator)
    return keys.argsort(dim=1)[:, :k].sort(dim=1).values


def segment_index(batch: int, num_frames: int, segments: int, segment_frame: str = "random",
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One frame per segment (B, S): segment s covers frames [s * L, (s + 1) * L) with L = F // S (module doc)."""
    if not 1 <= segments <= num_frames:
        raise ValueError(f"per_frame: segments = {segments} must be in [1, {num_frames}] (the clip's frames)")
    if segment_frame not in SEGMENT_FRAMES:
        raise ValueError(f"per_frame: segment_frame {segment_frame!r} is not one of {list(SEGMENT_FRAMES)}")
    span = num_frames // segments
    start = torch.arange(segments) * span
    if segment_frame == "random":
        offset = torch.randint(span, (batch, segments), generator=generator)
    else:
        offset = torch.full((batch, segments), 0 if segment_frame == "first" else (span - 1) // 2)
    return start[None] + offset


def attenuation_weights(index: torch.Tensor, num_frames: int, attenuation: float = DEFAULT_ATTENUATION) -> torch.Tensor:
    """InstructVideo's temporally attenuated reward weight of frame i: ``exp(-attenuation * |i - F // 2|)``."""
    if not attenuation >= 0:
        raise ValueError(f"per_frame: attenuation must be >= 0, got {attenuation}")
    return torch.exp(-float(attenuation) * (index.double() - num_frames // 2).abs())


def reduce_scores(scores: torch.Tensor, reduce: str, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Frame scores (B, K) -> clip rewards (B,): ``mean``, ``min``, or ``segmental`` (mean of weight * score)."""
    if reduce == "mean":
        return scores.mean(dim=1)
    if reduce == "min":
        return scores.min(dim=1).values
    if reduce == "segmental":
        if weights is None:
            raise ValueError("per_frame: the segmental reduction needs the attenuation weights")
        return (weights.to(scores) * scores).mean(dim=1)
    raise ValueError(f"per_frame: reduce {reduce!r} is not one of {list(REDUCTIONS)}")


def score_frames(reward: Callable, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """The image reward of every frame of (B, K, C, H, W), one call for all: (B, K)."""
    b, k = frames.shape[:2]
    flat = frames.reshape(b * k, *frames.shape[2:])
    out = torch.as_tensor(reward(flat, [p for p in prompts for _ in range(k)]))
    if out.shape != (b * k,):
        raise ValueError(f"per_frame: the image reward returned shape {tuple(out.shape)} for {b * k} frames")
    return out.reshape(b, k)


class VideoReward(Reward):
    """Base of rewards that score whole videos: ``forward(videos (B, F, C, H, W), prompts) -> (B,)`` float32.

    Moves the videos to the reward's device in float32, preprocesses them as one (B * F, C, H, W) batch of frames
    (``preprocess``, e.g. CLIP's resize and normalisation), casts to the reward's dtype and returns
    ``score_video(inputs (B, F, C', H', W'), prompts)``. Differentiable where the model is.
    """

    name = "video_reward"

    def score_video(self, inputs: torch.Tensor, prompts: List[str]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, videos, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        videos = check_video(videos)
        b, f = videos.shape[:2]
        prompts = [""] * b if prompts is None else [str(p) for p in prompts]
        if len(prompts) != b:
            raise ValueError(f"{self.name}: {b} videos but {len(prompts)} prompts")
        flat = self.preprocess(videos.reshape(b * f, *videos.shape[2:]).to(self.device, torch.float32))
        out = self.score_video(flat.reshape(b, f, *flat.shape[1:]).to(self.dtype), prompts)
        if out.shape != (b,):
            raise RuntimeError(f"{self.name}: score_video returned shape {tuple(out.shape)}, expected ({b},)")
        return out.float()


def check_reduction(reduce: str = "mean", segment_frame: str = "random", attenuation: float = DEFAULT_ATTENUATION,
                    frames: Optional[int] = None) -> None:
    """ValueError naming the per_frame setting that is out of range."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"per_frame: reduce {reduce!r} is not one of {list(REDUCTIONS)}")
    if segment_frame not in SEGMENT_FRAMES:
        raise ValueError(f"per_frame: segment_frame {segment_frame!r} is not one of {list(SEGMENT_FRAMES)}")
    if not float(attenuation) >= 0:
        raise ValueError(f"per_frame: attenuation must be >= 0, got {attenuation}")
    if frames is not None and reduce == "segmental":
        raise ValueError("per_frame: frames (VADER subsampling) and reduce 'segmental' both choose frames; use one")
    if frames is not None and int(frames) < 1:
        raise ValueError(f"per_frame: frames must be >= 1, got {frames}")


class PerFrameReward(Reward):
    """An image reward applied to the frames of a video and reduced per clip (see the module doc).

    Returns float32, or float64 where the image reward scored in float64 (as the differentiable rewards do on
    float64 frames). ``last_index`` holds the frames (B, K) scored by the last call and ``last_scores`` their detached scores, so
    a caller (a report, a test) can see which frames the reward looked at.
    """

    name = "per_frame"

    def __init__(self, reward: Callable, reduce: str = "mean", segments: int = DEFAULT_SEGMENTS,
                 attenuation: float = DEFAULT_ATTENUATION, segment_frame: str = "random",
                 frames: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 differentiable: Optional[bool] = None):
        super().__init__()
        check_reduction(reduce, segment_frame, attenuation, frames)
        self.reward = reward  # a torch Module becomes a submodule, so .to() / .eval() reach it
        self.reduce, self.segments, self.attenuation = reduce, int(segments), float(attenuation)
        self.segment_frame, self.frames, self.generator = segment_frame, frames, generator
        self.differentiable = bool(getattr(reward, "differentiable", False) if differentiable is None else differentiable)
        self.last_index: Optional[torch.Tensor] = None
        self.last_scores: Optional[torch.Tensor] = None

    def frame_index(self, batch: int, num_frames: int) -> torch.Tensor:
        """The frames (B, K) the next call scores."""
        if self.reduce == "segmental":
            return segment_index(batch, num_frames, self.segments, self.segment_frame, self.generator)
        if self.frames is not None:
            return subsample_index(batch, num_frames, int(self.frames), self.generator)
        return torch.arange(num_frames).expand(batch, num_frames)

    def forward(self, videos, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        videos = check_video(videos)
        b, f = videos.shape[:2]
        prompts = [""] * b if prompts is None else [str(p) for p in prompts]
        if len(prompts) != b:
            raise ValueError(f"per_frame: {b} videos but {len(prompts)} prompts")
        index = self.frame_index(b, f)
        scores = score_frames(self.reward, gather_frames(videos, index), prompts)
        weights = attenuation_weights(index, f, self.attenuation) if self.reduce == "segmental" else None
        self.last_index, self.last_scores = index, scores.detach()
        out = reduce_scores(scores, self.reduce, weights)
        return out if out.dtype == torch.float64 else out.float()  # float64 stays (gradient checks in float64)


def resolve_image_reward(name: str, device=None, dtype=None, kwargs: Optional[Mapping[str, Any]] = None):
    """The image reward ``name`` with ``kwargs``: a differentiable reward by name (rewards/differentiable.py, what the
    trainer's reward table adds), else anything ``load_reward`` takes. Returns (reward, differentiable)."""
    from diffalign.rewards.differentiable import DIFFERENTIABLE_REWARDS
    from diffalign.rewards.loading import load_reward
    kwargs = dict(kwargs or {})
    if name in DIFFERENTIABLE_REWARDS:
        from diffalign.rewards.registry import bind_reward_kwargs
        return bind_reward_kwargs(DIFFERENTIABLE_REWARDS[name], name, kwargs), True  # plain functions: no dtype
    reward = load_reward(name, device=device, dtype=dtype, **kwargs)
    return reward, bool(getattr(reward, "differentiable", False))


def _inner_reward(name: str, kwargs: Optional[Mapping[str, Any]]):
    """The wrapped image reward's callable, resolved by name without loading weights, kwargs checked."""
    from diffalign.rewards.differentiable import DIFFERENTIABLE_REWARDS
    from diffalign.rewards.registry import bind_reward_kwargs, resolve_reward
    if not isinstance(name, str) or not name:
        raise ValueError(f"per_frame: reward must name an image reward, got {name!r}")
    if name == "per_frame":
        raise ValueError("per_frame: reward must be an image reward, not per_frame itself")
    return bind_reward_kwargs(resolve_reward(name, DIFFERENTIABLE_REWARDS), name, kwargs)


def check_per_frame(kwargs: Mapping[str, Any]) -> None:
    """Config validation of ``per_frame``'s kwargs (loads nothing): the inner reward exists and takes its
    ``reward_kwargs``, and the reduction settings are in range."""
    _inner_reward(kwargs.get("reward", "brightness"), kwargs.get("reward_kwargs"))
    check_reduction(kwargs.get("reduce", "mean"), kwargs.get("segment_frame", "random"),
                    kwargs.get("attenuation", DEFAULT_ATTENUATION), kwargs.get("frames"))


def load_per_frame(directory: Optional[str], device=None, dtype=None, reward: str = "brightness",
                   reward_kwargs: Optional[Dict[str, Any]] = None, reduce: str = "mean",
                   segments: int = DEFAULT_SEGMENTS, attenuation: float = DEFAULT_ATTENUATION,
                   segment_frame: str = "random", frames: Optional[int] = None,
                   seed: Optional[int] = 0) -> PerFrameReward:
    """A :class:`PerFrameReward` around the image reward ``reward`` (built with ``reward_kwargs``); see the module doc."""
    _inner_reward(reward, reward_kwargs)
    image_reward, differentiable = resolve_image_reward(reward, device, dtype, reward_kwargs)
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return PerFrameReward(image_reward, reduce=reduce, segments=segments, attenuation=attenuation,
                          segment_frame=segment_frame, frames=frames, generator=generator,
                          differentiable=differentiable)


PER_FRAME = RewardType(load_per_frame, check=check_per_frame)  # registered as 'per_frame' in diffalign.registry.BUILTIN_REWARDS
