"""The shared results of the rule-based demo rewards (rewards/checks.py), against hand counts."""
from diffalign.rewards.checks import Check, CheckedSample, accuracies


def test_checked_sample_reward_attributes_and_values():
    s = CheckedSample("two blue squares", "count", (
        Check("color", "a blue object", True), Check("shape", "a blue square", True),
        Check("count", "exactly 2", False), Check("count", "each colour once", True)))
    assert s.reward == 0.75 and not s.correct
    assert s.attributes == {"color": True, "shape": True, "count": False}  # all of an attribute's checks
    assert s.values == {"color": 1.0, "shape": 1.0, "count": 0.5}
    graded = CheckedSample("a red circle moving up", "moving", (
        Check("direction", "1 track moving up", True, 1.0), Check("smoothness", "constant velocity", False, 0.5)))
    assert graded.reward == 0.75 and graded.values == {"direction": 1.0, "smoothness": 0.5}
    d = s.as_dict()
    assert d["constraints"][0] == {"attribute": "color", "text": "a blue object", "ok": True}  # no value: not written
    assert graded.as_dict()["constraints"][1]["value"] == 0.5


def test_accuracies_count_only_the_samples_stating_an_attribute():
    a = CheckedSample("x", "single", (Check("color", "", True), Check("shape", "", True)))
    b = CheckedSample("y", "relation", (Check("color", "", False), Check("position", "", True)))
    out = accuracies([a, b], ("color", "shape", "position", "count"), ("single", "relation", "count"))
    assert out == {"accuracy": 0.5, "reward": 0.75, "n": 2.0, "color": 0.5, "shape": 1.0, "position": 1.0,
                   "accuracy/single": 1.0, "accuracy/relation": 0.0}
    assert accuracies([], ("color",), ("single",)) == {}


def test_accuracies_per_kind_attributes():
    a = CheckedSample("x", "move", (Check("instruction", "", True), Check("preserved", "", False, 0.5)))
    b = CheckedSample("y", "move", (Check("instruction", "", False), Check("preserved", "", True, 1.0)))
    c = CheckedSample("z", "add", (Check("instruction", "", True), Check("preserved", "", True, 1.0)))
    out = accuracies([a, b, c], ("instruction", "preserved"), ("move", "add", "remove"), attributes_per_kind=True)
    assert out["instruction/move"] == 0.5 and out["preserved/move"] == 0.5 and out["instruction/add"] == 1.0
    assert "instruction/remove" not in out and out["accuracy/move"] == 0.0 and out["reward"] == (0.75 + 0.5 + 1) / 3
