"""Planning denoisers over state-action trajectories (B, T, S + A), conditioned on attribute requests.

Both take ``(x (B, T, D), timesteps (B,), attributes (B, K), attribute_mask (B, K))`` and return (B, T, D).
An attribute whose mask is 0 is not requested: its value is zeroed before it reaches the model, so the
unconditional branch of classifier-free guidance is "every mask 0" (AlignDiff's masked attribute vectors).

- :func:`make_unet1d`: diffusers' ``UNet1DModel`` with the temporal U-Net layout of its Diffuser port (resnet
  down/up blocks, a temporal mid block, mish, positional time embedding); the attribute request enters as
  extra input channels constant over time (value x mask, mask), the way a 1-D U-Net without a class embedding
  can take a global condition.
- :class:`TemporalDiT`: a small transformer over time steps (AlignDiff's choice), conditioned by adaptive
  layer norm on the sum of the timestep and attribute embeddings, its output projection zero-initialised (DiT).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import torch
from torch import nn

__all__ = ["make_unet1d", "UNet1DPlanner", "TemporalDiT", "DENOISER_ARCHITECTURES", "build_denoiser"]

DENOISER_ARCHITECTURES = ("unet1d", "dit")


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def masked_request(attributes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 2K): the requested values (0 where not requested) and the mask itself."""
    m = mask.to(attributes.dtype)
    return torch.cat([attributes * m, m], dim=-1)


def make_unet1d(transition_dim: int, num_attributes: int, block_out_channels: Sequence[int] = (32, 64, 128, 256),
                norm_num_groups: int = 8, horizon: int = 32):
    """diffusers' UNet1DModel in the layout of its Diffuser (hopper) port; channels: the transition plus 2K."""
    from diffusers import UNet1DModel
    n = len(block_out_channels)
    return UNet1DModel(
        sample_size=horizon, in_channels=transition_dim + 2 * num_attributes, out_channels=transition_dim,
        extra_in_channels=0, block_out_channels=tuple(block_out_channels),
        down_block_types=("DownResnetBlock1D",) * n, up_block_types=("UpResnetBlock1D",) * (n - 1),
        mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock", act_fn="mish",
        time_embedding_type="positional", use_timestep_embedding=True, flip_sin_to_cos=False, freq_shift=1,
        layers_per_block=1, downsample_each_block=False, norm_num_groups=norm_num_groups)


class UNet1DPlanner(nn.Module):
    """The U-Net with the planning call signature ((B, T, D) in and out, channels first inside)."""

    def __init__(self, unet: nn.Module, num_attributes: int):
        super().__init__()
        self.unet, self.num_attributes = unet, num_attributes

    def forward(self, x, t, attributes, attribute_mask):
        h = x.transpose(1, 2)
        if self.num_attributes:
            req = masked_request(attributes, attribute_mask).to(x.dtype)
            h = torch.cat([h, req[:, :, None].expand(-1, -1, x.shape[1])], dim=1)
        return self.unet(h, t).sample.transpose(1, 2)


class DiTBlock(nn.Module):
    """Pre-norm self-attention + MLP, each modulated (shift, scale, gate) by the conditioning vector."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, h, c):
        s1, a1, g1, s2, a2, g2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        y = self.norm1(h) * (1 + a1) + s1
        h = h + g1 * self.attn(y, y, y, need_weights=False)[0]
        return h + g2 * self.mlp(self.norm2(h) * (1 + a2) + s2)


class TemporalDiT(nn.Module):
    """A DiT over the horizon's time steps: one token per (state, action) row."""

    def __init__(self, transition_dim: int, num_attributes: int, horizon: int, hidden: int = 64, depth: int = 2,
                 heads: int = 4):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"the DiT's hidden size ({hidden}) must be divisible by its heads ({heads})")
        self.hidden, self.num_attributes = hidden, num_attributes
        self.inp = nn.Linear(transition_dim, hidden)
        self.position = nn.Parameter(torch.randn(1, horizon, hidden) * 0.02)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.attribute = nn.Sequential(nn.Linear(2 * num_attributes, hidden), nn.SiLU(),
                                       nn.Linear(hidden, hidden)) if num_attributes else None
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, transition_dim)
        for block in self.blocks:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t, attributes, attribute_mask):
        if x.shape[1] > self.position.shape[1]:
            raise ValueError(f"the DiT was built for horizons up to {self.position.shape[1]}, got {x.shape[1]}")
        h = self.inp(x) + self.position[:, :x.shape[1]].to(x.dtype)
        c = self.time(sinusoidal(t, self.hidden).to(x.dtype))
        if self.attribute is not None:
            c = c + self.attribute(masked_request(attributes, attribute_mask).to(x.dtype))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.out_modulation(c)[:, None].chunk(2, dim=-1)
        return self.out(self.norm(h) * (1 + scale) + shift)


def build_denoiser(config: Dict[str, Any]) -> nn.Module:
    """A denoiser from its json config: {"architecture", "transition_dim", "num_attributes", "horizon", ...}."""
    arch = config.get("architecture")
    d, k, horizon = int(config["transition_dim"]), int(config["num_attributes"]), int(config["horizon"])
    if arch == "unet1d":
        channels = tuple(config.get("block_out_channels", (32, 64, 128, 256)))
        if horizon % 2 ** (len(channels) - 1):  # each block but the last halves the time axis
            raise ValueError(f"the U-Net with {len(channels)} blocks needs a horizon divisible by "
                             f"{2 ** (len(channels) - 1)}, got {horizon}")
        return UNet1DPlanner(make_unet1d(d, k, channels, int(config.get("norm_num_groups", 8)), horizon), k)
    if arch == "dit":
        return TemporalDiT(d, k, horizon, int(config.get("hidden", 64)), int(config.get("depth", 2)),
                           int(config.get("heads", 4)))
    raise ValueError(f"denoiser 'architecture' must be one of {DENOISER_ARCHITECTURES}, got {arch!r}")
