"""``diffalign reward train``: fit a :class:`PreferenceRewardModel` to comparison groups.

The config is a YAML file with dotted ``key=value`` overrides, loaded and type-checked with the
trainer's machinery (:mod:`diffalign.config`); ``output_dir``, ``seed`` and ``data.path`` mean what
they mean there. Each epoch shuffles the training groups (seeded), takes ``train.batch_size`` groups
per AdamW step and logs to OUTPUT_DIR/metrics.jsonl (and tensorboard): the training loss, the held-out
loss and pairwise accuracy per aspect (tie policy of :mod:`diffalign.rewards.training.metrics`). The
final model is saved to OUTPUT_DIR/reward, a folder ``load_reward`` accepts.

Models of tensor samples (``model.kind: trajectory``, AlignDiff's attribute strength model,
:mod:`diffalign.rewards.attribute_strength`): each comparison's samples are (T, D) tensors scored in one
call per batch, one output per aspect; the data are labelled segment pairs (``data.format: segments``,
:mod:`diffalign.data.segment_labels`), or ``data.path: synthetic:trajectories`` for annotator-labelled
synthetic trajectories (:func:`diffalign.rewards.behaviour_annotator.write_synthetic_segment_labels`).

With a frozen backbone, image and prompt embeddings are computed once and only the heads train (an
epoch then costs microseconds per pair); LoRA and full tuning run the backbone every step.

Loss (``loss.name``): "bt" decomposes each group into its C(K, 2) pairs, Eq. 3 per pair with ties per
``loss.tie_policy``; "pl" is Eq. 5 per group (ties by Breslow's rule; tie_policy does not apply). For
several aspects, the loss is the ``loss.aspect_weights``-weighted mean over the aspects that have
labels in the batch.

Ranked edits (HIVE's reward model): with ``model.input_image: true`` the model scores (input image,
instruction, edit) and the data are ranked edits, rows with an ``"input"`` image
(:mod:`diffalign.rewards.training.data`); ``data.path: synthetic:edits`` writes a synthetic set of them
(:func:`diffalign.rewards.training.synthetic.write_synthetic_edits`). The input's embedding is cached
with the edits' when the backbone is frozen.

Ranked 3D results (Reward3D, :mod:`diffalign.rewards.multiview`): with ``model.views: V`` > 0 each sample
is an object seen through V views, which share the encoder and are pooled (``model.view_pooling``); the
data are ranked views (:mod:`diffalign.data.multiview`; ``data.format: multiview``), and
``data.path: synthetic:views`` writes a shapes-world set of them. Frozen-backbone caches then hold
(V, D) per sample.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml

from diffalign.config import ConfigError, from_dict, read_config_data
from diffalign.rewards.training.data import Comparison, rank_tensor, read_comparisons, split_groups
from diffalign.rewards.training.losses import TIE_POLICIES, multi_aspect_loss
from diffalign.rewards.training.metrics import TIE_POLICY, pairwise_accuracy
from diffalign.rewards.training.model import BACKBONE_MODES, PreferenceRewardModel, build_model

SYNTHETIC_PATH = "synthetic:images"
SYNTHETIC_EDITS_PATH = "synthetic:edits"
SYNTHETIC_VIEWS_PATH = "synthetic:views"
SYNTHETIC_TRAJECTORIES_PATH = "synthetic:trajectories"
SYNTHETIC_PATHS = (SYNTHETIC_PATH, SYNTHETIC_EDITS_PATH, SYNTHETIC_VIEWS_PATH, SYNTHETIC_TRAJECTORIES_PATH)
LOSSES = ("bt", "pl")
MODEL_KINDS = ("clip", "trajectory")     # a CLIP-like image+text model | a trajectory encoder over tensor samples
SEGMENTS_FORMAT = "segments"             # diffalign.data.segment_labels (kept in step by a test)


@dataclasses.dataclass
class RewardModelConfig:
    backbone: str = "tiny"                 # "tiny" (random, seeded) or a CLIPModel hub id / local folder
    tiny: Dict[str, Any] = dataclasses.field(default_factory=dict)  # tiny_clip_config arguments
    aspects: List[str] = dataclasses.field(default_factory=lambda: ["overall"])
    primary: Optional[str] = None          # the aspect forward() scores; default "overall" if present, else the first
    head_hidden: int = 0                   # 0: linear heads; > 0: one hidden layer of this width
    backbone_mode: str = "frozen"          # frozen | lora | full
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_targets: List[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])
    input_image: bool = False              # score edits: (input image, instruction, edit), HIVE's reward model
    views: int = 0                         # > 0: score 3D results seen through this many views (Reward3D)
    view_pooling: str = "mean"             # views > 0: mean | attention (diffalign/rewards/multiview.py)
    kind: str = "clip"                     # clip | trajectory (the fields above but aspects/primary are clip's)
    encoder: Dict[str, Any] = dataclasses.field(default_factory=dict)  # trajectory: build_attribute_strength_model
                                           # arguments (encoder, width, layers, heads)


@dataclasses.dataclass
class RewardLossConfig:
    name: str = "bt"                       # bt (Eq. 3 over all pairs of a group) | pl (Eq. 5 per group)
    tie_policy: str = "half"               # bt only: half | davidson | drop (see losses.py)
    tie_nu: float = 1.0                    # Davidson's tie parameter
    aspect_weights: Dict[str, Any] = dataclasses.field(default_factory=dict)  # aspect -> weight (default 1)


@dataclasses.dataclass
class RewardDataConfig:
    path: Optional[str] = None             # a file/folder/hub id the readers know, a ranked JSONL, synthetic:images
                                           # or synthetic:edits
    format: Optional[str] = None           # ranked | multiview | jsonl | pickapic | hpdv2 | imagerewarddb; default:
                                           # detected (multiview when model.views > 0)
    split: str = "train"                   # hub datasets only
    verify_images: bool = True
    max_records: Optional[int] = None
    eval_path: Optional[str] = None        # held-out comparisons; default: eval_fraction of data.path
    eval_fraction: float = 0.2
    cache_images: bool = True              # lora/full: keep every preprocessed image in memory
    synthetic: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the synthetic writer's arguments


@dataclasses.dataclass
class RewardOptimConfig:
    batch_size: int = 32                   # comparison groups per optimiser step
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64              # images per forward when embedding / evaluating


@dataclasses.dataclass
class RewardLoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True


@dataclasses.dataclass
class RewardTrainConfig:
    output_dir: str = ""
    seed: int = 0
    epochs: int = 10
    model: RewardModelConfig = dataclasses.field(default_factory=RewardModelConfig)
    loss: RewardLossConfig = dataclasses.field(default_factory=RewardLossConfig)
    data: RewardDataConfig = dataclasses.field(default_factory=RewardDataConfig)
    train: RewardOptimConfig = dataclasses.field(default_factory=RewardOptimConfig)
    logging: RewardLoggingConfig = dataclasses.field(default_factory=RewardLoggingConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: RewardTrainConfig) -> None:
    """Checks that need more than a key's type, or the file system. Raises ConfigError naming the key."""
    if not cfg.output_dir:
        raise ConfigError("config key 'output_dir' is required (a directory for metrics and the trained reward)")
    for key, value in (("epochs", cfg.epochs), ("train.batch_size", cfg.train.batch_size),
                       ("train.eval_batch_size", cfg.train.eval_batch_size),
                       ("train.learning_rate", cfg.train.learning_rate),
                       ("train.max_grad_norm", cfg.train.max_grad_norm),
                       ("model.lora_rank", cfg.model.lora_rank)):
        if value <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {value!r}")
    if cfg.train.weight_decay < 0 or cfg.model.head_hidden < 0 or cfg.loss.tie_nu < 0:
        raise ConfigError("config keys 'train.weight_decay', 'model.head_hidden' and 'loss.tie_nu' must be >= 0, got "
                          f"{cfg.train.weight_decay!r}, {cfg.model.head_hidden!r}, {cfg.loss.tie_nu!r}")
    if cfg.model.backbone_mode not in BACKBONE_MODES:
        raise ConfigError(f"config key 'model.backbone_mode' must be one of {BACKBONE_MODES}, "
                          f"got {cfg.model.backbone_mode!r}")
    aspects = cfg.model.aspects
    if not aspects or len(set(aspects)) != len(aspects):
        raise ConfigError(f"config key 'model.aspects' must be a non-empty list of distinct names, got {aspects!r}")
    if cfg.model.primary is not None and cfg.model.primary not in aspects:
        raise ConfigError(f"config key 'model.primary' = {cfg.model.primary!r} is not one of model.aspects {aspects}")
    if cfg.loss.name not in LOSSES:
        raise ConfigError(f"config key 'loss.name' must be one of {LOSSES}, got {cfg.loss.name!r}")
    if cfg.loss.tie_policy not in TIE_POLICIES:
        raise ConfigError(f"config key 'loss.tie_policy' must be one of {TIE_POLICIES}, got {cfg.loss.tie_policy!r}")
    for k, w in cfg.loss.aspect_weights.items():
        if k not in aspects:
            raise ConfigError(f"config key 'loss.aspect_weights.{k}': {k!r} is not one of model.aspects {aspects}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"config key 'loss.aspect_weights.{k}' must be a number >= 0, got {w!r}")
    from diffalign.data import FORMATS
    from diffalign.data.multiview import MULTIVIEW_FORMAT
    from diffalign.rewards.training.data import RANKED_FORMAT
    formats = FORMATS + (RANKED_FORMAT, MULTIVIEW_FORMAT, SEGMENTS_FORMAT)
    if cfg.data.format is not None and cfg.data.format not in formats:
        raise ConfigError(f"config key 'data.format' must be one of {formats}, got {cfg.data.format!r}")
    _validate_kind(cfg)
    _validate_views(cfg)
    if not 0 <= cfg.data.eval_fraction < 1:
        raise ConfigError(f"config key 'data.eval_fraction' must lie in [0, 1), got {cfg.data.eval_fraction!r}")
    if cfg.data.path is None:
        raise ConfigError(f"config key 'data.path' is required (preference data, or one of {SYNTHETIC_PATHS})")
    if cfg.data.path.startswith("synthetic:") and cfg.data.path not in SYNTHETIC_PATHS:
        raise ConfigError(f"config key 'data.path': the synthetic sets are {SYNTHETIC_PATHS}, "
                          f"got {cfg.data.path!r}")
    if (cfg.data.path == SYNTHETIC_EDITS_PATH) != cfg.model.input_image and cfg.data.path in SYNTHETIC_PATHS:
        raise ConfigError(f"config key 'model.input_image' = {cfg.model.input_image!r} does not fit data.path "
                          f"{cfg.data.path!r}: ranked edits ({SYNTHETIC_EDITS_PATH!r}) need a model of the input "
                          "image (model.input_image: true), and only they")
    if cfg.data.path not in SYNTHETIC_PATHS:
        from diffalign.data.readers import looks_like_hub_id
        if not os.path.exists(cfg.data.path) and not looks_like_hub_id(cfg.data.path):
            raise ConfigError(f"config key 'data.path': {cfg.data.path!r} does not exist (a file, a folder, a hub id "
                              f"owner/name or {SYNTHETIC_PATH!r})")
    elif cfg.data.synthetic:
        import inspect

        from diffalign.data.multiview import write_shapes_views
        from diffalign.rewards.training.synthetic import write_synthetic_comparisons, write_synthetic_edits
        writer = {SYNTHETIC_EDITS_PATH: write_synthetic_edits, SYNTHETIC_VIEWS_PATH: write_shapes_views}.get(
            cfg.data.path, write_synthetic_comparisons)
        if cfg.data.path == SYNTHETIC_TRAJECTORIES_PATH:
            from diffalign.rewards.behaviour_annotator import write_synthetic_segment_labels as writer
        try:
            inspect.signature(writer).bind("out", **cfg.data.synthetic)
        except TypeError as exc:
            raise ConfigError(f"config key 'data.synthetic' = {cfg.data.synthetic!r}: {exc}") from None
    if cfg.data.eval_path is not None and not os.path.exists(cfg.data.eval_path):
        raise ConfigError(f"config key 'data.eval_path': {cfg.data.eval_path!r} does not exist")


def _validate_views(cfg: RewardTrainConfig) -> None:
    """A multi-view model (model.views > 0) reads ranked views, and only it does."""
    from diffalign.data.multiview import MULTIVIEW_FORMAT
    from diffalign.rewards.multiview import VIEW_POOLINGS
    m, d = cfg.model, cfg.data
    if m.views < 0:
        raise ConfigError(f"config key 'model.views' must be >= 0 (0: one image per sample), got {m.views!r}")
    if m.view_pooling not in VIEW_POOLINGS:
        raise ConfigError(f"config key 'model.view_pooling' must be one of {VIEW_POOLINGS}, got {m.view_pooling!r}")
    multiview_data = d.path == SYNTHETIC_VIEWS_PATH or d.format == MULTIVIEW_FORMAT
    if m.views > 0 and (m.input_image or (d.format is not None and d.format != MULTIVIEW_FORMAT)
                        or (d.path in SYNTHETIC_PATHS and d.path != SYNTHETIC_VIEWS_PATH)):
        raise ConfigError(f"config key 'model.views' = {m.views} (a multi-view model) needs ranked views: "
                          f"data.format {MULTIVIEW_FORMAT!r} or data.path {SYNTHETIC_VIEWS_PATH!r}, and no "
                          f"model.input_image; got data.path {d.path!r}, data.format {d.format!r}")
    if m.views == 0 and multiview_data:
        raise ConfigError(f"data.path {d.path!r} / data.format {d.format!r} holds ranked views: set model.views "
                          "to the number of views per object")
    if m.views > 0 and d.path == SYNTHETIC_VIEWS_PATH and d.synthetic.get("views", m.views) != m.views:
        raise ConfigError(f"config key 'data.synthetic.views' = {d.synthetic['views']!r} differs from "
                          f"model.views = {m.views}")


def _validate_kind(cfg: RewardTrainConfig) -> None:
    """model.kind against the data it is given: trajectory models read segment pairs, CLIP models images."""
    m, d = cfg.model, cfg.data
    if m.kind not in MODEL_KINDS:
        raise ConfigError(f"config key 'model.kind' must be one of {MODEL_KINDS}, got {m.kind!r}")
    segments = d.path == SYNTHETIC_TRAJECTORIES_PATH or d.format == SEGMENTS_FORMAT
    if (m.kind == "trajectory") != segments:
        raise ConfigError(f"config key 'model.kind' = {m.kind!r} does not fit data.path {d.path!r} / data.format "
                          f"{d.format!r}: trajectory models, and only they, read labelled segment pairs (data.format: "
                          f"{SEGMENTS_FORMAT!r} or data.path: {SYNTHETIC_TRAJECTORIES_PATH!r})")
    if m.kind == "trajectory":
        if m.input_image:
            raise ConfigError("config key 'model.input_image' must be false for model.kind 'trajectory'")
        import inspect

        from diffalign.rewards.attribute_strength import build_attribute_strength_model
        try:
            inspect.signature(build_attribute_strength_model).bind(m.aspects, 1, 1, **m.encoder)
        except TypeError as exc:
            raise ConfigError(f"config key 'model.encoder' = {m.encoder!r}: {exc}") from None
    elif m.encoder:
        raise ConfigError(f"config key 'model.encoder' is for model.kind 'trajectory', got {m.encoder!r} with "
                          f"kind {m.kind!r}")


def load_reward_train_config(path: Optional[str] = None, overrides: Optional[List[str]] = None,
                             data: Optional[Dict[str, Any]] = None) -> RewardTrainConfig:
    """Read YAML (or take ``data``), apply overrides, type-check and validate. Raises ConfigError."""
    cfg = from_dict(RewardTrainConfig, read_config_data(path, overrides, data))
    validate(cfg)
    return cfg


# ---- the training run ----------------------------------------------------------------------------------
def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, **kw)


class RewardTrainer:
    def __init__(self, cfg: RewardTrainConfig):
        self.cfg = cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # data
    def load_data(self):
        d, cfg = self.cfg.data, self.cfg
        path = d.path
        if path == SYNTHETIC_PATH:
            from diffalign.rewards.training.synthetic import write_synthetic_comparisons
            kw = {"aspects": cfg.model.aspects, "seed": cfg.seed, **d.synthetic}
            path = write_synthetic_comparisons(os.path.join(cfg.output_dir, "synthetic_data"), **kw)
        elif path == SYNTHETIC_EDITS_PATH:
            from diffalign.rewards.training.synthetic import write_synthetic_edits
            path = write_synthetic_edits(os.path.join(cfg.output_dir, "synthetic_data"),
                                         **{"seed": cfg.seed, **d.synthetic})
        elif path == SYNTHETIC_VIEWS_PATH:
            from diffalign.data.multiview import write_shapes_views
            path = write_shapes_views(os.path.join(cfg.output_dir, "synthetic_data"),
                                      **{"seed": cfg.seed, "views": cfg.model.views, **d.synthetic})
        elif path == SYNTHETIC_TRAJECTORIES_PATH:
            from diffalign.rewards.behaviour_annotator import write_synthetic_segment_labels
            kw = {"aspects": cfg.model.aspects, "seed": cfg.seed, **d.synthetic}
            path = write_synthetic_segment_labels(os.path.join(cfg.output_dir, "synthetic_data"), **kw)
        groups, report = self._read(path, d.max_records)
        if d.eval_path is not None:
            train, held = groups, self._read(d.eval_path)[0]
        else:
            train, held = split_groups(groups, d.eval_fraction, cfg.seed)
        for key, part in (("data.path", groups), ("data.eval_path", held)):
            edits = sum(g.input is not None for g in part)
            if cfg.model.input_image and edits < len(part):
                raise ValueError(f"model.input_image is true but {key} holds {len(part) - edits} comparison groups "
                                 "without an 'input' image (ranked edits need one per row)")
            if not cfg.model.input_image and edits:
                raise ValueError(f"{key} holds ranked edits (rows with an 'input' image): set model.input_image: "
                                 "true to train a reward model of (input, instruction, edit)")
        if not train:
            raise ValueError(f"data.path {d.path!r}: no training comparisons left after holding out data.eval_fraction")
        return train, held, report

    def _read(self, path: str, max_records: Optional[int] = None):
        """(groups, report) of a data file: labelled segment pairs for a trajectory model, ranked views (each sample a
        list of view paths) for a multi-view model, else comparisons of images."""
        d = self.cfg.data
        if self.cfg.model.kind == "trajectory":
            from diffalign.rewards.attribute_strength import read_segment_comparisons
            return read_segment_comparisons(path, self.cfg.model.aspects, max_records)
        if self.cfg.model.views > 0:
            from diffalign.rewards.multiview import multiview_comparisons
            return multiview_comparisons(path, self.cfg.model.views, d.verify_images, max_records)
        return read_comparisons(path, d.format, d.split, d.verify_images, max_records)

    # embeddings
    def _pixels(self, model: PreferenceRewardModel, group: Comparison) -> torch.Tensor:
        from diffalign.rewards.multiview import view_pixels
        return view_pixels(model, group.samples)  # a multi-view sample gives its views in order

    def _embed_groups(self, model: PreferenceRewardModel, groups: Sequence[Comparison], kmax: int, desc: str):
        """(G, K, D) image (G, K, V, D for a model of V views), (G, D) prompt and (G, D) input-image embeddings
        (None unless the model scores edits), no grad; padded slots zero."""
        from diffalign.rewards.multiview import view_pixels
        dim = model.backbone.config.projection_dim
        views = getattr(model, "views", 0)
        img = torch.zeros(len(groups), kmax, *((views,) if views else ()), dim)
        flat = [(gi, k) for gi, g in enumerate(groups) for k in range(len(g.samples))]
        bs = self.cfg.train.eval_batch_size
        with torch.no_grad():
            for start in _progress(range(0, len(flat), bs), self.cfg.logging.progress_bar, desc=desc, leave=False):
                chunk = flat[start:start + bs]
                pix = view_pixels(model, [groups[gi].samples[k] for gi, k in chunk])
                emb = model.embed_pixels(pix).cpu()
                emb = emb.view(len(chunk), views, dim) if views else emb
                for (gi, k), e in zip(chunk, emb):
                    img[gi, k] = e
            txt = self._embed_prompts(model, [g.prompt for g in groups])
            inp = None
            if model.input_image:
                inp = torch.cat([model.embed_pixels(self._input_pixels(model, groups[s:s + bs])).cpu()
                                 for s in range(0, len(groups), bs)])
        return img, txt, inp

    def _input_pixels(self, model: PreferenceRewardModel, groups: Sequence[Comparison]) -> torch.Tensor:
        """Each group's input read as scoring reads it (rewards/editing_inputs.py: at its first edit's size), so
        the trained model scores a held-out edit as `diffalign eval preference` will."""
        from diffalign.data.types import load_sample
        from diffalign.rewards.base import as_pixels
        from diffalign.rewards.editing_inputs import input_images
        sizes = [tuple(as_pixels([load_sample(g.samples[0])])[0].shape[-2:]) for g in groups]
        return torch.cat([model.pixel_values(input_images([g.item], size)) for g, size in zip(groups, sizes)])

    def _embed_prompts(self, model: PreferenceRewardModel, prompts: Sequence[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(prompts))
        bs = self.cfg.train.eval_batch_size
        table = {}
        for start in range(0, len(unique), bs):
            part = unique[start:start + bs]
            for p, e in zip(part, model.text_embeds(part).cpu()):
                table[p] = e
        return torch.stack([table[p] for p in prompts])

    # loss
    def loss(self, scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """scores, ranks: (G, K, A) -> the aspect-weighted loss over aspects labelled in this batch."""
        lc = self.cfg.loss
        weights = [float(lc.aspect_weights.get(a, 1.0)) for a in self.cfg.model.aspects]
        return multi_aspect_loss(scores, ranks, lc.name, weights, lc.tie_policy, lc.tie_nu)

    def evaluate(self, model, held, held_emb, held_ranks) -> Dict[str, Any]:
        """Held-out loss and pairwise accuracy per aspect (the primary one also as eval_accuracy)."""
        if not held:
            return {}
        model.eval()
        with torch.no_grad():
            scores = self._scores(model, held, held_emb, range(len(held)))
            out = {"eval_loss": float(self.loss(scores, held_ranks.to(scores.device)))}
        for ai, aspect in enumerate(model.aspects):
            acc = pairwise_accuracy(scores[..., ai], held_ranks[..., ai])
            if acc.n_pairs:
                out[f"eval_accuracy/{aspect}"] = acc.accuracy
                if aspect == model.primary:
                    out["eval_accuracy"] = acc.accuracy
                    out["eval_pairs"], out["eval_label_ties"] = acc.n_pairs, acc.n_ties
        return out

    def _scores(self, model: PreferenceRewardModel, groups, emb, index) -> torch.Tensor:
        """(b, K, A) scores of groups[index]; from cached embeddings (frozen) or through the backbone."""
        index = list(index)
        if self.cfg.model.kind != "clip":
            return self._tensor_scores(model, groups, index)
        if emb is not None:
            img, txt, inp = emb
            img, txt = img[index].to(self.device), txt[index].to(self.device)
            b, k = img.shape[:2]
            inp = inp[index].to(self.device).repeat_interleave(k, dim=0) if inp is not None else None
            s = model.head_scores(img.flatten(0, 1), txt.repeat_interleave(k, dim=0), inp)
            return s.view(b, k, -1)
        kmax = max(len(g.samples) for g in groups)
        pixels = []
        for gi in index:  # one backbone call for the whole batch
            g = groups[gi]
            pix = self._pixel_cache.get(id(g))
            if pix is None:
                pix = self._pixels(model, g).cpu()
                if self.cfg.data.cache_images:
                    self._pixel_cache[id(g)] = pix
            pixels.append(pix)
        sizes = [len(groups[gi].samples) for gi in index]
        img = model.embed_pixels(torch.cat(pixels).to(self.device))
        if getattr(model, "views", 0):
            img = img.view(-1, model.views, img.shape[-1])
        repeat = torch.tensor(sizes, device=self.device)
        txt = model.text_embeds([groups[gi].prompt for gi in index]).repeat_interleave(repeat, dim=0)
        inp = None
        if model.input_image:
            pix = self._input_pixels(model, [groups[gi] for gi in index]).to(self.device)
            inp = model.embed_pixels(pix).repeat_interleave(repeat, dim=0)
        flat = model.head_scores(img, txt, inp)
        out = flat.new_zeros(len(index), kmax, flat.shape[1])
        for row, chunk in enumerate(torch.split(flat, sizes)):
            out[row, : chunk.shape[0]] = chunk
        return out

    def _tensor_scores(self, model, groups, index: List[int]) -> torch.Tensor:
        """(b, K, A) scores of groups[index] whose samples are tensors: one ``model.scores`` call for the batch."""
        sizes = [len(groups[gi].samples) for gi in index]
        flat = model.scores(torch.stack([s for gi in index for s in groups[gi].samples]).to(self.device))
        out = flat.new_zeros(len(index), max(len(g.samples) for g in groups), flat.shape[1])
        for row, chunk in enumerate(torch.split(flat, sizes)):
            out[row, : chunk.shape[0]] = chunk
        return out

    def _build_model(self, train: Sequence[Comparison]):
        m, cfg = self.cfg.model, self.cfg
        if m.kind == "trajectory":
            from diffalign.rewards.attribute_strength import build_attribute_strength_model
            samples = torch.stack([s for g in train for s in g.samples])
            model = build_attribute_strength_model(m.aspects, samples.shape[-1], samples.shape[1], primary=m.primary,
                                                   seed=cfg.seed, **m.encoder)
            model.fit_inputs(samples)  # feature statistics of the training segments only
            return model
        model = build_model(m.backbone, m.aspects, m.primary, m.head_hidden, m.tiny, seed=cfg.seed,
                            input_image=m.input_image)
        if m.views > 0:
            from diffalign.rewards.multiview import MultiViewRewardModel
            model = MultiViewRewardModel.from_model(model, m.views, m.view_pooling)
        model.set_backbone_mode(m.backbone_mode, m.lora_rank, m.lora_alpha, m.lora_targets)
        return model

    def train(self) -> Dict[str, Any]:
        from diffalign.trainer.logging import MetricsLogger
        cfg = self.cfg
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        train, held, report = self.load_data()
        print(f"reward data: {report.summary()}; {len(train)} training / {len(held)} held-out groups")
        # the held-out split as a file, so `diffalign eval preference --data OUTPUT_DIR/held_out.jsonl` redoes it
        if held and self.cfg.data.eval_path is None:
            from diffalign.rewards.training.data import write_ranked
            write_ranked(held, os.path.join(cfg.output_dir, "held_out.jsonl"))
        m = cfg.model
        model = self._build_model(train)
        model.to(self.device)
        self._pixel_cache: Dict[int, torch.Tensor] = {}
        kmax = max(len(g.samples) for g in list(train) + list(held))
        train_ranks = rank_tensor(train, m.aspects, model.primary).float()
        held_ranks = rank_tensor(held, m.aspects, model.primary).float() if held else None
        if train_ranks.shape[1] < kmax:
            pad = torch.full((len(train), kmax - train_ranks.shape[1], len(m.aspects)), math.nan)
            train_ranks = torch.cat([train_ranks, pad], dim=1)
        if held and held_ranks.shape[1] < kmax:
            pad = torch.full((len(held), kmax - held_ranks.shape[1], len(m.aspects)), math.nan)
            held_ranks = torch.cat([held_ranks, pad], dim=1)
        frozen = m.backbone_mode == "frozen" and m.kind == "clip"
        if m.kind == "clip":
            model.backbone.eval()
        train_emb = self._embed_groups(model, train, kmax, "embed train") if frozen else None
        held_emb = self._embed_groups(model, held, kmax, "embed held-out") if frozen and held else None
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
        logger = MetricsLogger(cfg.output_dir, tensorboard=cfg.logging.tensorboard)
        gen = torch.Generator().manual_seed(cfg.seed)
        bs = cfg.train.batch_size
        last: Dict[str, Any] = {}
        try:
            for epoch in range(cfg.epochs):
                t0 = time.perf_counter()
                model.train()
                if frozen:
                    model.backbone.eval()
                perm = torch.randperm(len(train), generator=gen).tolist()
                losses = []
                steps = range(0, len(train), bs)
                for s0 in _progress(steps, cfg.logging.progress_bar, desc=f"epoch {epoch}", leave=False):
                    idx = perm[s0:s0 + bs]
                    scores = self._scores(model, train, train_emb, idx)
                    loss = self.loss(scores, train_ranks[idx].to(self.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
                    opt.step()
                    losses.append(float(loss.detach()))
                metrics = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "grad_norm": float(grad_norm)}
                metrics.update(self.evaluate(model, held, held_emb, held_ranks))
                metrics["epoch_s"] = time.perf_counter() - t0
                logger.log(metrics)
                last = metrics
                if cfg.logging.progress_bar:
                    acc = metrics.get("eval_accuracy")
                    print(f"epoch {epoch}: train_loss {metrics['train_loss']:.4f}"
                          + (f", held-out accuracy {acc:.3f}" if acc is not None else ""))
        finally:
            logger.close()
        seconds = time.perf_counter() - start
        out_dir = os.path.join(cfg.output_dir, "reward")
        summary = {"epochs": cfg.epochs, "loss": cfg.loss.name, "tie_policy": cfg.loss.tie_policy,
                   "backbone": m.backbone, "backbone_mode": m.backbone_mode, "train_groups": len(train),
                   "held_out_groups": len(held), "held_out_accuracy": last.get("eval_accuracy"),
                   "held_out_accuracy_by_aspect": {a: last.get(f"eval_accuracy/{a}") for a in m.aspects},
                   "accuracy_tie_policy": TIE_POLICY, "train_seconds": seconds, "data": cfg.data.path}
        if m.views > 0:
            summary.update(views=m.views, view_pooling=m.view_pooling)
        model.save(out_dir, extra={"training": summary})
        with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"saved the reward model to {out_dir} ({seconds:.1f} s; held-out accuracy "
              f"{last.get('eval_accuracy', float('nan')):.3f})")
        self.model, self.summary = model, summary
        return summary


def train_reward_model(cfg: RewardTrainConfig) -> Dict[str, Any]:
    """Run a training and return its summary (also in OUTPUT_DIR/summary.json)."""
    return RewardTrainer(cfg).train()


__all__ = ["RewardTrainConfig", "load_reward_train_config", "train_reward_model", "RewardTrainer"]
