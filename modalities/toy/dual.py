"""The toy dual-condition variant: a point in R^d conditioned on a prompt AND a source point, with three-branch
(InstructPix2Pix-style) guidance.

An item is ``{"text": name, "source": [d numbers]}`` (or a bare name: the source is then drawn from N(0, I)
with the generator ``encode_conditions`` receives). The denoiser sees the prompt, the source, or neither
(dropped conditions are the null prompt id and a zeroed source with a "missing" flag), which is what an
instruction-based editor sees: an instruction and an input image. Guidance combines three branches
(InstructPix2Pix, Brooks et al. 2023, Eq. 3):

    e = e(0, 0) + s_I (e(source, 0) - e(0, 0)) + s_T (e(source, text) - e(source, 0))

with s_T the run's ``sampling.guidance_scale`` and s_I ``image_guidance_scale``; s_I = 1 is ordinary
classifier-free guidance on the text with the source kept. Rewards are the toy rewards on x.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from diffalign.modalities.base import Conditions, Generators, item_generators
from diffalign.modalities.toy.adapter import ToyAdapter, timestep_embedding
from diffalign.rewards.prompts import prompt_text

__all__ = ["ToyDualAdapter", "DualDenoiser"]


class DualDenoiser(nn.Module):
    """eps from (x, t, prompt id, source point, source-present flag)."""

    def __init__(self, dim: int, num_prompts: int, hidden: int = 64, embed: int = 32):
        super().__init__()
        self.embed = embed
        self.prompt_embedding = nn.Embedding(num_prompts + 1, embed)
        self.net = nn.Sequential(nn.Linear(2 * dim + 1 + 2 * embed, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t, prompt_id, source, has_source):
        h = torch.cat([x, timestep_embedding(t, self.embed).to(x.dtype), self.prompt_embedding(prompt_id).to(x.dtype),
                       (source * has_source[:, None]).to(x.dtype), has_source[:, None].to(x.dtype)], dim=-1)
        return self.net(h)


class ToyDualAdapter(ToyAdapter):
    """Toy points in R^dim with a prompt and a source point; three-branch guidance."""

    def __init__(self, prompts: Sequence[Any], image_guidance_scale: float = 1.5, **kwargs):
        if not image_guidance_scale >= 0:
            raise ValueError(f"image_guidance_scale must be >= 0, got {image_guidance_scale}")
        self.image_guidance_scale = float(image_guidance_scale)
        super().__init__(prompts, **kwargs)

    def _make_denoiser(self, hidden: int) -> nn.Module:
        return DualDenoiser(self.dim, len(self.prompts), hidden)

    def _pretrain_inputs(self, batch: int):
        """Training conditions with each condition dropped 10% of the time (so every guidance branch is learnt)."""
        ids = torch.randint(len(self.prompts) + 1, (batch,))
        has = (torch.rand(batch) > 0.1).float()
        return ids, torch.randn(batch, self.dim), has

    # ---- conditions ------------------------------------------------------------------------------------------
    def encode_conditions(self, items: Sequence[Any], generator: Generators = None) -> Conditions:
        ids = self.prompt_ids(items)
        sources: List[torch.Tensor] = []
        for item, g in zip(items, item_generators(generator, len(items))):
            given = item.get("source") if isinstance(item, dict) else None
            if given is None:
                sources.append(torch.randn(self.dim, generator=g))
                continue
            src = torch.as_tensor(given, dtype=torch.float32).reshape(-1)
            if src.shape != (self.dim,):
                raise ValueError(f"toy_dual item {item!r}: source must hold {self.dim} numbers")
            sources.append(src)
        return {"prompt_id": ids, "source": torch.stack(sources).to(self.device),
                "has_source": torch.ones(len(items), device=self.device)}

    def _null_text(self, cond: Conditions) -> torch.Tensor:
        return torch.full_like(cond["prompt_id"], len(self.prompts))

    def unconditional(self, cond: Conditions) -> Conditions:
        return {**cond, "prompt_id": self._null_text(cond)}

    def guidance_branches(self, cond: Conditions) -> List[Conditions]:
        nothing = {"prompt_id": self._null_text(cond), "source": cond["source"],
                   "has_source": torch.zeros_like(cond["has_source"])}
        source_only = {**cond, "prompt_id": self._null_text(cond)}
        return [nothing, source_only, cond]

    def combine_guidance(self, outputs, scale: float) -> torch.Tensor:
        nothing, source_only, both = outputs
        return nothing + self.image_guidance_scale * (source_only - nothing) + scale * (both - source_only)

    def denoise(self, x, timesteps, cond):
        return self._current_denoiser()(x, timesteps, cond["prompt_id"], cond["source"], cond["has_source"])

    def encode(self, samples, items):
        x0, _ = super().encode(samples, [prompt_text(i, default=str(i)) for i in items])
        return x0, self.encode_conditions(items)
