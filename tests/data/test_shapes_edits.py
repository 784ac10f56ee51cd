"""Procedural shape edits: instruction grammar, splits disjoint in instructions and input scenes, exact edits."""
import numpy as np
import pytest
import torch

from diffalign.data import shapes as S
from diffalign.data import shapes_edits as E


def _composition(objs):
    return frozenset((p.color, p.shape) for p in objs)


def test_instructions_round_trip_and_bad_text_is_named():
    edits = E.all_edits()
    texts = [E.instruction(e) for e in edits]
    # 12 objects; recolour to 3 other colours, 4 directions, add, remove
    assert len(set(texts)) == len(texts) == 12 * (3 + 4 + 1 + 1)
    for e, t in zip(edits, texts):
        assert E.parse_instruction(t) == e
        assert E.Edit.from_dict(e.as_dict()) == e
    assert E.parse_instruction("Move the red circle to the left.") == E.Edit("move", "red", "circle", direction="left")
    assert E.instruction(E.Edit("recolour", "green", "square", to_color="blue")) == "make the green square blue"
    with pytest.raises(ValueError, match="'make the circle purple' is not a shapes edit"):
        E.parse_instruction("make the circle purple")
    with pytest.raises(ValueError, match="to_color is set exactly for recolour"):
        E.Edit("move", "red", "circle", to_color="blue")
    with pytest.raises(ValueError, match="direction 'sideways'"):
        E.Edit("move", "red", "circle", direction="sideways")
    with pytest.raises(ValueError, match="needs kind, color, shape"):
        E.Edit.from_dict({"kind": "add", "color": "red"})


def test_splits_are_disjoint_in_instructions_and_input_scenes_and_keep_every_attribute_trained():
    for kind in E.EDIT_KINDS:
        train, held = E.split_edits("train", kind), E.split_edits("heldout", kind)
        assert not set(train) & set(held) and set(train) | set(held) == set(E.all_edits(kind))
        assert len(held) >= E.HELDOUT_MIN_PER_KIND
        for attr in ("color", "shape", "to_color", "direction"):
            assert {getattr(e, attr) for e in train} == {getattr(e, attr) for e in E.all_edits(kind)}
        assert all(E.split_of(e) == "heldout" for e in held) and all(E.split_of(e) == "train" for e in train)
    train_in, held_in = set(E.input_compositions("train")), set(E.input_compositions("heldout"))
    assert not train_in & held_in and len(held_in) >= 12
    # training edits never show a held-out scene, as input or as target
    ds = E.EditsDataset(300, seed=1)
    for i in range(len(ds)):
        ex = ds.example(i)
        assert E.split_of(ex.edit) == "train"
        assert _composition(ex.source) not in held_in and _composition(ex.target) not in held_in
    for ex in E.edits("heldout", per_kind=10, seed=2):
        assert E.split_of(ex.edit) == "heldout" and _composition(ex.source) in held_in


def _centre(objs, color, shape):
    (p,) = [o for o in objs if (o.color, o.shape) == (color, shape)]
    return p.cx, p.cy


def test_targets_apply_exactly_the_instruction_and_keep_the_rest():
    for ex in E.edits("train", per_kind=12, seed=0) + E.edits("heldout", per_kind=12, seed=0):
        e = ex.edit
        src = {(o.color, o.shape): o for o in ex.source}
        tgt = {(o.color, o.shape): o for o in ex.target}
        assert len({o.color for o in ex.source}) == len({o.shape for o in ex.source}) == len(ex.source) in (2, 3)
        untouched = {k: v for k, v in src.items() if k != (e.color, e.shape)}
        assert all(tgt[k] == v for k, v in untouched.items())
        if e.kind == "add":
            assert set(tgt) == set(src) | {(e.color, e.shape)}
        elif e.kind == "remove":
            assert set(tgt) == set(untouched)
        elif e.kind == "recolour":
            assert set(tgt) == set(untouched) | {(e.to_color, e.shape)}
            assert _centre(ex.target, e.to_color, e.shape) == _centre(ex.source, e.color, e.shape)
        else:
            (x0, y0), (x1, y1) = _centre(ex.source, e.color, e.shape), _centre(ex.target, e.color, e.shape)
            dx, dy = E.DIRECTION_VECTORS[e.direction]
            assert (x1 - x0, y1 - y0) == pytest.approx((dx * E.MOVE_PX, dy * E.MOVE_PX))
        # nothing touches or leaves the picture: every object's pixels are exactly its own colour and shape
        for objs in (ex.source, ex.target):
            img = S.draw(objs)
            assert sum((S._mask(o.shape, o.cx, o.cy, o.r, 32)).sum() for o in objs) == (img.sum(-1) > 0).sum()
            for a in objs:
                for b in objs:
                    assert a is b or S._apart(a.bbox, b.bbox, E.GAP)


def test_deterministic_from_seed_and_tensor_format():
    a, b = E.EditsDataset(20, seed=5), E.EditsDataset(20, seed=5)
    src, text, tgt = a[7]
    src2, text2, tgt2 = b[7]
    assert text == text2 and torch.equal(src, src2) and torch.equal(tgt, tgt2)
    assert src.shape == tgt.shape == (3, 32, 32) and src.dtype == torch.float32 and 0 <= src.min() <= src.max() <= 1
    assert E.parse_instruction(text) == a.example(7).edit
    assert [x.instruction for x in E.edits(seed=3)] == [x.instruction for x in E.edits(seed=3)]
    assert any(x.source != y.source for x, y in zip(E.edits(seed=3), E.edits(seed=4)))
    kinds = [x.edit.kind for x in E.edits("heldout", per_kind=9)]
    assert kinds == [k for k in E.EDIT_KINDS for _ in range(9)]
    with pytest.raises(IndexError):
        a[20]
    with pytest.raises(ValueError, match="split 'test'"):
        E.EditsDataset(3, split="test")
    with pytest.raises(ValueError, match="per_kind must be >= 1"):
        E.edits(per_kind=0)
    with pytest.raises(ValueError, match="is not a train instruction"):
        E.sample_edit(np.random.default_rng(0), "train", edit=E.split_edits("heldout")[0])


def test_apply_edit_refuses_what_does_not_fit():
    rng = np.random.default_rng(0)
    left = S.Placed("red", "circle", 6.0, 16.0, 5.0, S._bbox("circle", 6.0, 16.0, 5.0, 32))
    other = S.Placed("blue", "square", 24.0, 16.0, 5.0, S._bbox("square", 24.0, 16.0, 5.0, 32))
    assert E.apply_edit(E.Edit("move", "red", "circle", direction="left"), (left, other), rng) is None  # off the border
    assert E.apply_edit(E.Edit("move", "red", "circle", direction="right"), (left, other), rng) is None  # onto the square
    with pytest.raises(ValueError, match="needs exactly one green circle"):
        E.apply_edit(E.Edit("remove", "green", "circle"), (left, other), rng)
    assert E.applies(E.Edit("add", "green", "triangle"), _composition((left, other)))
    assert not E.applies(E.Edit("add", "green", "circle"), _composition((left, other)))  # would repeat a shape
    assert not E.applies(E.Edit("remove", "red", "circle"), _composition((left, other)))  # would leave one object


def test_near_misses_change_one_attribute_and_stay_in_the_split():
    examples = E.edits("train", 12, seed=3)
    found = {k: 0 for k in E.EDIT_KINDS}
    for ex in examples:
        e, comp = ex.edit, _composition(ex.source)
        for m in E.near_misses(ex):
            found[e.kind] += 1
            assert m.kind == e.kind and m != e and E.split_of(m) == "train"
            differing = [f for f in ("color", "shape", "to_color", "direction") if getattr(m, f) != getattr(e, f)]
            if e.kind == "remove":  # another object of the scene
                assert (m.color, m.shape) in comp and differing
            else:
                assert len(differing) == 1
                assert differing[0] in {"recolour": ("to_color",), "move": ("direction",),
                                        "add": ("color", "shape")}[e.kind]
    assert all(found.values()), found  # every kind has near misses
    with pytest.raises(ValueError, match="split"):
        E.near_misses(examples[0], "test")


def test_noisy_instruction_names_a_near_miss_at_the_given_rate():
    ex = next(x for x in E.edits("train", 8, seed=3) if len(E.near_misses(x)) >= 2)
    rng = np.random.default_rng(0)
    texts = [E.noisy_instruction(ex, 0.3, rng) for _ in range(2000)]
    wrong = [t for t in texts if t != ex.instruction]
    assert abs(len(wrong) / len(texts) - 0.3) < 0.04  # binomial sd ~0.01
    assert set(wrong) == {E.instruction(m) for m in E.near_misses(ex)}  # uniform over them: all drawn
    assert all(E.noisy_instruction(ex, 0.0, rng) == ex.instruction for _ in range(50))
    lonely = next((x for x in E.edits("train", 16, seed=3) if not E.near_misses(x)), None)
    if lonely is not None:  # no near miss in the split: the caption stays true
        assert E.noisy_instruction(lonely, 1.0, rng) == lonely.instruction
    with pytest.raises(ValueError, match="prob"):
        E.noisy_instruction(ex, 1.5, rng)
