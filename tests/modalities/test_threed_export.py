"""threed exports: a sphere's marching-cubes mesh has the sphere's radius, meshes and turntables are written and
read back, and a turntable view is the render of its camera."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("nerfstudio")
pytest.importorskip("skimage")
trimesh = pytest.importorskip("trimesh")

from diffalign.modalities.threed.cameras import look_at  # noqa: E402
from diffalign.modalities.threed.export import (density_grid, export_mesh, load_radiance_field,  # noqa: E402
                                                mesh_from_density, render_turntable, save_turntable)
from diffalign.modalities.threed.field import build_radiance_field  # noqa: E402
from diffalign.modalities.threed.options import ThreeDOptions  # noqa: E402

RADIUS = 0.55


def test_sphere_density_gives_a_mesh_of_its_radius():
    sigma, bound, resolution = 4.0, 1.0, 48
    grid = density_grid(lambda p: sigma * (p.norm(dim=-1) < RADIUS).float(), bound, resolution)
    mesh = mesh_from_density(grid, bound, level=sigma / 2)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    spacing = 2 * bound / (resolution - 1)
    assert abs(radii.mean() - RADIUS) < spacing / 2 and radii.max() - radii.min() < 2 * spacing
    assert mesh.is_watertight
    # a smooth density (signed distance) pins the surface far better than the grid spacing
    smooth = mesh_from_density(density_grid(lambda p: RADIUS - p.norm(dim=-1), bound, resolution), bound, 0.0)
    np.testing.assert_allclose(np.linalg.norm(smooth.vertices, axis=1), RADIUS, atol=spacing / 10)
    assert smooth.volume == pytest.approx(4 / 3 * np.pi * RADIUS ** 3, rel=0.02)
    with pytest.raises(ValueError, match="outside the field's density range"):
        mesh_from_density(grid, bound, level=10.0)


def small_field(seed=0):
    return build_radiance_field(ThreeDOptions(prior={"model": "tiny", "resolution": 16}, num_samples=16, hidden=16,
                                              features=8), seed)


def test_export_mesh_writes_ply_and_obj_with_vertex_colours(tmp_path):
    field = small_field()
    for suffix in ("ply", "obj"):
        path = str(tmp_path / f"mesh.{suffix}")
        mesh = export_mesh(field, path, resolution=32, level=2.0)
        loaded = trimesh.load(path, force="mesh", process=False)
        assert len(loaded.vertices) == len(mesh.vertices) > 0
        np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-5)
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    # the blob at initialisation: a surface around the centre, inside the scene cube
    assert np.abs(mesh.vertices).max() < 1.0 and np.linalg.norm(mesh.vertices.mean(0)) < 0.1
    with pytest.raises(ValueError, match=r"\.ply or \.obj"):
        export_mesh(field, str(tmp_path / "mesh.stl"))


def test_turntable_views_are_renders_of_their_cameras_and_are_saved(tmp_path):
    field = small_field(1)
    views = render_turntable(field, n=6, elevation=20.0, distance=2.6, fov=45.0, background=(1.0, 1.0, 1.0))
    assert views["images"].shape == (6, 3, 16, 16)
    k = 4
    c2w = look_at(views["azimuth"][k:k + 1], views["elevation"][k:k + 1], torch.tensor([2.6]))
    with torch.no_grad():
        direct = field.eval()(c2w, torch.tensor([45.0]), torch.ones(1, 3))[0]
    torch.testing.assert_close(views["images"][k], direct[0].clamp(0, 1))
    paths = save_turntable(views["images"], str(tmp_path / "out"))
    from PIL import Image
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == 6
    with Image.open(paths["png"]) as png:
        assert png.size[0] > 16 * 2
    # a trained state loads back into the field it came from
    loaded = load_radiance_field(ThreeDOptions(prior={"model": "tiny", "resolution": 16}, num_samples=16, hidden=16,
                                               features=8), field.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), field.state_dict().values()))
    assert os.path.getsize(paths["png"]) > 0
