"""Random cameras of the threed modality: ranges, reproducibility per generator, look-at geometry, view labels."""
import math

import pytest
import torch

from diffalign.modalities.threed.cameras import (draw_views, look_at, make_cameras, turntable_views, view_label,
                                                 view_labels, view_prompt, wrap_degrees)

RANGES = dict(azimuth=(-180.0, 180.0), elevation=(-10.0, 40.0), distance=(2.0, 3.5), fov=(30.0, 60.0))


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_views_stay_in_their_ranges_and_cover_them():
    v = draw_views(gens(range(400)), **RANGES)
    for key, (low, high) in RANGES.items():
        assert float(v[key].min()) >= low and float(v[key].max()) <= high, key
        # uniform draws: 400 of them reach into both tenths of the range
        span = high - low
        assert float(v[key].min()) < low + 0.1 * span and float(v[key].max()) > high - 0.1 * span, key


def test_each_view_comes_from_its_own_generator_alone():
    a = draw_views(gens([3, 4, 5]), **RANGES)
    b = draw_views(gens([9, 4]), **RANGES)  # seed 4 in another batch, at another position
    for key in RANGES:
        assert a[key][1] == b[key][1], key
        assert a[key][0] != a[key][2], key
    again = draw_views(gens([3, 4, 5]), **RANGES)
    assert all(torch.equal(a[k], again[k]) for k in RANGES)


def test_look_at_places_the_camera_and_points_it_at_the_origin():
    az, el, dist = torch.tensor([0.0, 90.0, -135.0, 30.0]), torch.tensor([0.0, 30.0, -10.0, 89.999]), \
        torch.tensor([2.0, 3.0, 2.5, 2.2])
    c2w = look_at(az, el, dist).double()
    for i in range(4):
        a, e = math.radians(float(az[i])), math.radians(float(el[i]))
        expected = float(dist[i]) * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)],
                                                 dtype=torch.float64)
        torch.testing.assert_close(c2w[i, :, 3], expected, atol=1e-5, rtol=0)
        rotation = c2w[i, :, :3]
        torch.testing.assert_close(rotation.T @ rotation, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
        # the camera looks down its -z axis: -z is the unit vector from the camera to the origin
        torch.testing.assert_close(-rotation[:, 2], -expected / expected.norm(), atol=1e-5, rtol=0)
        assert float(rotation[2, 1]) >= -1e-6  # its up vector points up (z), not down
        assert abs(float(torch.det(rotation)) - 1) < 1e-5  # a rotation, not a reflection


def test_nerfstudio_cameras_get_the_pinhole_focal_length():
    pytest.importorskip("nerfstudio")
    cams = make_cameras(look_at(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0])), torch.tensor([60.0]), 32)
    assert float(cams.fx[0]) == pytest.approx(16 / math.tan(math.radians(30)))
    assert int(cams.width[0]) == 32 and int(cams.height[0]) == 32
    rays = cams.generate_rays(camera_indices=0)
    centre = rays.directions[15:17, 15:17].mean(dim=(0, 1))
    torch.testing.assert_close(centre / centre.norm(), torch.tensor([-1.0, 0.0, 0.0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("azimuth,label", [(0, "front"), (44, "front"), (-45, "front"), (46, "side"), (-90, "side"),
                                           (134, "side"), (135, "back"), (180, "back"), (-170, "back"), (370, "front")])
def test_view_labels_follow_dreamfusion_azimuth_bins(azimuth, label):
    assert view_label(azimuth, 10.0) == label


def test_overhead_label_and_prompt():
    assert view_label(0.0, 70.0, overhead=60.0) == "overhead"
    assert view_label(0.0, 70.0) == "front"  # no threshold: never overhead
    assert view_labels(torch.tensor([0.0, 180.0]), torch.tensor([0.0, 0.0]), None) == ["front", "back"]
    assert view_prompt("a red circle", "side") == "a red circle, side view"


def test_turntable_is_evenly_spaced_all_around():
    v = turntable_views(16, 15.0, 2.5, 45.0)
    steps = torch.remainder(torch.diff(v["azimuth"]), 360.0)
    torch.testing.assert_close(steps, torch.full((15,), 22.5))
    assert float(v["azimuth"].min()) >= -180 and float(v["azimuth"].max()) < 180
    assert torch.equal(wrap_degrees(torch.tensor([190.0, -181.0])), torch.tensor([-170.0, 179.0]))
    with pytest.raises(ValueError, match="at least one view"):
        turntable_views(0, 0.0, 2.5, 45.0)
