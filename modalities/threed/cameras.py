"""Random cameras around the object, their nerfstudio ``Cameras``, and DreamFusion's view-dependent prompts.

World frame: z up, the object inside the cube [-bound, bound]^3 at the origin. A view is (azimuth, elevation,
distance, fov) in degrees / scene units; azimuth 0 looks at the object's front from +x, elevation is above the
xy-plane. Camera-to-world matrices follow nerfstudio's (OpenGL) convention: the camera looks down its -z axis
with +y up, so the matrix's columns are right, up, back (= the direction from the object to the camera) and the
camera's position.

View-dependent prompts (DreamFusion, Poole et al. 2022, section 3.2): the prompt gets ", front view",
", side view" or ", back view" by azimuth (front within 45 degrees of 0, back within 45 degrees of 180, as
threestudio's defaults), or ", overhead view" above an elevation threshold.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["VIEW_KEYS", "draw_views", "look_at", "view_label", "view_prompt", "make_cameras", "turntable_views",
           "view_labels", "wrap_degrees"]

#: the condition keys a view adds (all batch-first)
VIEW_KEYS = ("camera_to_world", "fov", "azimuth", "elevation", "distance", "background")
FRONT_HALF_WIDTH = 45.0  # degrees either side of azimuth 0 that are "front" (and of 180 that are "back")


def draw_views(generators: Sequence[Optional[torch.Generator]], azimuth: Tuple[float, float],
               elevation: Tuple[float, float], distance: Tuple[float, float],
               fov: Tuple[float, float]) -> Dict[str, torch.Tensor]:
    """One view per generator, each uniform in the ranges (degrees; distance in scene units) and drawn from its
    own generator alone (None: torch's global generator), so a render's camera does not depend on its batch."""
    lows = torch.tensor([azimuth[0], elevation[0], distance[0], fov[0]], dtype=torch.float64)
    highs = torch.tensor([azimuth[1], elevation[1], distance[1], fov[1]], dtype=torch.float64)
    u = torch.stack([torch.rand(4, generator=g, dtype=torch.float64) for g in generators])
    v = lows + u * (highs - lows)
    return {"azimuth": wrap_degrees(v[:, 0]).float(), "elevation": v[:, 1].float(), "distance": v[:, 2].float(),
            "fov": v[:, 3].float()}


def wrap_degrees(a: torch.Tensor) -> torch.Tensor:
    """Angles in [-180, 180)."""
    return torch.remainder(a + 180.0, 360.0) - 180.0


def look_at(azimuth: torch.Tensor, elevation: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """(B, 3, 4) camera-to-world matrices of cameras on the sphere looking at the origin (z up)."""
    az, el = torch.deg2rad(azimuth.double()), torch.deg2rad(elevation.double())
    back = torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    position = back * distance.double()[:, None]
    up_world = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(back)
    right = torch.linalg.cross(up_world, back)
    # straight above or below, up_world is parallel to back: any horizontal right vector will do
    degenerate = right.norm(dim=-1) < 1e-9
    right[degenerate] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.linalg.cross(back, right)
    return torch.stack([right, up, back, position], -1).float()


def view_label(azimuth: float, elevation: float = 0.0, overhead: Optional[float] = None) -> str:
    """"front", "side", "back" by azimuth (degrees), or "overhead" at an elevation above ``overhead``."""
    if overhead is not None and elevation > overhead:
        return "overhead"
    a = abs(float(wrap_degrees(torch.tensor(float(azimuth)))))
    if a <= FRONT_HALF_WIDTH:
        return "front"
    if a >= 180.0 - FRONT_HALF_WIDTH:
        return "back"
    return "side"


def view_prompt(text: str, label: str) -> str:
    return f"{text}, {label} view"


def make_cameras(camera_to_world: torch.Tensor, fov: torch.Tensor, resolution: int):
    """nerfstudio pinhole ``Cameras`` (B of them) of square ``resolution`` images with vertical/horizontal field of
    view ``fov`` (degrees): focal = (resolution / 2) / tan(fov / 2)."""
    from nerfstudio.cameras.cameras import Cameras, CameraType
    focal = (resolution / 2) / torch.tan(torch.deg2rad(fov.float()) / 2)
    centre = torch.full_like(focal, resolution / 2)
    return Cameras(camera_to_worlds=camera_to_world.float(), fx=focal[:, None], fy=focal[:, None],
                   cx=centre[:, None], cy=centre[:, None], width=resolution, height=resolution,
                   camera_type=CameraType.PERSPECTIVE)


def turntable_views(n: int, elevation: float, distance: float, fov: float) -> Dict[str, torch.Tensor]:
    """``n`` views evenly spaced all around the object (azimuth -180 + 360 k / n) at one elevation and distance."""
    if n < 1:
        raise ValueError(f"a turntable needs at least one view, got {n}")
    az = wrap_degrees(torch.arange(n, dtype=torch.float64) * 360.0 / n - 180.0).float()
    return {"azimuth": az, "elevation": torch.full((n,), float(elevation)),
            "distance": torch.full((n,), float(distance)), "fov": torch.full((n,), float(fov))}


def view_labels(azimuth: torch.Tensor, elevation: torch.Tensor, overhead: Optional[float]) -> List[str]:
    return [view_label(a, e, overhead) for a, e in zip(azimuth.tolist(), elevation.tolist())]
