"""AlignDiff's attribute strength model: a trajectory encoder with one output per behaviour attribute.

Dong et al. 2023 ("AlignDiff: Aligning Diverse Human Preferences via Behavior-Customisable Diffusion
Model", arXiv:2310.02054) train a transformer encoder over a trajectory segment whose per-attribute output
is a relative strength, with the Bradley-Terry loss per attribute on human comparisons ("which segment shows
more <attribute>?"), then relabel the behaviour dataset with the predicted strengths normalised to [0, 1]
over the dataset (:func:`relabel`), which is what the attribute-conditioned planner is trained on and asked
for. The authors' code (github.com/ZibinDong/AlignDiff-ICLR2024, eval.py) normalises a predicted strength
by the minimum and maximum over the relabelled dataset, (s - min) / (max - min), and scores a plan by the
mean |normalised strength - requested| over the requested attributes; that is the default here
(``method="minmax"``). ``method="rank"`` uses the percentile within the dataset instead (uniform
strengths, robust to a few extreme segments).

Here the model is trained by ``diffalign reward train`` (diffalign/trainer/reward_model.py, ``model.kind:
trajectory``) on labelled segment pairs (:mod:`diffalign.data.segment_labels`), each pair a comparison
group of K = 2 labelled on one aspect. Encoders (``encoder``): ``"transformer"`` (input projection, learned
positions, ``layers`` pre-norm transformer layers, mean pooling) or ``"mlp"`` (the flattened segment
through one hidden layer). Inputs are standardised per feature with statistics of the training segments
(:meth:`AttributeStrengthModel.fit_inputs`). The authors' model reads observations only, through a
transformer with an extra learned token whose output is the strengths; this one reads every value per step
it is given (pass observation-only segments to match) and pools by the mean.

As a reward (``load_reward(DIR)``, type ``"attribute_strength"``): ``forward(trajectories, prompts)``
gives the primary aspect's raw score; items carrying requested strengths ``{"targets": {aspect: s}}`` give
``-mean |strength - s|`` instead, strengths normalised by the dataset statistics that :func:`calibrate`
stores (the same normalisation :func:`relabel` applies to the dataset itself).

Saved folder: ``diffalign_reward.json`` (``{"type": "attribute_strength", "aspects", "primary",
"input_dim", "horizon", "encoder", "width", "layers", "heads", "num_reference", "strength_method"}``) and
``model.safetensors``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from diffalign.registry import RewardType
from diffalign.rewards.base import REWARD_CONFIG_FILE, Reward, read_reward_meta
from diffalign.rewards.behaviour import requested_targets, target_error

MODEL_TYPE = "attribute_strength"
WEIGHTS_NAME = "model.safetensors"
ENCODERS = ("transformer", "mlp")
STRENGTH_METHODS = ("minmax", "rank")


class AttributeStrengthModel(Reward):
    """``scores(x) -> (B, A)`` raw strengths of (B, T, D) segments; ``forward`` is the reward (module doc)."""

    name = MODEL_TYPE
    differentiable = True

    def __init__(self, aspects: Sequence[str], input_dim: int, horizon: int, encoder: str = "transformer",
                 width: int = 32, layers: int = 2, heads: int = 2, primary: Optional[str] = None,
                 num_reference: int = 0, strength_method: str = "minmax"):
        super().__init__()
        aspects = list(aspects)
        if not aspects or len(set(aspects)) != len(aspects):
            raise ValueError(f"model.aspects must be a non-empty list of distinct names, got {aspects}")
        if encoder not in ENCODERS:
            raise ValueError(f"attribute strength encoder must be one of {ENCODERS}, got {encoder!r}")
        if min(input_dim, horizon, width, layers, heads) < 1 or width % heads:
            raise ValueError(f"attribute strength model: input_dim, horizon, width, layers, heads must be >= 1 and "
                             f"width divisible by heads, got {input_dim}, {horizon}, {width}, {layers}, {heads}")
        self.aspects, self.primary = aspects, primary or aspects[0]
        if self.primary not in aspects:
            raise ValueError(f"model.primary {self.primary!r} is not one of model.aspects {aspects}")
        self.input_dim, self.horizon, self.encoder = int(input_dim), int(horizon), encoder
        self.width, self.layers, self.heads = int(width), int(layers), int(heads)
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        # calibrate(): per aspect, the dataset's (min, max) raw scores ("minmax") or all of them sorted ("rank")
        if strength_method not in STRENGTH_METHODS:
            raise ValueError(f"strength normalisation must be one of {STRENGTH_METHODS}, got {strength_method!r}")
        self.strength_method = strength_method
        self.register_buffer("reference", torch.zeros(len(aspects), int(num_reference)))
        if encoder == "transformer":
            self.embed = nn.Linear(input_dim, width)
            self.position = nn.Parameter(torch.zeros(horizon, width))
            layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
            self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)
        else:
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(horizon * input_dim, width), nn.GELU())
        self.head = nn.Linear(width, len(aspects))

    # ---- inputs ---------------------------------------------------------------------------------------
    def _check(self, x: Any) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[-1] != self.input_dim or x.shape[1] != self.horizon:
            raise ValueError(f"{MODEL_TYPE}: expected segments (B, {self.horizon}, {self.input_dim}), got shape "
                             f"{tuple(x.shape)}")
        return x.to(self.input_mean.device, self.input_mean.dtype)

    @torch.no_grad()
    def fit_inputs(self, segments: torch.Tensor) -> None:
        """Standardise each feature with the mean / std over these (training) segments' steps."""
        x = self._check(segments).reshape(-1, self.input_dim)
        self.input_mean.copy_(x.mean(dim=0))
        self.input_std.copy_(x.std(dim=0).clamp_min(1e-6))

    # ---- scoring --------------------------------------------------------------------------------------
    def scores(self, segments: Any, prompts: Optional[Sequence[Any]] = None) -> torch.Tensor:
        """(B, A) raw strengths in the order of ``self.aspects`` (differentiable in the segments)."""
        x = (self._check(segments) - self.input_mean) / self.input_std
        if self.encoder == "transformer":
            h = self.norm(self.body(self.embed(x) + self.position)).mean(dim=1)
        else:
            h = self.body(x)
        return self.head(h).float()

    def strengths(self, segments: Any) -> torch.Tensor:
        """(B, A) strengths normalised by the calibration dataset (module docstring): "minmax" maps the dataset's
        range to [0, 1] (a new segment may fall outside it), "rank" gives the percentile within the dataset."""
        if self.reference.shape[1] == 0:
            raise ValueError(f"{MODEL_TYPE}: the model has no calibration reference; run "
                             "diffalign.rewards.attribute_strength.calibrate(model, dataset) and save it again")
        scores = self.scores(segments)
        if self.strength_method == "rank":
            return empirical_cdf(scores, self.reference)
        return minmax_normalise(scores, self.reference[:, 0], self.reference[:, -1])

    def forward(self, segments: Any, prompts: Optional[Sequence[Any]] = None) -> torch.Tensor:
        x = self._check(segments)
        targets = requested_targets(prompts, x.shape[0])
        if not any(targets):
            return self.scores(x)[:, self.aspects.index(self.primary)]
        empty = [i for i, t in enumerate(targets) if not set(t) & set(self.aspects)]
        if empty:
            raise ValueError(f"{MODEL_TYPE}: prompt items {empty[:5]} request none of the model's aspects "
                             f"{self.aspects}")
        return -target_error(self.strengths(x), self.aspects, targets)

    # ---- save -----------------------------------------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        return {"type": MODEL_TYPE, "format_version": 1, "aspects": self.aspects, "primary": self.primary,
                "input_dim": self.input_dim, "horizon": self.horizon, "encoder": self.encoder, "width": self.width,
                "layers": self.layers, "heads": self.heads, "num_reference": int(self.reference.shape[1]),
                "strength_method": self.strength_method}

    def save(self, directory: str, extra: Optional[Dict[str, Any]] = None) -> str:
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  os.path.join(directory, WEIGHTS_NAME))
        with open(os.path.join(directory, REWARD_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump({**self.config(), **(extra or {})}, f, indent=2)
        return directory


def empirical_cdf(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, A) fraction of ``reference[a]`` (sorted, (A, R)) strictly below each score, ties counted half: a
    score's mid-rank percentile among the reference, in [0, 1]."""
    ref = reference.to(scores)
    cols = []
    for a in range(ref.shape[0]):
        below = torch.searchsorted(ref[a].contiguous(), scores[:, a].contiguous(), right=False)
        upto = torch.searchsorted(ref[a].contiguous(), scores[:, a].contiguous(), right=True)
        cols.append((below + upto).to(scores.dtype) / (2 * ref.shape[1]))
    return torch.stack(cols, dim=1)


def build_attribute_strength_model(aspects: Sequence[str], input_dim: int, horizon: int, encoder: str = "transformer",
                                   width: int = 32, layers: int = 2, heads: int = 2, primary: Optional[str] = None,
                                   seed: int = 0) -> AttributeStrengthModel:
    """A fresh model, its weights drawn from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return AttributeStrengthModel(aspects, input_dim, horizon, encoder, width, layers, heads, primary)


def _batched_scores(model: AttributeStrengthModel, dataset: Any, batch_size: int) -> torch.Tensor:
    x = torch.as_tensor(dataset)
    with torch.no_grad():
        return torch.cat([model.scores(x[s:s + batch_size]).cpu() for s in range(0, x.shape[0], batch_size)])


def rank_normalise(values: torch.Tensor) -> torch.Tensor:
    """(N, A) -> (N, A) each column's rank / (N - 1) in [0, 1] (the smallest 0, the largest 1), equal values
    sharing their mean rank."""
    v = values.double()
    n = v.shape[0]
    if n < 2:
        raise ValueError(f"rank-normalising strengths needs at least 2 segments, got {n}")
    # mid-rank = (#below + (#equal - 1) / 2); O(N log N) by sorting
    out = torch.empty_like(v)
    for a in range(v.shape[1]):
        col = v[:, a].contiguous()
        s = torch.sort(col).values
        below = torch.searchsorted(s, col, right=False)
        upto = torch.searchsorted(s, col, right=True)
        out[:, a] = (below + upto - 1).double() / 2 / (n - 1)
    return out.float()


def minmax_normalise(scores: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(B, A) (score - low) / (high - low) per aspect (AlignDiff's eval.py); 0.5 where high == low."""
    low, high = low.to(scores), high.to(scores)
    span = high - low
    return torch.where(span > 0, (scores - low) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.full_like(scores, 0.5))


def _check_method(method: str) -> None:
    if method not in STRENGTH_METHODS:
        raise ValueError(f"strength normalisation must be one of {STRENGTH_METHODS}, got {method!r}")


def relabel(dataset: Any, model: AttributeStrengthModel, method: str = "minmax", batch_size: int = 256) -> torch.Tensor:
    """(N, A) strengths in [0, 1] of every segment of ``dataset`` (N, T, D): the model's raw scores normalised
    over the dataset per attribute, by its range ("minmax", AlignDiff's) or by rank ("rank": i / (N - 1), ties
    sharing their mean rank). Monotone in the raw score either way."""
    _check_method(method)
    scores = _batched_scores(model, dataset, batch_size)
    if method == "rank":
        return rank_normalise(scores)
    return minmax_normalise(scores, scores.amin(dim=0), scores.amax(dim=0))


def calibrate(model: AttributeStrengthModel, dataset: Any, method: str = "minmax",
              batch_size: int = 256) -> AttributeStrengthModel:
    """Store the dataset statistics :meth:`~AttributeStrengthModel.strengths` normalises by: the model's
    (min, max) raw scores over ``dataset`` ("minmax": a dataset segment's strength is then exactly its
    :func:`relabel` value) or all of them sorted ("rank": a segment's mid-rank percentile). Returns the model."""
    _check_method(method)
    ref = _batched_scores(model, dataset, batch_size).T.sort(dim=1).values.contiguous()
    model.reference = (ref if method == "rank" else ref[:, [0, -1]]).to(model.input_mean.device)
    model.strength_method = method
    return model


def segment_comparisons(prefs) -> List[Any]:
    """Labelled segment pairs (:class:`diffalign.data.segment_labels.SegmentPreferences`) as comparison groups
    for the reward-model trainer: samples [a, b], the pair's attribute ranked (label 1: a first, 0: b first,
    0.5: tied); the group's prompt is the attribute's name."""
    from diffalign.rewards.training.data import Comparison
    ranks = {1.0: [1.0, 2.0], 0.0: [2.0, 1.0], 0.5: [1.0, 1.0]}
    return [Comparison(attr, [prefs.a[i], prefs.b[i]], {attr: ranks[float(prefs.labels[i])]})
            for i, attr in enumerate(prefs.attributes)]


def read_segment_comparisons(path: str, aspects: Optional[Sequence[str]] = None,
                             max_records: Optional[int] = None) -> Tuple[List[Any], Any]:
    """(comparison groups, load report) of a segment-label file (:func:`read_segment_labels`), keeping the
    ``aspects`` the model has (others counted as unknown_attribute)."""
    from diffalign.data.segment_labels import read_segment_labels
    prefs = read_segment_labels(path, attributes=aspects, max_records=max_records)
    return segment_comparisons(prefs), prefs.report


def load_attribute_strength(directory: Optional[str], device=None, dtype=None, **kwargs) -> AttributeStrengthModel:
    """A model saved by :meth:`AttributeStrengthModel.save`, in eval mode. ``aspect=NAME`` makes ``forward``
    score that aspect (without targets) instead of the primary one."""
    from safetensors.torch import load_file
    meta = read_reward_meta(directory, MODEL_TYPE, "diffalign reward train with model.kind: trajectory writes "
                                                   "OUTPUT_DIR/reward", kwargs)
    primary = kwargs.get("aspect") or meta["primary"]
    if primary not in meta["aspects"]:
        raise ValueError(f"aspect {primary!r} is not one of the model's aspects {meta['aspects']}")
    model = AttributeStrengthModel(meta["aspects"], meta["input_dim"], meta["horizon"], meta["encoder"], meta["width"],
                                   meta["layers"], meta["heads"], primary, meta.get("num_reference", 0),
                                   meta.get("strength_method", "minmax"))
    try:
        model.load_state_dict(load_file(os.path.join(directory, WEIGHTS_NAME)))
    except RuntimeError as exc:
        raise ValueError(f"{directory}/{WEIGHTS_NAME} does not fit its config {path}: {exc}") from None
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


ATTRIBUTE_STRENGTH = RewardType(load_attribute_strength)  # reward type MODEL_TYPE in diffalign.registry

