"""A multi-view preference reward model of 3D results, in the spirit of DreamReward's Reward3D.

Reward3D (Ye et al. 2024, "DreamReward: Text-to-3D Generation with Human Preference"; survey section
4.4) scores a 3D result from several rendered views of it. Here a score of (prompt, V views) is
``head_a([u, v, u * v])`` as in :class:`~diffalign.rewards.training.model.PreferenceRewardModel`, with v
the prompt's embedding and u the *pooled* view embedding: every view goes through the same image
encoder (shared across views), and ``pooling`` combines the V normalised embeddings e_1..e_V:

- ``mean``: u = (1/V) sum_v e_v (not renormalised: views that disagree give a shorter u);
- ``attention``: u = sum_v softmax_v(w . e_v) e_v, w a learnt vector (zero at start, i.e. the mean),
  so the model can weigh informative views more. Both are invariant to the order of the views.

It is trained by ``diffalign reward train`` (:mod:`diffalign.trainer.reward_model`, ``model.views`` > 0)
with the same Bradley-Terry / Plackett-Luce losses on ranked 3D results (:mod:`diffalign.data.multiview`),
evaluated by pairwise accuracy, and loaded with ``load_reward(folder)`` (reward type
``"multiview_preference_model"``).

Called as ``reward(views, prompts) -> Tensor[B]``: ``views`` (B, V, 3, H, W) in [0, 1] (differentiable,
e.g. renders of B objects) or B lists of V images (PIL, paths, uint8 arrays).

Saved folder: ``diffalign_reward.json`` = ``{"type": "multiview_preference_model", "views", "pooling",
"base": "base", ...}``, ``view_pool.safetensors`` (the pooling weights) and ``base/``, the shared encoder
and heads saved as a plain ``preference_model`` folder.
"""
from __future__ import annotations

import json
import os
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from diffalign.registry import RewardType
from diffalign.rewards.base import REWARD_CONFIG_FILE, read_reward_meta
from diffalign.rewards.training.model import PreferenceRewardModel, load_preference_model

MULTIVIEW_TYPE = "multiview_preference_model"
VIEW_POOLINGS = ("mean", "attention")
POOL_WEIGHTS = "view_pool.safetensors"
BASE_FOLDER = "base"


class ViewPooling(nn.Module):
    """(N, V, D) view embeddings -> (N, D); see the module docstring for the two poolings."""

    def __init__(self, dim: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in VIEW_POOLINGS:
            raise ValueError(f"model.view_pooling must be one of {VIEW_POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        if pooling == "attention":
            self.query = nn.Parameter(torch.zeros(dim))

    def weights(self, embeds: torch.Tensor) -> torch.Tensor:
        """(N, V) weights of the views (each row sums to 1)."""
        if self.pooling == "mean":
            return embeds.new_full(embeds.shape[:2], 1.0 / embeds.shape[1])
        return torch.softmax(embeds @ self.query.to(embeds.dtype), dim=1)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.dim() != 3:
            raise ValueError(f"view pooling expects (N, V, D) embeddings, got shape {tuple(embeds.shape)}")
        return (self.weights(embeds).unsqueeze(-1) * embeds).sum(dim=1)


class MultiViewRewardModel(PreferenceRewardModel):
    """``forward(views, prompts) -> Tensor[B]``: the primary aspect's score of each object's ``views`` views."""

    name = MULTIVIEW_TYPE

    def __init__(self, backbone, tokenizer, aspects: Sequence[str], primary: Optional[str] = None,
                 head_hidden: int = 0, image_size: Optional[int] = None, image_mean=None, image_std=None,
                 max_length: Optional[int] = None, tokenizer_kind: str = "char", views: int = 4,
                 pooling: str = "mean"):
        extra = {k: v for k, v in dict(image_mean=image_mean, image_std=image_std).items() if v is not None}
        super().__init__(backbone, tokenizer, aspects, primary, head_hidden, image_size, max_length=max_length,
                         tokenizer_kind=tokenizer_kind, **extra)
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ValueError(f"model.views must be an integer >= 1 (views per 3D result), got {views!r}")
        self.views = views
        self.view_pool = ViewPooling(backbone.config.projection_dim, pooling)

    @classmethod
    def from_model(cls, model: PreferenceRewardModel, views: int, pooling: str = "mean") -> "MultiViewRewardModel":
        """A multi-view model sharing ``model``'s encoder, tokenizer and (a copy of its) heads."""
        if model.input_image:
            raise ValueError("a multi-view reward model scores (prompt, views), not edits: build it from a model "
                             "without input_image")
        out = cls(model.backbone, model.tokenizer, model.aspects, model.primary, model.head_hidden, model.image_size,
                  model.image_mean.flatten().tolist(), model.image_std.flatten().tolist(), model.max_length,
                  model.tokenizer_kind, views=views, pooling=pooling)
        out.heads.load_state_dict(model.heads.state_dict())
        return out.to(model.device)

    @property
    def pooling(self) -> str:
        return self.view_pool.pooling

    def head_scores(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                    input_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, A) scores from (N, V, D) view embeddings (pooled here) and (N, D) prompt embeddings."""
        if image_embeds.dim() != 3 or image_embeds.shape[1] != self.views:
            raise ValueError(f"{MULTIVIEW_TYPE}: expected (N, {self.views}, D) view embeddings, "
                             f"got shape {tuple(image_embeds.shape)}")
        return super().head_scores(self.view_pool(image_embeds), text_embeds, input_embeds)

    def view_embeds(self, views) -> torch.Tensor:
        """(B, V, D) normalised embeddings of B objects' views: a (B, V, 3, H, W) tensor or B lists of V images."""
        if isinstance(views, torch.Tensor):
            if views.dim() != 5 or views.shape[1] != self.views:
                raise ValueError(f"{MULTIVIEW_TYPE}: expected views of shape (B, {self.views}, 3, H, W), "
                                 f"got {tuple(views.shape)}")
            flat = views.flatten(0, 1)
        else:
            from diffalign.data.types import load_sample
            views = [list(v) for v in views]
            bad = [i for i, v in enumerate(views) if len(v) != self.views]
            if bad:
                raise ValueError(f"{MULTIVIEW_TYPE}: object {bad[0]} has {len(views[bad[0]])} views, "
                                 f"the model scores {self.views}")
            # each view alone (PIL, uint8 (H, W, 3), float (3, H, W) or a path): sizes may differ
            pics = [load_sample(x) if isinstance(x, str) else x for v in views for x in v]
            return self.embed_pixels(torch.cat([self.pixel_values([p] if hasattr(p, "convert") else p)
                                                for p in pics])).view(len(views), self.views, -1)
        emb = self.embed_pixels(self.pixel_values(flat))
        return emb.view(-1, self.views, emb.shape[-1])

    def scores(self, views, prompts: Optional[Sequence[Any]] = None) -> torch.Tensor:
        """(B, A): every aspect's score of each object."""
        from diffalign.rewards.prompts import prompt_text
        emb = self.view_embeds(views)
        items = [""] * emb.shape[0] if prompts is None else list(prompts)
        if len(items) != emb.shape[0]:
            raise ValueError(f"{MULTIVIEW_TYPE}: {emb.shape[0]} objects but {len(items)} prompts")
        texts = [prompt_text(p) if isinstance(p, dict) else str(p) for p in items]
        return self.head_scores(emb, self.text_embeds(texts))

    def save(self, directory: str, extra: Optional[dict] = None) -> str:
        from safetensors.torch import save_file
        super().save(os.path.join(directory, BASE_FOLDER))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.view_pool.state_dict().items()} or
                  {"_empty": torch.zeros(0)}, os.path.join(directory, POOL_WEIGHTS))
        meta = {"type": MULTIVIEW_TYPE, "format_version": 1, "views": self.views, "pooling": self.pooling,
                "base": BASE_FOLDER, **(extra or {})}
        with open(os.path.join(directory, REWARD_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        return directory


def load_multiview_model(directory: Optional[str], device=None, dtype=None, aspect: Optional[str] = None,
                         **fields) -> MultiViewRewardModel:
    """A model saved by :meth:`MultiViewRewardModel.save`, in eval mode; ``aspect`` as for preference_model."""
    from safetensors.torch import load_file
    meta = read_reward_meta(directory, MULTIVIEW_TYPE, "diffalign reward train with model.views > 0 writes "
                                                       "OUTPUT_DIR/reward", fields)
    base = load_preference_model(os.path.join(directory, meta.get("base", BASE_FOLDER)), aspect=aspect)
    model = MultiViewRewardModel.from_model(base, int(meta["views"]), meta["pooling"])
    state = {k: v for k, v in load_file(os.path.join(directory, POOL_WEIGHTS)).items() if k != "_empty"}
    model.view_pool.load_state_dict(state)
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


def multiview_comparisons(path: str, views: Optional[int] = None, verify_images: bool = True,
                          max_records: Optional[int] = None) -> Tuple[List[Any], Any]:
    """Ranked views (:func:`diffalign.data.multiview.read_ranked_views`) as comparison groups for reward
    training: each sample is one candidate's list of view paths."""
    from diffalign.data.multiview import read_ranked_views
    from diffalign.rewards.training.data import Comparison
    rows, report = read_ranked_views(path, views, verify_images, max_records)
    return [Comparison(r.prompt, [list(c) for c in r.candidates], {None: list(r.ranks)}) for r in rows], report


def view_pixels(model: PreferenceRewardModel, samples: Sequence[Any]) -> torch.Tensor:
    """Preprocessed pixels of samples for ``model``: one image each, or for a multi-view model each sample's
    views (a list of image refs) in order, so the result holds len(samples) * model.views images."""
    from diffalign.data.types import load_sample
    if isinstance(model, MultiViewRewardModel):
        flat: List[Any] = []
        for i, s in enumerate(samples):
            if not isinstance(s, (list, tuple)) or len(s) != model.views:
                raise ValueError(f"{MULTIVIEW_TYPE}: sample {i} must be a list of {model.views} views, got "
                                 f"{len(s) if isinstance(s, (list, tuple)) else type(s).__name__}")
            flat.extend(load_sample(v) for v in s)
        return model.pixel_values(flat)
    return model.pixel_values([load_sample(s) for s in samples])


MULTIVIEW_PREFERENCE_MODEL = RewardType(load_multiview_model)  # "multiview_preference_model" in BUILTIN_REWARDS

__all__ = ["MULTIVIEW_TYPE", "VIEW_POOLINGS", "ViewPooling", "MultiViewRewardModel", "load_multiview_model",
           "multiview_comparisons", "view_pixels", "MULTIVIEW_PREFERENCE_MODEL"]
