"""The toy modality: x in R^d, a small MLP denoiser, prompts are names from a fixed list.

It exists to keep the core honest and fast: every algorithm and trainer feature runs on it in
seconds on a CPU, and its rewards are closed-form (rewards.py).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from diffalign.modalities.base import Conditions, ModalityAdapter, unwrap
from diffalign.rewards.prompts import prompt_text

SCHEDULERS = ("ddim", "ddpm", "flow")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (scale 0..1000, like the diffusers models)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class MLPDenoiser(nn.Module):
    """eps / velocity prediction from (x, t, prompt id); id ``num_prompts`` is the null prompt."""

    def __init__(self, dim: int, num_prompts: int, hidden: int = 64, embed: int = 32):
        super().__init__()
        self.embed = embed
        self.prompt_embedding = nn.Embedding(num_prompts + 1, embed)
        self.net = nn.Sequential(nn.Linear(dim + 2 * embed, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompt_id: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, timestep_embedding(t, self.embed).to(x.dtype), self.prompt_embedding(prompt_id).to(x.dtype)],
                      dim=-1)
        return self.net(h)


def make_scheduler(kind: str, num_train_timesteps: int = 1000):
    """A diffusers scheduler for the toy: "ddim", "ddpm" (epsilon prediction) or "flow" (velocity)."""
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
    if kind == "ddim":
        return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="scaled_linear",
                             beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, clip_sample=False,
                             steps_offset=1)
    if kind == "ddpm":
        return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="scaled_linear",
                             beta_start=0.00085, beta_end=0.012, clip_sample=False, variance_type="fixed_small")
    if kind == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=1.0)
    raise ValueError(f"toy scheduler must be one of {SCHEDULERS}, got {kind!r}")


class FullFineTuning:
    """The toy adapters' training state: every denoiser weight trains, and the reference is a frozen copy taken
    at construction (``_reference_denoiser``); ``denoise`` picks it while ``_in_reference``."""

    denoiser: nn.Module
    _reference_denoiser: nn.Module
    _in_reference: bool = False

    def _current_denoiser(self) -> nn.Module:
        return self._reference_denoiser if self._in_reference else self.denoiser

    def trainable_parameters(self):
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference_mode(self):
        previous, self._in_reference = self._in_reference, True
        try:
            yield
        finally:
            self._in_reference = previous

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in unwrap(self.denoiser).state_dict().items()}

    def load_trainable_state_dict(self, state):
        unwrap(self.denoiser).load_state_dict(state)


class LearnablePoint(nn.Module):
    """The toy's generator for score distillation (``algorithm.generator: modality``): one learnable sample that
    every render returns, initialised N(0, I) from a seed."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        self.point = nn.Parameter(torch.randn(dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, batch: int) -> torch.Tensor:
        return self.point.expand(batch, -1)


class ToyAdapter(FullFineTuning, ModalityAdapter):
    """Toy modality over R^dim. ``prompts`` is the list of prompt names the denoiser knows."""

    def __init__(self, prompts: Sequence[str], dim: int = 2, hidden: int = 64, scheduler: str = "ddim",
                 init_seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 pretrain_steps: int = 0):
        if not prompts:
            raise ValueError("the toy modality needs a non-empty list of prompts")
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.prompts: List[str] = [prompt_text(p, default=str(p)) for p in prompts]
        self.dim = int(dim)
        self.device = torch.device(device)
        self.scheduler = make_scheduler(scheduler)
        self.default_step_rule = "flow_sde" if scheduler == "flow" else scheduler
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching the caller's RNG
            torch.manual_seed(init_seed)
            self.denoiser = self._make_denoiser(hidden)
            if pretrain_steps:
                self._pretrain(pretrain_steps)
        self.denoiser.to(self.device, dtype)
        self.dtype = dtype
        self._reference_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        self._in_reference = False

    def _pretrain(self, steps: int, batch: int = 128) -> None:
        """Fit the base model to data ~ N(0, I) (so the untuned model samples sensible points, like a
        pretrained model would), with the scheduler's own forward process and target. Deterministic."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        opt = torch.optim.Adam(self.denoiser.parameters(), lr=3e-3)
        n_train = self.scheduler.config.num_train_timesteps
        flow = isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler)
        for _ in range(steps):
            x0, noise = torch.randn(batch, self.dim), torch.randn(batch, self.dim)
            inputs = self._pretrain_inputs(batch)
            if flow:
                s = torch.rand(batch, 1)
                x_t, target, t = (1 - s) * x0 + s * noise, noise - x0, s[:, 0] * n_train
            else:
                t = torch.randint(n_train, (batch,))
                x_t, target = self.scheduler.add_noise(x0, noise, t), noise
            loss = ((self._forward(self.denoiser, x_t, t, inputs) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)  # leave no gradient behind for the fine-tuning optimiser

    # ---- what a variant changes (toy_dual: a second condition) ------------------------------------------------
    def _make_denoiser(self, hidden: int) -> nn.Module:
        return MLPDenoiser(self.dim, len(self.prompts), hidden)

    def _pretrain_inputs(self, batch: int):
        """Random conditions for pretraining: prompt ids, the null id included (the unconditional branch)."""
        return (torch.randint(len(self.prompts) + 1, (batch,)),)

    def _forward(self, model, x, t, inputs):
        return model(x, t, *inputs)

    def prompt_ids(self, prompts: Sequence[Any]) -> torch.Tensor:
        """The index of each item's text in the prompt list (a mapping item gives its "text")."""
        names = [prompt_text(p, default=str(p)) for p in prompts]
        index = {p: i for i, p in enumerate(self.prompts)}
        unknown = [p for p in names if p not in index]
        if unknown:
            raise ValueError(f"toy prompts {unknown} are not in the model's prompt list {self.prompts}")
        return torch.tensor([index[p] for p in names], dtype=torch.long, device=self.device)

    def encode_conditions(self, items: Sequence[Any], generator=None) -> Conditions:
        return {"prompt_id": self.prompt_ids(items)}

    def unconditional(self, cond: Conditions) -> Conditions:
        return {"prompt_id": torch.full_like(cond["prompt_id"], len(self.prompts))}

    def initial_noise(self, cond: Conditions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = cond["prompt_id"].shape[0]
        return torch.randn((b, self.dim), generator=generator, device=self.device).to(self.dtype)

    def denoise(self, x, timesteps, cond):
        return self._current_denoiser()(x, timesteps, cond["prompt_id"])

    def build_generator(self, seed: int) -> nn.Module:
        return LearnablePoint(self.dim, seed).to(self.device)

    def render(self, generator: nn.Module, cond: Conditions) -> torch.Tensor:
        return generator(cond["prompt_id"].shape[0]).to(self.dtype)

    def decode(self, x0, cond):
        return x0

    def encode(self, samples, items):
        """Stored points (tensors or numeric lists of length dim) -> (x0 (B, dim), the items' conditions)."""
        rows = [torch.as_tensor(s, dtype=torch.float32).reshape(-1) for s in samples]
        bad = [tuple(r.shape) for r in rows if r.shape != (self.dim,)]
        if bad:
            raise ValueError(f"toy samples must be vectors of length {self.dim}; got shapes {bad[:3]}")
        return torch.stack(rows).to(self.device, self.dtype), self.encode_conditions(items)

    def rewards(self):
        from diffalign.modalities.toy.rewards import TOY_REWARDS
        return dict(TOY_REWARDS)
