"""Exports of a trained radiance field: turntable renders (a PNG grid and a GIF) and a mesh (marching cubes on the
density, written as .ply / .obj by trimesh), plus loading a run's field back from its weights.

A turntable is ``n`` views evenly spaced all around the object at one elevation, distance and field of view
(cameras.turntable_views). The mesh is scikit-image's marching cubes of the density sampled on a regular grid
over the scene cube [-bound, bound]^3 at the iso-level ``level``; vertex colours come from the field's colour head
where it has one.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from diffalign.modalities.threed.cameras import look_at, turntable_views

__all__ = ["render_turntable", "save_turntable", "density_grid", "mesh_from_density", "export_mesh",
           "load_radiance_field"]


@torch.no_grad()
def render_turntable(radiance_field, n: int = 16, elevation: float = 15.0, distance: float = 2.75,
                     fov: float = 45.0, background: Sequence[float] = (1.0, 1.0, 1.0),
                     batch: int = 4) -> Dict[str, torch.Tensor]:
    """{"images": (n, 3, H, W) in [0, 1], "azimuth", "elevation": (n,) degrees} of n views evenly around."""
    views = turntable_views(n, elevation, distance, fov)
    c2w = look_at(views["azimuth"], views["elevation"], views["distance"])
    bg = torch.tensor([list(background)] * n, dtype=torch.float32)
    was_training = radiance_field.training
    radiance_field.eval()
    try:
        images = torch.cat([radiance_field(c2w[i:i + batch], views["fov"][i:i + batch], bg[i:i + batch])[0].cpu()
                            for i in range(0, n, batch)])
    finally:
        radiance_field.train(was_training)
    return {"images": images.clamp(0, 1), "azimuth": views["azimuth"], "elevation": views["elevation"]}


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_turntable(images: torch.Tensor, folder: str, name: str = "turntable", nrow: Optional[int] = None,
                   duration_ms: int = 100) -> Dict[str, str]:
    """A PNG grid (``name``.png, ``nrow`` views a row; default ~square) and an endless GIF (``name``.gif) of the
    views; returns their paths."""
    from PIL import Image
    from torchvision.utils import make_grid
    os.makedirs(folder, exist_ok=True)
    n = images.shape[0]
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    png = os.path.join(folder, f"{name}.png")
    Image.fromarray(_to_uint8(make_grid(images.float(), nrow=nrow, padding=1, pad_value=1.0))).save(png)
    frames = [Image.fromarray(_to_uint8(im)) for im in images]
    gif = os.path.join(folder, f"{name}.gif")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return {"png": png, "gif": gif}


@torch.no_grad()
def density_grid(density_fn: Callable[[torch.Tensor], torch.Tensor], bound: float, resolution: int,
                 device="cpu", chunk: int = 65536) -> np.ndarray:
    """(R, R, R) densities at the grid points linspace(-bound, bound, R)^3 (index order x, y, z)."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    values = torch.cat([density_fn(points[i:i + chunk]).reshape(-1).float().cpu()
                        for i in range(0, len(points), chunk)])
    return values.reshape(resolution, resolution, resolution).numpy()


def mesh_from_density(grid: np.ndarray, bound: float, level: float):
    """trimesh.Trimesh of the ``level`` iso-surface of a density grid over [-bound, bound]^3 (marching cubes)."""
    import trimesh
    from skimage.measure import marching_cubes
    if not grid.min() < level < grid.max():
        raise ValueError(f"mesh level {level} is outside the field's density range [{grid.min():.4g}, "
                         f"{grid.max():.4g}]: no surface (pass a level inside it)")
    spacing = 2 * bound / (grid.shape[0] - 1)
    # "ascent": the object is where the density is high, so faces wind with outward normals (positive volume)
    vertices, faces, _, _ = marching_cubes(grid, level=level, spacing=(spacing,) * 3, gradient_direction="ascent")
    return trimesh.Trimesh(vertices=vertices - bound, faces=faces, process=False)


@torch.no_grad()
def export_mesh(radiance_field, path: str, resolution: int = 64, level: float = 2.0):
    """Marching cubes of the field's density written to ``path`` (.ply or .obj, by its suffix), with vertex
    colours from the field's colour head; returns the trimesh.Trimesh."""
    if not path.endswith((".ply", ".obj")):
        raise ValueError(f"mesh path {path!r} must end with .ply or .obj")
    field = radiance_field.field
    device = next(field.parameters()).device
    grid = density_grid(lambda p: field.density_at(p), radiance_field.bound, resolution, device)
    mesh = mesh_from_density(grid, radiance_field.bound, level)
    if hasattr(field, "density_and_features") and hasattr(field, "mlp_colour"):
        v = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
        rgb = field.mlp_colour(field.density_and_features(v)[1]).clamp(0, 1).cpu().numpy()
        mesh.visual.vertex_colors = np.concatenate([(rgb * 255).round(), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mesh.export(path)
    return mesh


def load_radiance_field(options, state: Dict[str, torch.Tensor], device="cpu"):
    """A radiance field for threed options holding trained weights ``state`` (what the trainer saved as the
    generator: final/generator.safetensors or a checkpoint's modules["generator"])."""
    from diffalign.modalities.threed.field import build_radiance_field
    field = build_radiance_field(options, 0, device)
    field.load_state_dict({k: v.to(device) for k, v in state.items()})
    return field.eval()
