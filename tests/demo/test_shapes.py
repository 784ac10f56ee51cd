import numpy as np
import pytest
import torch

from diffalign.demo import shapes as S


def test_caption_roundtrip_for_every_caption_and_kinds():
    caps = S.all_captions()
    assert len(caps) == len(set(caps)) == 12 * 3 + 4 * 12 * 9  # 36 single/count + 432 relation
    for c in caps:
        assert S.caption(S.parse_caption(c)) == c
        assert set(c.split()) <= set(S.VOCAB)
    assert S.caption(S.Scene((S.ObjectSpec("red", "circle"),))) == "a red circle"
    assert S.caption(S.Scene((S.ObjectSpec("blue", "square", 2),))) == "two blue squares"
    rel = S.Scene((S.ObjectSpec("green", "triangle"), S.ObjectSpec("yellow", "circle")), "left of")
    assert S.caption(rel) == "a green triangle left of a yellow circle"
    assert S.parse_caption("  A Green triangle LEFT OF a yellow circle. ") == rel
    assert [S.caption_kind(c) for c in ("a red circle", "three red circles", S.caption(rel))] == ["single", "count", "relation"]


@pytest.mark.parametrize("text,word", [("a purple circle", "purple"), ("a red hexagon", "hexagon"),
                                       ("two red circle", "circle"), ("four red circles", "four"),
                                       ("a red circle near a blue square", "near"),
                                       ("a red circle left of a blue square please", "please"),
                                       ("two red circles left of a blue square", "relation needs single"),
                                       ("a red", "a red")])
def test_parse_caption_names_caption_and_bad_word(text, word):
    with pytest.raises(ValueError, match=f"caption {text!r}.*{word}"):
        S.parse_caption(text)


def test_scene_and_spec_validation():
    with pytest.raises(ValueError, match="ObjectSpec.color 'pink'"):
        S.ObjectSpec("pink", "circle")
    with pytest.raises(ValueError, match="exactly 2 objects of count 1"):
        S.Scene((S.ObjectSpec("red", "circle", 2), S.ObjectSpec("blue", "circle")), "above")
    with pytest.raises(ValueError, match="exactly 1 object spec"):
        S.Scene((S.ObjectSpec("red", "circle"), S.ObjectSpec("blue", "circle")))
    with pytest.raises(ValueError, match="split 'test'"):
        S.prompts("test")


def test_heldout_split_is_disjoint_stratified_and_mirror_closed():
    train, held = set(S.all_captions("train")), set(S.all_captions("heldout"))
    assert not train & held and len(train) + len(held) == len(S.all_captions())
    for kind in S.KINDS:
        n_kind = sum(S.caption_kind(c) == kind for c in S.all_captions())
        n_held = sum(S.caption_kind(c) == kind for c in held)
        # 20% of a kind's pictures, but at least HELDOUT_MIN_PER_KIND (8 of the 12 single-object captions)
        n_pictures = n_kind // 2 if kind == "relation" else n_kind  # a relation picture has two wordings
        n_held_pictures = n_held // 2 if kind == "relation" else n_held
        assert n_held_pictures == max(S.HELDOUT_MIN_PER_KIND, round(S.HELDOUT_FRACTION * n_pictures)), kind
    mirror = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for c in held:
        sc = S.parse_caption(c)
        if sc.relation:  # the same picture under the mirrored wording is held out too
            assert S.caption(S.Scene(sc.objects[::-1], mirror[sc.relation])) in held
        assert S.split_of(c) == "heldout"
    # every colour, shape and count is still seen in training, alone and in relations
    scenes = [S.parse_caption(c) for c in train]
    for kind in S.KINDS:
        objs = [o for s in scenes if S.caption_kind(s) == kind for o in s.objects]
        assert {o.color for o in objs} == set(S.COLORS) and {o.shape for o in objs} == set(S.SHAPES)
    assert {s.objects[0].count for s in scenes if not s.relation} == set(S.COUNTS)
    assert {s.relation for s in scenes} - {None} == set(S.RELATIONS)


def test_prompts_deterministic_balanced_and_within_split():
    assert S.prompts("heldout") == list(S.all_captions("heldout"))
    a = S.prompts("heldout", 40, seed=3)
    assert a == S.prompts("heldout", 40, seed=3) and a != S.prompts("heldout", 40, seed=4)
    assert set(a) <= set(S.all_captions("heldout"))
    # balanced: the kinds alternate while all last
    assert [S.caption_kind(c) for c in a[:3]] == list(S.KINDS)
    held = S.all_captions("heldout")
    assert len(set(S.prompts("heldout", len(held)))) == len(held)  # no repeats before the split is used up
    assert len(S.prompts("train", 1000)) == 1000 and S.prompts("train", 0) == []


def test_sample_scene_and_render_deterministic_from_seed():
    s1 = [S.sample_scene(np.random.default_rng(7)) for _ in range(2)]
    assert s1[0] == s1[1]
    img1 = S.render(s1[0], 32, np.random.default_rng(1))
    img2 = S.render(s1[0], 32, np.random.default_rng(1))
    assert img1.dtype == np.uint8 and img1.shape == (32, 32, 3) and np.array_equal(img1, img2)
    assert np.array_equal(S.render(s1[0]), S.render(s1[0]))  # rng=None is default_rng(0)
    rng = np.random.default_rng(0)
    for split in S.SPLITS:
        for _ in range(50):
            assert S.split_of(S.sample_scene(rng, split)) == split


def _components(mask):
    ndimage = pytest.importorskip("scipy.ndimage")
    return ndimage.label(mask, structure=np.ones((3, 3)))[1]


@pytest.mark.parametrize("size", [32, 64])
def test_layout_honours_counts_colours_gaps_and_relations(size):
    rng = np.random.default_rng(0)
    kinds_seen = set()
    for _ in range(300):
        scene = S.sample_scene(rng)
        kinds_seen.add(S.caption_kind(scene))
        placed = S.layout(scene, size, rng)
        img = S.draw(placed, size)
        assert len(placed) == sum(o.count for o in scene.objects)
        # only palette colours and black; every object its own connected component (nothing touches)
        colours = {tuple(p) for p in img.reshape(-1, 3)}
        assert colours <= set(S.COLORS.values()) | {(0, 0, 0)}
        for name, rgb in S.COLORS.items():
            n = sum(p.color == name for p in placed)
            assert _components(np.all(img == rgb, axis=-1)) == n
        for p in placed:
            assert p.r >= 4 * size / 32 - 1e-9 and p.r <= 7 * size / 32 + 1e-9
            x0, y0, x1, y1 = p.bbox
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        if scene.relation:
            a, b = placed
            dx, dy = b.cx - a.cx, b.cy - a.cy
            want = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[scene.relation]
            assert want >= size / 4
    assert kinds_seen == set(S.KINDS)


def test_shape_pixels_match_areas():
    # flat shapes of radius r: circle pi r^2, square (1.7 r)^2, triangle 2 r^2 (pixel-centre sampling)
    for shape, area in [("circle", np.pi * 64), ("square", (1.7 * 8) ** 2), ("triangle", 2 * 64)]:
        img = S.draw([S.Placed("red", shape, 32.0, 32.0, 8.0, (0, 0, 64, 64))], 64)
        n = np.all(img == S.COLORS["red"], axis=-1).sum()
        assert abs(n - area) / area < 0.08, (shape, n, area)


def test_dataset_items_deterministic_and_in_split():
    ds = S.ShapesDataset(20, seed=5)
    x, c = ds[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    x2, c2 = S.ShapesDataset(20, seed=5)[4]
    assert c == c2 and torch.equal(x, x2)
    x3, _ = ds[-16]
    assert torch.equal(x3, x)
    assert all(S.split_of(ds[i][1]) == "train" for i in range(20))
    assert all(S.split_of(cap) == "heldout" for _, cap in S.ShapesDataset(10, seed=5, split="heldout"))
    assert S.ShapesDataset(4, 0, size=48)[0][0].shape == (3, 48, 48)
    with pytest.raises(IndexError):
        ds[20]
    with pytest.raises(ValueError, match="n must be >= 1"):
        S.ShapesDataset(0)


def test_noisy_caption_changes_only_colours_keeps_train_split_and_is_deterministic():
    captions = S.prompts("train")
    rng = np.random.default_rng(0)
    changed = 0
    for text in captions:
        scene = S.parse_caption(text)
        noisy = S.noisy_caption(scene, rng, 0.5)
        assert S.split_of(noisy) == "train"  # a held-out caption is never trained, not even as noise
        got = S.parse_caption(noisy)
        assert got.relation == scene.relation
        assert [(o.shape, o.count) for o in got.objects] == [(o.shape, o.count) for o in scene.objects]
        assert len({o.color for o in got.objects}) == len(got.objects)  # relations keep two colours
        changed += noisy != text
    # about 1 - 0.5^2 of the (mostly two-object) captions change, fewer where the swap would be held out
    assert 0.45 < changed / len(captions) < 0.8
    scene = S.parse_caption(captions[0])
    a = [S.noisy_caption(scene, np.random.default_rng(7), 0.5) for _ in range(3)]
    assert a == [S.noisy_caption(scene, np.random.default_rng(7), 0.5) for _ in range(3)]
    assert S.noisy_caption(scene, np.random.default_rng(1), 0.0) == captions[0]
    always = [S.noisy_caption(S.parse_caption(c), rng, 1.0) != c for c in captions]
    # all but the swaps that would be held out (most single-object swaps: 8 of the 12 are held out)
    assert np.mean(always) > 0.75
    singles = [c for c in captions if S.caption_kind(c) == "single"]
    assert all(S.split_of(S.noisy_caption(S.parse_caption(c), rng, 1.0)) == "train" for c in singles)
    with pytest.raises(ValueError, match="color_noise"):
        S.noisy_caption(scene, rng, 1.5)


def test_balanced_prompts_cycle_each_kinds_captions_in_order():
    out = S.balanced_prompts("heldout", 7)
    assert len(out) == 21
    for k, kind in enumerate(S.KINDS):
        group = [c for c in S.all_captions("heldout") if S.caption_kind(c) == kind]
        assert out[7 * k:7 * (k + 1)] == [group[i % len(group)] for i in range(7)]
    with pytest.raises(ValueError, match="per_kind"):
        S.balanced_prompts("heldout", 0)
    with pytest.raises(ValueError, match="split"):
        S.balanced_prompts("test", None)


def test_balanced_prompts_without_per_kind_list_every_caption_and_each_kind_equally_often():
    train = S.all_captions("train")
    sizes = {kind: sum(S.caption_kind(c) == kind for c in train) for kind in S.KINDS}
    out = S.balanced_prompts("train", None)
    assert set(out) == set(train)  # nothing dropped
    assert all(sum(S.caption_kind(c) == kind for c in out) == max(sizes.values()) for kind in S.KINDS)
    with pytest.raises(ValueError, match="split"):
        S.balanced_prompts("test", 3)


def test_balanced_prompts_of_chosen_kinds():
    out = S.balanced_prompts("train", 5, kinds=("count", "single"))  # listed in KINDS order whatever was asked
    assert [S.caption_kind(c) for c in out] == ["single"] * 5 + ["count"] * 5
    assert out == S.balanced_prompts("train", 5)[:10]
    counts = [c for c in S.all_captions("train") if S.caption_kind(c) == "count"]
    assert len(S.balanced_prompts("train", None, kinds=("count",))) == len(counts)
    for bad in ((), ("single", "single"), ("colour",)):
        with pytest.raises(ValueError, match="kinds must be distinct caption kinds"):
            S.balanced_prompts("train", 3, kinds=bad)
