"""The toy point-set variant: sets of 3-D points of varying size with a centre-of-mass-free constraint.

It exercises, in seconds on a CPU, what molecule models need from the core (an E(3) diffusion model's
coordinates behave the same way):

- drawn conditions: an item without ``num_points`` gets a point count drawn from the generator that
  ``encode_conditions`` receives, so a seeded run draws the same sizes;
- masks: sets are padded to ``max_points``; ``cond["mask"]`` (B, N) marks the points present, and log-probs,
  KLs and denoising losses count only them (``logprob_mask``);
- projected noise: noise, samples and the denoiser's output live in the subspace {centre of mass = 0,
  padded points = 0}; ``logprob_dims`` = 3 (n - 1) makes step log-probs densities in that subspace.

x is (B, N, 3). The denoiser is permutation-equivariant (each point sees itself and the masked mean of the
set), so a set's output does not depend on how much padding follows it. ``decode`` gives a list of (n, 3)
tensors, one per set; the rewards in rewards.py read those.
"""
from __future__ import annotations

import copy
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from diffalign.modalities.base import Conditions, Generators, ModalityAdapter, item_generators
from diffalign.modalities.toy.adapter import FullFineTuning, make_scheduler, timestep_embedding
from diffalign.rewards.prompts import prompt_text

__all__ = ["ToyPointsAdapter", "SetDenoiser", "center", "POINT_SCHEDULERS"]

POINT_SCHEDULERS = ("ddim", "ddpm")


def center(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, N, 3) with the masked centre of mass removed and padded points zeroed (mask (B, N))."""
    m = mask.to(x.dtype).unsqueeze(-1)
    com = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    return (x - com) * m


class SetDenoiser(nn.Module):
    """eps for each point from (the point, the set's masked mean feature, t, prompt id)."""

    def __init__(self, num_prompts: int, hidden: int = 64, embed: int = 16):
        super().__init__()
        self.embed = embed
        self.prompt_embedding = nn.Embedding(num_prompts + 1, embed)
        self.point = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.Linear(2 * hidden + 2 * embed, hidden), nn.SiLU(), nn.Linear(hidden, 3))

    def forward(self, x, t, prompt_id, mask):
        m = mask.to(x.dtype).unsqueeze(-1)
        h = self.point(x)
        pooled = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
        n = x.shape[1]
        ctx = torch.cat([timestep_embedding(t, self.embed).to(x.dtype), self.prompt_embedding(prompt_id).to(x.dtype)], -1)
        return self.out(torch.cat([h, pooled.expand(-1, n, -1), ctx[:, None].expand(-1, n, -1)], -1))


class ToyPointsAdapter(FullFineTuning, ModalityAdapter):
    """Point sets of min_points..max_points points in R^3; ``prompts`` are the names the denoiser knows."""

    def __init__(self, prompts: Sequence[Any], max_points: int = 6, min_points: int = 2, hidden: int = 64,
                 scheduler: str = "ddpm", init_seed: int = 0, device: str | torch.device = "cpu",
                 pretrain_steps: int = 0):
        if not prompts:
            raise ValueError("the toy_points modality needs a non-empty list of prompts")
        if not 2 <= int(min_points) <= int(max_points):
            raise ValueError(f"toy_points needs 2 <= min_points <= max_points, got {min_points}, {max_points}")
        if scheduler not in POINT_SCHEDULERS:
            raise ValueError(f"toy_points scheduler must be one of {POINT_SCHEDULERS}, got {scheduler!r}")
        self.prompts: List[str] = [prompt_text(p, default=str(p)) for p in prompts]
        self.max_points, self.min_points = int(max_points), int(min_points)
        self.device = torch.device(device)
        self.scheduler = make_scheduler(scheduler)
        self.default_step_rule = scheduler
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.denoiser = SetDenoiser(len(self.prompts), hidden)
            if pretrain_steps:
                self._pretrain(pretrain_steps)
        self.denoiser.to(self.device)
        self._reference_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        self._in_reference = False

    def _pretrain(self, steps: int, batch: int = 64) -> None:
        """Fit the base model to centre-of-mass-free Gaussian sets of random size (a stand-in for pretraining)."""
        opt = torch.optim.Adam(self.denoiser.parameters(), lr=3e-3)
        n_train = self.scheduler.config.num_train_timesteps
        for _ in range(steps):
            mask = self._random_mask(batch, None)
            x0, noise = center(torch.randn(batch, self.max_points, 3), mask), center(torch.randn(batch, self.max_points, 3), mask)
            t = torch.randint(n_train, (batch,))
            ids = torch.randint(len(self.prompts) + 1, (batch,))
            x_t = self.scheduler.add_noise(x0, noise, t)
            err = (center(self.denoiser(x_t, t, ids, mask), mask) - noise) ** 2
            loss = (err * mask.unsqueeze(-1)).sum() / (3 * mask.sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)

    def _random_mask(self, batch: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        sizes = torch.randint(self.min_points, self.max_points + 1, (batch,), generator=generator)
        return (torch.arange(self.max_points)[None] < sizes[:, None]).float()

    # ---- conditions and noise ---------------------------------------------------------------------------
    def num_points(self, item: Any, generator: Optional[torch.Generator]) -> int:
        """The item's ``num_points``, or a count drawn uniformly from [min_points, max_points]."""
        if isinstance(item, dict) and item.get("num_points") is not None:
            n = item["num_points"]
            if not isinstance(n, int) or not self.min_points <= n <= self.max_points:
                raise ValueError(f"toy_points item {item!r}: num_points must be an integer in "
                                 f"[{self.min_points}, {self.max_points}]")
            return n
        return int(torch.randint(self.min_points, self.max_points + 1, (1,), generator=generator))

    def encode_conditions(self, items: Sequence[Any], generator: Generators = None) -> Conditions:
        names = [prompt_text(p, default=str(p)) for p in items]
        index = {p: i for i, p in enumerate(self.prompts)}
        unknown = [p for p in names if p not in index]
        if unknown:
            raise ValueError(f"toy_points prompts {unknown} are not in the model's prompt list {self.prompts}")
        sizes = [self.num_points(item, g) for item, g in zip(items, item_generators(generator, len(items)))]
        mask = (torch.arange(self.max_points)[None] < torch.tensor(sizes)[:, None]).float()
        return {"prompt_id": torch.tensor([index[p] for p in names], device=self.device),
                "mask": mask.to(self.device)}

    def unconditional(self, cond: Conditions) -> Conditions:
        return {"prompt_id": torch.full_like(cond["prompt_id"], len(self.prompts)), "mask": cond["mask"]}

    def initial_noise(self, cond: Conditions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = cond["mask"].shape[0]
        gen_device = generator.device if generator is not None else self.device
        noise = torch.randn((b, self.max_points, 3), generator=generator, device=gen_device).to(self.device)
        return self.project_noise(noise, cond)

    def project_noise(self, noise: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return center(noise, cond["mask"])

    def project(self, x: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return center(x, cond["mask"])

    def logprob_mask(self, cond: Conditions, x: torch.Tensor) -> torch.Tensor:
        return cond["mask"].to(x.dtype).unsqueeze(-1)  # (B, N, 1): the 3 coordinates of each point present

    def logprob_dims(self, cond: Conditions, x: torch.Tensor) -> torch.Tensor:
        return 3 * (cond["mask"].sum(1) - 1)  # the centre of mass is fixed: 3 (n - 1) degrees of freedom

    # ---- the denoiser ------------------------------------------------------------------------------------
    def denoise(self, x, timesteps, cond):
        model = self._current_denoiser()
        # projected output: the posterior mean stays in the subspace, where the log-prob is a density
        return center(model(x, timesteps, cond["prompt_id"], cond["mask"]), cond["mask"])

    # ---- what rewards see ----------------------------------------------------------------------------------
    def decode(self, x0, cond):
        sizes = cond["mask"].sum(1).long().tolist()
        return [x0[b, :n] for b, n in enumerate(sizes)]

    def encode(self, samples, items):
        """Stored point sets ((n, 3) arrays) -> (padded, centred x0, conditions whose mask is each set's size)."""
        rows = [torch.as_tensor(s, dtype=torch.float32).reshape(-1, 3) for s in samples]
        bad = [tuple(r.shape) for r in rows if not self.min_points <= r.shape[0] <= self.max_points]
        if bad:
            raise ValueError(f"toy_points samples must hold {self.min_points}..{self.max_points} points; got {bad[:3]}")
        sized = [dict(item, num_points=r.shape[0]) if isinstance(item, dict) else
                 {"text": item, "num_points": r.shape[0]} for item, r in zip(items, rows)]
        cond = self.encode_conditions(sized)
        x0 = torch.zeros(len(rows), self.max_points, 3)
        for b, r in enumerate(rows):
            x0[b, :r.shape[0]] = r
        return self.project(x0.to(self.device), cond), cond

    def rewards(self):
        from diffalign.modalities.toy.rewards import POINT_REWARDS
        return dict(POINT_REWARDS)
