"""The radiance field and its volume renderer, from nerfstudio's components (pure-PyTorch paths on a CPU).

``BlobField`` is a nerfstudio ``Field``: nerfstudio's positional encoding (``NeRFEncoding``, or ``HashEncoding``,
Instant-NGP's grid, through its torch implementation unless ``implementation: tcnn``), an MLP (nerfstudio's ``MLP``)
to a density logit and features, and a colour head (an MLP to RGB with a sigmoid; colour does not depend on the
view direction: DreamFusion's albedo). Density = softplus(logit + blob(x)) with a density bias that is high at the
centre and negative away from it, blob(x) = blob_density * (1 - |x| / blob_radius) (threestudio's "blob_magic3d"
bias; DreamFusion initialises with such a centre bias so that optimisation starts from an object, not from fog
filling the scene). Outside the scene cube [-bound, bound]^3 the density is zero.

``RadianceField`` renders any nerfstudio ``Field`` from cameras: ``Cameras.generate_rays``, a ``UniformSampler``
between each ray's entry and exit of the sphere around the cube (deterministic bin midpoints: every draw of a run
comes from its per-render generators), ``RaySamples.get_weights`` (alpha compositing: w_i = T_i (1 - exp(-sigma_i
delta_i)), T_i = exp(-sum_{j<i} sigma_j delta_j)), ``RGBRenderer`` over a background colour per view and
``AccumulationRenderer`` (opacity).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Tuple

import torch
from torch import nn

__all__ = ["BlobField", "RadianceField", "build_radiance_field"]


def _field_base():
    from nerfstudio.fields.base_field import Field
    return Field


class BlobField(_field_base()):
    """A small MLP radiance field on nerfstudio's encodings with a density blob at the centre."""

    def __init__(self, bound: float = 1.0, encoding: str = "frequency", num_frequencies: int = 6,
                 hash_levels: int = 8, hash_max_res: int = 128, log2_hashmap_size: int = 15, hidden: int = 64,
                 num_layers: int = 2, features: int = 16, blob_density: float = 5.0, blob_radius: float = 0.5,
                 implementation: str = "torch"):
        super().__init__()
        from nerfstudio.field_components.encodings import HashEncoding, NeRFEncoding
        from nerfstudio.field_components.mlp import MLP
        self.bound, self.blob_density, self.blob_radius = float(bound), float(blob_density), float(blob_radius)
        if encoding == "frequency":  # sin/cos of 2^0 .. 2^(n-1) times x (and x itself), on x / bound
            self.encoding = NeRFEncoding(in_dim=3, num_frequencies=num_frequencies, min_freq_exp=0.0,
                                         max_freq_exp=num_frequencies - 1, include_input=True,
                                         implementation=implementation)
        elif encoding == "hash":  # on positions mapped to [0, 1]^3
            self.encoding = HashEncoding(num_levels=hash_levels, min_res=16, max_res=hash_max_res,
                                         log2_hashmap_size=log2_hashmap_size, implementation=implementation)
        else:
            raise ValueError(f"field encoding must be 'frequency' or 'hash', got {encoding!r}")
        self.encoding_name = encoding
        self.features = features
        self.mlp_base = MLP(in_dim=self.encoding.get_out_dim(), num_layers=num_layers, layer_width=hidden,
                            out_dim=1 + features, activation=nn.ReLU(), implementation=implementation)
        self.mlp_colour = MLP(in_dim=features, num_layers=2, layer_width=hidden, out_dim=3, activation=nn.ReLU(),
                              out_activation=nn.Sigmoid(), implementation=implementation)

    def density_and_features(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(density (..., 1), features (..., F)) at world positions (..., 3)."""
        scaled = positions / self.bound
        encoded = self.encoding(scaled if self.encoding_name == "frequency" else (scaled + 1) / 2)
        h = self.mlp_base(encoded.reshape(-1, encoded.shape[-1])).reshape(*positions.shape[:-1], -1)
        blob = self.blob_density * (1 - positions.norm(dim=-1, keepdim=True) / self.blob_radius)
        inside = (scaled.abs() <= 1).all(-1, keepdim=True)
        density = torch.nn.functional.softplus(h[..., :1] + blob) * inside
        return density, h[..., 1:]

    def density_at(self, positions: torch.Tensor) -> torch.Tensor:
        return self.density_and_features(positions)[0]

    # nerfstudio's Field interface ------------------------------------------------------------------------------
    def get_density(self, ray_samples):
        return self.density_and_features(ray_samples.frustums.get_positions())

    def get_outputs(self, ray_samples, density_embedding=None) -> Dict:
        from nerfstudio.field_components.field_heads import FieldHeadNames
        shape = density_embedding.shape[:-1]
        rgb = self.mlp_colour(density_embedding.reshape(-1, self.features)).reshape(*shape, 3)
        return {FieldHeadNames.RGB: rgb}


class RadianceField(nn.Module):
    """Renders a nerfstudio Field: ``forward(camera_to_world (B, 3, 4), fov (B,), background (B, 3))`` ->
    (images (B, 3, H, W) in [0, 1], opacity (B, 1, H, W)). The trainable generator of the threed modality."""

    def __init__(self, field: nn.Module, resolution: int, num_samples: int, bound: float):
        super().__init__()
        from nerfstudio.model_components.ray_samplers import UniformSampler
        from nerfstudio.model_components.renderers import AccumulationRenderer, RGBRenderer
        self.field = field
        self.resolution, self.num_samples, self.bound = int(resolution), int(num_samples), float(bound)
        self.sampler = UniformSampler(num_samples=self.num_samples, train_stratified=False)
        self.rgb_renderer = RGBRenderer(background_color="black")  # overridden per view by forward's background
        self.accumulation_renderer = AccumulationRenderer()

    def render_view(self, camera, background: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One nerfstudio camera (a Cameras of one) -> ((3, H, W), (1, H, W))."""
        from nerfstudio.field_components.field_heads import FieldHeadNames
        with warnings.catch_warnings():  # nerfstudio 1.1.5 indexes with lists, which torch 2.x warns about
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            rays = camera.generate_rays(camera_indices=0).flatten()  # (H * W) rays
        # sample between the ray's entry and exit of the sphere that holds the scene cube
        radius = self.bound * math.sqrt(3.0)
        centre_t = -(rays.origins * rays.directions).sum(-1, keepdim=True)  # closest approach to the origin
        rays.nears = (centre_t - radius).clamp_min(1e-3)
        rays.fars = (centre_t + radius).clamp_min(2e-3)
        samples = self.sampler(rays)
        outputs = self.field(samples)
        weights = samples.get_weights(outputs[FieldHeadNames.DENSITY])
        rgb = self.rgb_renderer(outputs[FieldHeadNames.RGB], weights,
                                background_color=background.to(weights.device, weights.dtype).expand(len(rays), 3))
        opacity = self.accumulation_renderer(weights)
        h = w = self.resolution
        return rgb.reshape(h, w, 3).permute(2, 0, 1), opacity.reshape(h, w, 1).permute(2, 0, 1)

    def forward(self, camera_to_world: torch.Tensor, fov: torch.Tensor,
                background: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        from diffalign.modalities.threed.cameras import make_cameras
        device = next(self.field.parameters()).device
        cameras = make_cameras(camera_to_world.float().cpu(), fov.float().cpu(), self.resolution).to(device)
        views = [self.render_view(cameras[b:b + 1], background[b]) for b in range(camera_to_world.shape[0])]
        return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])


def build_radiance_field(options, seed: int, device="cpu"):
    """A fresh ``field.RadianceField`` over a ``field.BlobField`` for threed options, initialised from ``seed``
    (renders at render_resolution, else the prior's resolution)."""
    o = options
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        field = BlobField(bound=o.bound, encoding=o.encoding, num_frequencies=o.num_frequencies,
                          hash_levels=o.hash_levels, hash_max_res=o.hash_max_res, log2_hashmap_size=o.log2_hashmap_size,
                          hidden=o.hidden, num_layers=o.num_layers, features=o.features, blob_density=o.blob_density,
                          blob_radius=o.blob_radius, implementation=o.implementation)
    resolution = o.render_resolution or o.prior_options().resolution
    return RadianceField(field, resolution, o.num_samples, o.bound).to(device)
