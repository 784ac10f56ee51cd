"""The shapes_edit reward: exact target edits score 1; each kind of wrong edit fails exactly its attributes."""
import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.data import shapes as S
from diffalign.data import shapes_edits as E
from diffalign.rewards import edit_compositional as R
from diffalign.rewards.registry import resolve_reward


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


def _items(tmp_path, examples, with_edit=True):
    items = []
    for i, ex in enumerate(examples):
        path = tmp_path / f"in_{i}.png"
        Image.fromarray(ex.images()[0]).save(path)
        item = {"text": ex.instruction, "image": str(path)}
        if with_edit:
            item["edit"] = ex.edit.as_dict()
        items.append(item)
    return items


def test_every_target_scores_one_through_the_registered_reward(tmp_path):
    examples = E.edits("heldout", per_kind=8, seed=1) + E.edits("train", per_kind=8, seed=1)
    targets = torch.stack([_t(ex.images()[1]) for ex in examples])
    reward = resolve_reward("shapes_edit")
    assert torch.equal(reward(targets, _items(tmp_path, examples)), torch.ones(len(examples)))
    # without the structured spec the instruction text is parsed
    assert torch.equal(reward(targets, _items(tmp_path, examples, with_edit=False)), torch.ones(len(examples)))
    acc = R.edit_accuracies(R.score_items(targets, _items(tmp_path, examples)))
    assert acc["accuracy"] == 1.0 and acc["n"] == len(examples)
    assert all(acc[f"accuracy/{k}"] == 1.0 and acc[f"preserved/{k}"] == 1.0 for k in E.EDIT_KINDS)


def _example(kind: str, seed: int = 0) -> E.EditExample:
    """A held-out example of ``kind`` with 3 input objects where the kind allows (2 for add)."""
    for j in range(200):
        ex = E.sample_edit(np.random.default_rng([seed, j]), "heldout", edit=E.split_edits("heldout", kind)[j % 8])
        if len(ex.source) == (2 if kind == "add" else 3):
            return ex
    raise AssertionError(kind)


def _score(ex: E.EditExample, output_objs):
    out = torch.stack([_t(S.draw(output_objs))])
    return R.score_edits(out, torch.stack([_t(ex.images()[0])]), [ex.edit])[0]


def _shifted(p: S.Placed, dx: float, dy: float) -> S.Placed:
    return S.Placed(p.color, p.shape, p.cx + dx, p.cy + dy, p.r, S._bbox(p.shape, p.cx + dx, p.cy + dy, p.r, 32))


@pytest.mark.parametrize("kind,failed", [("recolour", {"instruction"}), ("move", {"instruction"}),
                                         ("add", {"instruction", "no_extra"}), ("remove", {"instruction", "no_extra"})])
def test_an_unedited_copy_fails_exactly_the_expected_attributes(kind, failed):
    ex = _example(kind)
    result = _score(ex, ex.source)
    assert {a for a, ok in result.attributes.items() if not ok} == failed
    assert result.reward == pytest.approx(1 - len(failed) / 3)  # instruction and no_extra are 0/1, preserved 1


def test_wrong_edits_fail_exactly_their_attributes():
    ex = _example("recolour")
    named = next(o for o in ex.source if (o.color, o.shape) == (ex.edit.color, ex.edit.shape))
    others = [o for o in ex.source if o is not named]
    wrong_colour = others[0].color  # every other palette colour may be taken: borrow an untouched object's
    recoloured_wrong = [S.Placed(wrong_colour, named.shape, named.cx, named.cy, named.r, named.bbox)] + others
    assert _score(ex, recoloured_wrong).attributes == {"instruction": False, "preserved": True, "no_extra": True}
    # the right edit, but one untouched object (of two) drifted 5 px: preserved alone fails, valued 1/2
    target = list(ex.target)
    k = next(i for i, o in enumerate(target) if o in others)
    for dx, dy in ((5, 0), (-5, 0), (0, 5), (0, -5)):
        moved = _shifted(target[k], dx, dy)
        if E._fits(moved, [o for i, o in enumerate(target) if i != k], 32):
            target[k] = moved
            break
    else:
        pytest.skip("no room to shift")
    result = _score(ex, target)
    assert result.attributes == {"instruction": True, "preserved": False, "no_extra": True}
    assert dict(result.values)["preserved"] == pytest.approx(0.5) and result.reward == pytest.approx(2.5 / 3)
    # a removal that also drops an untouched object: preserved 1/2 and no_extra fail
    rm = _example("remove")
    dropped = list(rm.target)[1:]
    r = _score(rm, dropped)
    assert r.attributes == {"instruction": True, "preserved": False, "no_extra": False}
    assert dict(r.values)["preserved"] == pytest.approx(0.5)


def test_moves_must_go_the_right_way_far_enough_and_not_sideways():
    ex = _example("move")
    e = ex.edit
    named = next(o for o in ex.source if (o.color, o.shape) == (e.color, e.shape))
    others = [o for o in ex.source if o is not named]
    dx, dy = E.DIRECTION_VECTORS[e.direction]
    expect = {2.0: False, 5.0: True, 8.0: True}  # min_move is 4 px
    for dist, ok in expect.items():
        result = _score(ex, others + [_shifted(named, dx * dist, dy * dist)])
        assert result.attributes["instruction"] is ok and result.attributes["preserved"]
    # right distance but 5 px sideways (tolerance 3): fails
    sideways = _shifted(named, dx * 8 + dy * 5, dy * 8 + dx * 5)
    assert not _score(ex, others + [sideways]).attributes["instruction"]
    # the moved object and a kept copy at the old place overlap (8 px < a shape's width): one elongated blob of
    # no shape, so the instruction fails
    both = _score(ex, list(ex.target) + [named])
    assert not both.attributes["instruction"] and not both.correct


def test_bad_items_are_named(tmp_path):
    ex = _example("remove")
    img = torch.stack([_t(ex.images()[1])])
    (item,) = _items(tmp_path, [ex])
    with pytest.raises(ValueError, match="prompt item 0 .* has no 'image'"):
        R.score_items(img, [{"text": ex.instruction}])
    with pytest.raises(ValueError, match="prompt item 0: bad 'edit'"):
        R.score_items(img, [dict(item, edit={"kind": "paint"})])
    with pytest.raises(ValueError, match="prompt item 0: instruction 'paint it black'"):
        R.score_items(img, [{"text": "paint it black", "image": item["image"]}])
    with pytest.raises(ValueError, match="1 images but 2 prompt items"):
        R.score_items(img, [item, item])
    absent = next(e for e in E.all_edits("remove") if (e.color, e.shape) not in {(o.color, o.shape) for o in ex.source})
    with pytest.raises(ValueError, match="the input needs exactly one"):
        R.score_items(img, [dict(item, edit=absent.as_dict())])
    with pytest.raises(ValueError, match="EditTolerance.min_move must be >= 0"):
        R.EditTolerance(min_move=-1)
    assert R.edit_accuracies([]) == {}
