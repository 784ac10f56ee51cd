"""Prompt items: texts or mappings, from lists or JSONL files, with a stable key for grouping."""
import json

import pytest

from diffalign.rewards.prompts import check_item, group_key, load_prompts, prompt_key, prompt_text


def test_jsonl_holds_texts_and_mappings(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('"a cat"\n\n# a comment\n{"text": "make it blue", "image": "in/cat.png"}\n')
    assert load_prompts(file=str(f)) == ["a cat", {"text": "make it blue", "image": "in/cat.png"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl.*line 2"):
        load_prompts(file=str(bad))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1.*text or a mapping"):
        load_prompts(file=str(wrong))


def test_list_items_and_keys():
    items = load_prompts(["a", 3, {"pocket": "1abc", "num_atoms": 20}])
    assert items[:2] == ["a", "3"]
    key = prompt_key(items[2])
    assert key == prompt_key({"num_atoms": 20, "pocket": "1abc"})  # order-free, stable
    assert json.loads(key) == {"pocket": "1abc", "num_atoms": 20}
    assert prompt_key("a") == "a"
    # the grouping key: an item's "group" entry when it has one, else the item itself
    assert group_key({"text": "x", "group": 3}) == group_key({"text": "y", "group": 3}) != group_key({"group": 4})
    assert group_key(items[2]) == key and group_key("a") == "a"
    assert prompt_text({"text": "x", "image": "y"}) == "x" and prompt_text({"pocket": 1}, "-") == "-"
    with pytest.raises(ValueError, match="prompts.list\\[0\\]"):
        load_prompts([{"bad": object()}])
    with pytest.raises(ValueError, match="keys must be strings"):
        check_item({1: "a"}, "here")


def test_grpo_groups_by_item_key():
    import torch
    from diffalign.algorithms.advantages import group_normalize
    items = [{"text": "a", "n": 1}, {"n": 1, "text": "a"}, {"text": "a", "n": 2}, {"text": "a", "n": 2}]
    adv = group_normalize(torch.tensor([1.0, 3.0, 5.0, 9.0]), [prompt_key(i) for i in items])
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-3)


def test_model_rewards_score_the_text_of_a_mapping_item():
    """Reward.forward hands score() each item's text: clip_score on an edit item reads the instruction, not the
    mapping's repr."""
    import torch
    from diffalign.rewards.base import Reward

    class Texts(Reward):
        seen = []

        def score(self, inputs, prompts):
            Texts.seen = list(prompts)
            return inputs.mean(dim=(1, 2, 3))
    out = Texts()(torch.rand(3, 3, 4, 4), ["a cat", {"text": "make it blue", "image": "in.png"}, {"pocket": "1abc"}])
    assert out.shape == (3,) and Texts.seen == ["a cat", "make it blue", ""]
