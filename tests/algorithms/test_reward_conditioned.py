"""HIVE's fine-tuning ways as options of online RWR: reward-conditioned training (levels written into the prompt,
sampling asks for the top one) and reward-weighted training scored by a trained edit reward model."""
import json
import os

import pytest
import torch

from diffalign.algorithms.reward_condition import (HIVE_TEMPLATE, RewardConditionConfig, condition_item, level_items,
                                                   quantize, top_items)
from diffalign.cli.train import shipped_config
from diffalign.config import ConfigError, load_config

FAST = ["sampling.batch_size=16", "sampling.num_steps=4", "train.inner_epochs=2", "train.timestep_fraction=0.5",
        "train.learning_rate=0.001", "logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.every=1000"]


def test_quantize_quantiles_and_fixed_range():
    cfg = RewardConditionConfig(levels=4)
    r = torch.tensor([0.3, -1.0, 2.0, 0.1, 0.5, 0.2, 9.0, -3.0])
    # rank 0..7 -> 1 + floor(4 * rank / 8): two samples per level, in reward order
    assert quantize(r, cfg).tolist() == [3, 1, 4, 2, 3, 2, 4, 1]
    fixed = RewardConditionConfig(levels=5, range=[0.0, 1.0])
    r = torch.tensor([-0.5, 0.0, 0.19, 0.2, 0.5, 0.99, 1.0, 7.0])
    assert quantize(r, fixed).tolist() == [1, 1, 1, 2, 3, 5, 5, 5]


def test_condition_items_hive_form():
    cfg = RewardConditionConfig()
    assert cfg.template == HIVE_TEMPLATE
    # HIVE's released sampler: instruction + ", image quality is five out of five"
    assert top_items(["make it snowy"], cfg) == ["make it snowy, image quality is five out of five"]
    edit = {"text": "make it snowy", "image": "in.png"}
    want = {"text": "make it snowy, image quality is two out of five", "image": "in.png"}
    assert condition_item(edit, 2, cfg) == want
    assert edit["text"] == "make it snowy"   # the item itself is left as it was
    short = RewardConditionConfig(levels=3, template="{level}/{levels} {text}", words=False)
    assert level_items(["a", "b", "c"], torch.tensor([5.0, -1.0, 0.0]), short) == ["3/3 a", "1/3 b", "2/3 c"]
    with pytest.raises(ValueError, match="no text to condition"):
        condition_item({"image": "in.png"}, 1, cfg)
    with pytest.raises(ValueError, match="outside 1..5"):
        condition_item("x", 6, cfg)
    for bad, match in (({"levels": 1}, "levels must be >= 2"), ({"template": "{text}"}, "must contain"),
                       ({"template": "{text} {level} {oops}"}, "only {text}"), ({"range": [1.0, 0.0]}, "lo < hi"),
                       ({"levels": 12}, "set words: false")):
        with pytest.raises(ValueError, match=match):
            RewardConditionConfig(**bad)


def test_named_levels_and_what_sampling_asks_for():
    """``words`` as a list names the levels (a small word vocabulary); a reward-conditioned model samples at the top
    level, any other at the items themselves."""
    from types import SimpleNamespace
    from diffalign.algorithms.reward_condition import sampling_items
    named = RewardConditionConfig(levels=2, template="{text} {level}", words=["two", "three"])
    edit = {"text": "add a red circle", "image": "in.png"}
    assert level_items([edit, edit], torch.tensor([0.1, 0.9]), named) == [
        {"text": "add a red circle two", "image": "in.png"}, {"text": "add a red circle three", "image": "in.png"}]
    assert sampling_items(SimpleNamespace(reward_condition=named), [edit, "a cat"]) == [
        {"text": "add a red circle three", "image": "in.png"}, "a cat three"]
    assert sampling_items(SimpleNamespace(reward_condition=None), [edit]) == [edit]
    assert sampling_items(SimpleNamespace(), ["a cat"]) == ["a cat"]
    with pytest.raises(ValueError, match="a list names each of the 2 levels"):
        RewardConditionConfig(levels=2, words=["one"])


def test_config_checks():
    cfg = load_config(shipped_config("demo_editing_hive"))  # words as a list of the levels' names
    assert cfg.algorithm["reward_condition"]["words"] == ["two", "three"]
    with pytest.raises(ConfigError, match=r"reward_condition.words': 3 fits none of its types \(expected true/false"):
        load_config(shipped_config("demo_editing_hive"), ["algorithm.reward_condition.words=3"])
    with pytest.raises(ConfigError, match="needs algorithm.reward_condition"):
        load_config(shipped_config("hive_conditioned_tiny"), ["algorithm.reward_condition=null"])
    with pytest.raises(ConfigError, match="algorithm.reward_condition.levels"):
        load_config(shipped_config("hive_conditioned_tiny"), ["algorithm.reward_condition.levels=1"])


def _sample_reward(trainer, level, rc, seeds, reward):
    from diffalign.inference.sampler import encode_items, seeded_generators
    items = [trainer.prompts[i % len(trainer.prompts)] for i in range(len(seeds))]
    cond = encode_items(trainer.adapter, [condition_item(p, level, rc) for p in items], seeds)
    trainer.adapter.denoiser.eval()
    with torch.no_grad():
        traj = trainer.policy.sample(cond, generator=seeded_generators(seeds))
        return reward(trainer.adapter.decode(traj.x0, cond), items).double()


def _trained_gap(tmp_path, sign):
    """Top-level minus bottom-level reward, paired over the same seeds and prompts, after 3 epochs of
    reward-conditioned RWR whose levels come from ``sign`` * the reward (the gap is measured with the reward)."""
    from diffalign.rewards import bind_reward_kwargs, resolve_reward
    from diffalign.trainer import make_trainer
    # two levels (top and bottom half of each batch) and 32 rollouts per epoch: the most signal per second
    cfg = load_config(shipped_config("hive_conditioned_tiny"),
                      [f"output_dir={tmp_path / str(sign)}", "epochs=3"] + FAST
                      + ["algorithm.reward_condition.levels=2", "sampling.batch_size=32", "train.batch_size=16"])
    trainer = make_trainer(cfg)
    rc = trainer.algorithm.config.reward_condition
    reward = bind_reward_kwargs(resolve_reward(cfg.reward.name), cfg.reward.name, cfg.reward.kwargs)
    trainer.reward_fn = lambda samples, prompts: sign * reward(samples, prompts)
    seeds = list(range(1000, 1032))
    before = _sample_reward(trainer, rc.levels, rc, seeds, reward) - _sample_reward(trainer, 1, rc, seeds, reward)
    assert len(trainer.train()) == 3
    after = _sample_reward(trainer, rc.levels, rc, seeds, reward) - _sample_reward(trainer, 1, rc, seeds, reward)
    return before, after


def test_reward_levels_raise_the_top_level_reward_against_a_reversed_control(tmp_path):
    torch.set_num_threads(1)
    before, up = _trained_gap(tmp_path, +1.0)
    # control: the same run with the levels assigned by the negated reward (top level = the worst samples)
    _, down = _trained_gap(tmp_path, -1.0)
    se = float((up - down).std() / len(up) ** 0.5)
    print(f"top - bottom level reward: untrained {float(before.mean()):.2e}, trained {float(up.mean()):.2e}, "
          f"trained on the negated reward {float(down.mean()):.2e} (se of the difference {se:.1e})")
    # 3 short epochs do not undo the untrained model's arbitrary gap between the two prompts (both runs shrink
    # it alike); what the levels teach is the difference between the runs: asking for the top level gives more
    # reward after training on the reward's levels than after training on reversed ones, on the same seeds.
    # (Longer runs do not make the top level beat the bottom one outright on this random model: docs/experiments.md.)
    assert float((up - down).mean()) > 3 * se, (up.tolist(), down.tolist())


def test_rollouts_sample_plain_prompts_and_train_on_their_levels(tmp_path, monkeypatch):
    """The trainer samples the plain prompts (HIVE's data) and re-encodes each sample at its reward's level."""
    torch.set_num_threads(1)
    from diffalign.trainer import make_trainer
    cfg = load_config(shipped_config("hive_conditioned_tiny"), [f"output_dir={tmp_path}", "epochs=1",
                                                                "sampling.batch_size=8", "train.batch_size=8",
                                                                "train.inner_epochs=1"] + FAST[1:])
    trainer = make_trainer(cfg)
    seen = []
    encode = trainer.adapter.encode_conditions

    def spy(items, generators=None):
        seen.append(list(items))
        return encode(items, generators)
    monkeypatch.setattr(trainer.adapter, "encode_conditions", spy)
    scored = []
    fn = trainer.reward_fn

    def reward(samples, prompts):
        scored.append(list(prompts))
        return fn(samples, prompts)
    trainer.reward_fn = reward
    trainer.train()
    asked, trained = seen[0], seen[1]
    assert asked == scored[0] and all("/5" not in t for t in asked)   # plain prompts sampled and scored
    assert sorted(t.split(" ", 1)[0] for t in trained) == ["1/5", "1/5", "2/5", "2/5", "3/5", "4/5", "4/5", "5/5"]
    assert [t.split(" ", 1)[1] for t in trained] == scored[0]


def test_reward_weighted_with_a_trained_edit_reward_model(tmp_path):
    """HIVE's reward-weighted way: RWR whose reward is an edit reward model (a reward directory) scoring rollouts
    made from edit items {"text", "image"}; the image modality reads their text."""
    torch.set_num_threads(1)
    from diffalign.trainer.reward_model import load_reward_train_config, train_reward_model
    rm_cfg = load_reward_train_config(shipped_config("hive_reward_tiny"),
                                      [f"output_dir={tmp_path / 'rm'}", "epochs=2", "data.synthetic.num_groups=16"])
    train_reward_model(rm_cfg)
    data = tmp_path / "rm" / "synthetic_data"
    rows = [json.loads(line) for line in open(data / "edits.jsonl")][:4]
    prompts = tmp_path / "edits.jsonl"
    prompts.write_text("".join(json.dumps({"text": r["prompt"], "image": str(data / r["input"])}) + "\n" for r in rows))
    from diffalign.trainer import make_trainer
    cfg = load_config(shipped_config("hive_rwr_tiny"), [f"output_dir={tmp_path / 'run'}", "epochs=1",
                                                        f"reward.name={tmp_path / 'rm' / 'reward'}",
                                                        "prompts.list=null", f"prompts.file={prompts}",
                                                        "sampling.batch_size=8", "train.inner_epochs=1"] + FAST[1:])
    lines = make_trainer(cfg).train()
    assert len(lines) == 1 and lines[0]["reward_std"] > 0 and lines[0]["weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert os.path.isfile(os.path.join(tmp_path, "run", "final", "config.json"))


def test_reward_conditioning_on_the_editing_modality(tmp_path, monkeypatch):
    """The same option on the InstructPix2Pix adapter: the levels rewrite the instruction and keep the input image,
    and an edit reward of this package (pixel preservation, reading the items' inputs) scores the rollouts."""
    torch.set_num_threads(1)
    from diffalign.trainer import make_trainer
    cfg = load_config(shipped_config("editing_ddpo_tiny"), [
        f"output_dir={tmp_path}", "epochs=1", "sampling.batch_size=4", "sampling.num_steps=2", "train.batch_size=4",
        "reward.name=edit_preservation",
        "algorithm={name: rwr, weighting: uniform, reward_condition: {levels: 2}}"])
    trainer = make_trainer(cfg)
    seen = []
    encode = trainer.adapter.encode_conditions

    def spy(items, generators=None):
        seen.append(list(items))
        return encode(items, generators)
    monkeypatch.setattr(trainer.adapter, "encode_conditions", spy)
    lines = trainer.train()
    assert len(lines) == 1 and 0 < lines[0]["reward_mean"] <= 1
    sampled, trained = seen[0], seen[1]
    assert all(t["image"] == s["image"] for s, t in zip(sampled, trained))
    assert sorted(t["text"].rsplit(", ", 1)[1] for t in trained) == ["image quality is one out of two"] * 2 + \
        ["image quality is two out of two"] * 2


def test_reward_weighted_on_the_editing_modality(tmp_path):
    """HIVE's reward-weighted way on the InstructPix2Pix adapter: RWR whose reward is the edit reward model."""
    torch.set_num_threads(1)
    from diffalign.trainer import make_trainer
    from diffalign.trainer.reward_model import load_reward_train_config, train_reward_model
    train_reward_model(load_reward_train_config(shipped_config("hive_reward_tiny"), [
        f"output_dir={tmp_path / 'rm'}", "epochs=2", "data.synthetic.num_groups=16"]))
    cfg = load_config(shipped_config("editing_ddpo_tiny"), [
        f"output_dir={tmp_path / 'run'}", "epochs=1", "sampling.batch_size=4", "sampling.num_steps=2",
        "train.batch_size=4", f"reward.name={tmp_path / 'rm' / 'reward'}",
        "algorithm={name: rwr, weighting: exp, temperature: 20.0}"])
    lines = make_trainer(cfg).train()
    assert len(lines) == 1 and lines[0]["reward_std"] > 0 and lines[0]["weight_mean"] == pytest.approx(1.0, abs=1e-5)
