"""Procedural shapes clips: caption grammar, disjoint held-out split, determinism and the ground-truth tracks."""
import numpy as np
import pytest
import torch

from diffalign.data import shapes as S
from diffalign.data import shapes_clips as C


def test_captions_round_trip_and_bad_words_are_named():
    caps = C.clip_captions()
    assert len(caps) == len(set(caps)) == 4 * 3 * 2 * 4 + 4 * 3 * 3
    for cap in caps:
        assert C.clip_caption(C.parse_clip_caption(cap)) == cap
    assert C.parse_clip_caption("Two blue squares moving up.") == C.ClipScene(S.ObjectSpec("blue", "square", 2), "up")
    assert C.clip_kind("a red circle") == "still" and C.clip_kind("a red circle moving left") == "moving"
    with pytest.raises(ValueError, match="'moving' must be followed by one of"):
        C.parse_clip_caption("a red circle moving sideways")
    with pytest.raises(ValueError, match="bad word 'purple'"):
        C.parse_clip_caption("a purple circle moving up")
    with pytest.raises(ValueError, match="count in \\[1, 2\\]"):
        C.parse_clip_caption("three red circles moving up")
    with pytest.raises(ValueError, match="not a relation"):
        C.parse_clip_caption("a red circle left of a blue square")


def test_splits_are_disjoint_cover_everything_and_keep_every_attribute_in_training():
    train, held = set(C.clip_captions("train")), set(C.clip_captions("heldout"))
    assert not train & held and train | held == set(C.clip_captions())
    for kind in C.CLIP_KINDS:
        kind_held = C.clip_captions("heldout", kind)
        kind_all = C.clip_captions(None, kind)
        assert len(kind_held) >= max(C.HELDOUT_MIN_PER_KIND, round(C.HELDOUT_FRACTION * len(kind_all)))
        scenes = [C.parse_clip_caption(c) for c in C.clip_captions("train", kind)]
        everything = [C.parse_clip_caption(c) for c in kind_all]
        for attr in ("color", "shape", "count"):
            assert {getattr(s.obj, attr) for s in scenes} == {getattr(s.obj, attr) for s in everything}
        assert {s.direction for s in scenes} == {s.direction for s in everything}
    for cap in held:
        assert C.clip_split_of(cap) == "heldout"
    with pytest.raises(ValueError, match="split 'test'"):
        C.clip_captions("test")


def test_balanced_prompts_and_split_sampling():
    prompts = C.balanced_clip_prompts("heldout", per_kind=10)
    assert [C.clip_kind(p) for p in prompts] == ["moving"] * 10 + ["still"] * 10
    assert set(prompts) <= set(C.clip_captions("heldout"))
    full = C.balanced_clip_prompts("heldout")
    assert set(full) == set(C.clip_captions("heldout"))
    rng = np.random.default_rng(0)
    drawn = [C.clip_caption(C.sample_clip_scene(rng, "train")) for _ in range(200)]
    assert set(drawn) <= set(C.clip_captions("train")) and {C.clip_kind(c) for c in drawn} == {"moving", "still"}


def test_clips_are_deterministic_and_items_independent_of_access_order():
    a = C.render_clip("two blue squares moving up", rng=np.random.default_rng(5))
    b = C.render_clip("two blue squares moving up", rng=np.random.default_rng(5))
    c = C.render_clip("two blue squares moving up", rng=np.random.default_rng(6))
    assert torch.equal(a.frames, b.frames) and np.array_equal(a.tracks, b.tracks)
    assert not torch.equal(a.frames, c.frames)
    assert torch.equal(C.render_clip("a red circle").frames, C.render_clip("a red circle").frames)  # rng=None
    ds = C.ShapesClipsDataset(6, seed=3, split="heldout")
    forward = [ds[i] for i in range(6)]
    backward = [ds[i] for i in reversed(range(6))][::-1]
    for (fa, ca), (fb, cb) in zip(forward, backward):
        assert torch.equal(fa, fb) and ca == cb and C.clip_split_of(ca) == "heldout"
    assert torch.equal(ds[-1][0], forward[-1][0])
    with pytest.raises(IndexError):
        ds[6]


@pytest.mark.parametrize("caption", ["a red circle moving right", "two green triangles moving left",
                                     "a yellow square moving up", "two blue circles moving down",
                                     "three red squares", "a green triangle"])
def test_ground_truth_tracks_match_the_caption_and_the_pixels(caption):
    for seed in range(5):
        clip = C.render_clip(caption, rng=np.random.default_rng(seed))
        f, n = C.NUM_FRAMES, clip.scene.obj.count
        assert clip.frames.shape == (f, 3, 32, 32) and clip.frames.dtype == torch.float32
        assert 0 <= clip.frames.min() and clip.frames.max() <= 1
        assert clip.tracks.shape == (f, n, 2)
        # constant velocity, closed form: p_t = p_0 + t v
        t = np.arange(f, dtype=np.float64)[:, None, None]
        assert np.allclose(clip.tracks, clip.tracks[:1] + t * np.asarray(clip.velocity), atol=1e-12)
        speed = float(np.hypot(*clip.velocity))
        if clip.scene.direction is None:
            assert speed == 0.0 and all(torch.equal(clip.frames[0], fr) for fr in clip.frames)
        else:
            ux, uy = C.DIRECTION_VECTORS[clip.scene.direction]
            assert C.MIN_SPEED <= clip.velocity[0] * ux + clip.velocity[1] * uy <= C.MAX_SPEED
            assert clip.velocity[0] * uy - clip.velocity[1] * ux == 0
        colour = torch.tensor(S.COLORS[clip.scene.obj.color], dtype=torch.float32) / 255
        for k in range(f):
            for j in range(n):
                x, y = clip.tracks[k, j]
                r = clip.radii[j]
                assert r + 0.5 <= x <= 32 - r - 0.5 and r + 0.5 <= y <= 32 - r - 0.5  # inside the frame
                assert torch.equal(clip.frames[k, :, int(y), int(x)], colour)  # the pixel under the centre is drawn
            for i in range(n):  # objects never come within GAP px of each other
                for j in range(i + 1, n):
                    (xi, yi), (xj, yj) = clip.tracks[k, i], clip.tracks[k, j]
                    ri, rj = clip.radii[i], clip.radii[j]
                    assert max(abs(xi - xj) - ri - rj, abs(yi - yj) - ri - rj) >= C.GAP - 1e-9
        # nothing but black and the object's colour is drawn
        pixels = clip.frames.permute(0, 2, 3, 1).reshape(-1, 3)
        assert {tuple(p.tolist()) for p in pixels.unique(dim=0)} == {(0.0, 0.0, 0.0), tuple(colour.tolist())}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="size must be >= 16"):
        C.render_clip("a red circle", size=8)
    with pytest.raises(ValueError, match="frames must be >= 2"):
        C.render_clip("a red circle", frames=1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        C.ShapesClipsDataset(0)
    with pytest.raises(ValueError, match="direction 'sideways'"):
        C.ClipScene(S.ObjectSpec("red", "circle"), "sideways")
