"""RWR's common_noise: the online trainer's minibatches hold whole prompt groups, each group at one step."""
import pytest
import torch

from diffalign.config import ConfigError, load_config
from diffalign.trainer import make_trainer


def recorded_batches(cfg_dict, common_noise):
    cfg_dict["algorithm"] = {"name": "rwr", "weighting": "group", "group_size": 2, "common_noise": common_noise}
    trainer = make_trainer(load_config(data=cfg_dict, overrides=["train.timestep_fraction=0.5", "train.inner_epochs=2"]))
    batches, loss = [], trainer.algorithm.loss

    def recording_loss(batch, policy, reference):
        batches.append((batch.cond["prompt_id"].clone(), batch.steps.clone(), batch.advantages.clone()))
        return loss(batch, policy, reference)

    trainer.algorithm.loss = recording_loss
    metrics = trainer.run_epoch(0)
    return batches, metrics


def blocks_uniform(t, k=2):
    return bool((t.reshape(-1, k) == t.reshape(-1, k)[:, :1]).all())


def test_minibatches_are_whole_groups_at_one_step(tiny_config):
    batches, metrics = recorded_batches(tiny_config, True)
    # 8 samples, train.batch_size 4, 2 of the 4 steps each, 2 inner epochs: 2 x 2 x 2 loss calls
    assert len(batches) == 8 and metrics["grad_norm"] > 0
    for prompt_id, steps, adv in batches:
        assert blocks_uniform(prompt_id) and blocks_uniform(steps)
        # a group's two weights are +-1 (or 0 for a tie): zero-sum within every minibatch
        assert abs(float(adv.sum())) < 1e-5
    # both inner epochs visit every group, in different orders
    firsts = [torch.cat([b[2] for b in batches[:4:2]]), torch.cat([b[2] for b in batches[4::2]])]
    assert sorted(firsts[0].tolist()) == sorted(firsts[1].tolist())


def test_without_common_noise_samples_are_shuffled_one_by_one(tiny_config):
    batches, _ = recorded_batches(tiny_config, False)
    assert not all(blocks_uniform(p) and blocks_uniform(s) for p, s, _ in batches)


def test_groups_must_fit_the_batches(tiny_config):
    tiny_config["algorithm"] = {"name": "rwr", "weighting": "group", "group_size": 8, "common_noise": True}
    with pytest.raises(ConfigError, match=r"algorithm.common_noise' keeps prompt groups of algorithm.group_size = 8 "
                                          r"together: it must divide sampling.batch_size \(8\) and train.batch_size \(4\)"):
        load_config(data=tiny_config)


def test_items_sharing_a_group_entry_form_the_groups(tiny_config):
    """Items with a "group" entry: each rollout group holds group_size distinct items of one group, and GRPO's
    advantages are standardised within it (one state asked for different behaviours, say)."""
    tiny_config["prompts"] = {"list": [{"text": "a", "group": 0}, {"text": "b", "group": 0},
                                       {"text": "c", "group": 1}, {"text": "a", "group": 1}]}
    tiny_config["algorithm"] = {"name": "grpo", "group_size": 2, "beta": 0.0, "clip_range": 0.2}
    trainer = make_trainer(load_config(data=tiny_config))
    prompts = trainer._batch_prompts(0, 0)
    assert prompts == trainer._batch_prompts(0, 0) and len(prompts) == 8  # seeded by (seed, epoch, batch)
    for first, second in zip(prompts[::2], prompts[1::2]):
        assert first["group"] == second["group"] and first["text"] != second["text"]
    seen = []
    advantages = trainer.algorithm.advantages

    def recording(rewards, keys):
        seen.append((rewards.clone(), list(keys)))
        return advantages(rewards, keys)
    trainer.algorithm.advantages = recording
    trainer.run_epoch(0)
    rewards, keys = seen[0]
    assert keys[::2] == keys[1::2] and all(k.startswith("group:") for k in keys)
    adv = advantages(rewards, keys)
    for key in set(keys):  # standardised over each group's samples (a group drawn twice is one group)
        mine = torch.tensor([k == key for k in keys])
        assert abs(float(adv[mine].sum())) < 1e-4 and float(adv[mine].abs().sum()) > 0
