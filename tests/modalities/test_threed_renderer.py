"""The threed renderer (nerfstudio cameras, sampler and renderers around a Field) against closed forms.

A field of constant density sigma inside a sphere of radius R (colour c) and zero outside: a ray at distance d
from the centre crosses a chord L = 2 sqrt(R^2 - d^2), so its opacity is 1 - exp(-sigma L) (Beer-Lambert) and its
pixel c (1 - exp(-sigma L)) + background exp(-sigma L). The ray geometry is recomputed here in float64 from the
pinhole model, independently of nerfstudio's ray generation.
"""
import math

import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.field_components.field_heads import FieldHeadNames  # noqa: E402
from nerfstudio.fields.base_field import Field  # noqa: E402

from diffalign.modalities.threed.cameras import look_at  # noqa: E402
from diffalign.modalities.threed.field import BlobField, RadianceField  # noqa: E402

SIGMA, RADIUS = 2.0, 0.6
COLOUR = torch.tensor([0.9, 0.2, 0.1])
BACKGROUND = torch.tensor([0.0, 0.5, 1.0])


class SphereField(Field):
    """Density SIGMA inside the sphere of radius RADIUS at the origin, colour COLOUR everywhere."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))  # gives the renderer a device to read

    def get_density(self, ray_samples):
        p = ray_samples.frustums.get_positions()
        inside = (p.norm(dim=-1, keepdim=True) < RADIUS).float()
        return SIGMA * inside * self.scale, None

    def get_outputs(self, ray_samples, density_embedding=None):
        shape = ray_samples.frustums.get_positions().shape[:-1]
        return {FieldHeadNames.RGB: COLOUR.expand(*shape, 3)}


def reference_chords(c2w: torch.Tensor, fov_deg: float, resolution: int) -> torch.Tensor:
    """(H, W) chord lengths through the sphere of the pinhole camera's pixel-centre rays, in float64."""
    c2w = c2w.double()
    focal = (resolution / 2) / math.tan(math.radians(fov_deg) / 2)
    centres = torch.arange(resolution, dtype=torch.float64) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    # OpenGL camera: x right, y up (image rows go down), looking down -z
    dirs = torch.stack([(x - resolution / 2) / focal, -(y - resolution / 2) / focal, -torch.ones_like(x)], -1)
    world = dirs @ c2w[:, :3].T
    world = world / world.norm(dim=-1, keepdim=True)
    origin = c2w[:, 3]
    d = torch.linalg.cross(world, origin.expand_as(world)).norm(dim=-1)  # distance of each ray from the centre
    return 2 * (RADIUS ** 2 - d ** 2).clamp_min(0).sqrt()


@pytest.mark.parametrize("azimuth,elevation", [(0.0, 0.0), (130.0, 25.0)])
def test_sphere_renders_beer_lambert_image(azimuth, elevation):
    resolution, samples, bound, fov = 12, 400, 1.0, 40.0
    renderer = RadianceField(SphereField(), resolution, samples, bound).eval()
    c2w = look_at(torch.tensor([azimuth]), torch.tensor([elevation]), torch.tensor([2.5]))
    images, opacity = renderer(c2w, torch.tensor([fov]), BACKGROUND[None])
    assert images.shape == (1, 3, resolution, resolution) and opacity.shape == (1, 1, resolution, resolution)
    chord = reference_chords(c2w[0], fov, resolution)
    alpha = 1 - torch.exp(-SIGMA * chord)
    expected = COLOUR.double()[:, None, None] * alpha + BACKGROUND.double()[:, None, None] * (1 - alpha)
    # samples are bin midpoints: a chord is counted to within one bin (delta), so opacity to within sigma * delta
    delta = 2 * bound * math.sqrt(3) / samples
    assert (chord > 0.5).any() and (chord == 0).any()  # the view holds both the sphere and background
    torch.testing.assert_close(opacity[0, 0].double(), alpha, atol=SIGMA * delta, rtol=0)
    torch.testing.assert_close(images[0].double(), expected, atol=SIGMA * delta, rtol=0)


def test_gradients_reach_every_field_parameter():
    for encoding in ("frequency", "hash"):
        torch.manual_seed(0)
        field = BlobField(encoding=encoding, hidden=16, features=8, hash_levels=4, hash_max_res=32,
                          log2_hashmap_size=10)
        renderer = RadianceField(field, 8, 16, 1.0)
        c2w = look_at(torch.tensor([20.0, -100.0]), torch.tensor([10.0, 5.0]), torch.tensor([2.5, 2.7]))
        images, _ = renderer(c2w, torch.tensor([45.0, 45.0]), torch.ones(2, 3))
        (images * torch.linspace(0, 1, images.numel()).reshape(images.shape)).sum().backward()
        for name, p in field.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (encoding, name)


def test_blob_bias_makes_an_object_at_the_centre_and_nothing_outside_the_cube():
    torch.manual_seed(0)
    field = BlobField(hidden=16, features=8, blob_density=5.0, blob_radius=0.5)
    with torch.no_grad():
        centre = field.density_at(torch.zeros(1, 3))
        far = field.density_at(torch.tensor([[0.0, 0.0, 0.95]]))
        outside = field.density_at(torch.tensor([[1.2, 0.0, 0.0]]))
    assert float(centre) > 10 * float(far) and float(outside) == 0.0
