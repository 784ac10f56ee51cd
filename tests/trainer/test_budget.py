"""``train.max_minutes``: every loop stops at its next unit of work (a rollout batch, an optimiser step) once the
budget has run out, checkpoints that epoch, saves its final weights and says so in metrics.jsonl."""
import copy
import os

import pytest

from diffalign.cli import shipped_config
from diffalign.config import ConfigError, load_config
from diffalign.trainer import make_trainer
from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint
from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import TINY, same_run
from tests.trainer.test_offline import TOY as OFFLINE_TOY

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false"]


def optimiser_steps(trainer) -> int:
    states = list(trainer.optimizer.state.values())
    return int(states[0]["step"]) if states else 0


def online(tmp_path):
    data = copy.deepcopy(TINY)
    data["output_dir"] = str(tmp_path / "run")
    data["sampling"] = dict(data["sampling"], num_batches_per_epoch=3)  # 24 samples, 6 minibatches, 2 passes
    return data, 12


def offline(tmp_path):
    data = copy.deepcopy(OFFLINE_TOY)
    data["output_dir"] = str(tmp_path / "run")
    return data, 4  # 16 pairs, minibatches of 4


def shipped(name, steps_per_epoch):
    def make(tmp_path):
        import yaml
        with open(shipped_config(name)) as f:
            data = yaml.safe_load(f)
        data["output_dir"] = str(tmp_path / "run")
        return data, steps_per_epoch
    return make


LOOPS = {"online": online, "offline": offline, "differentiable": shipped("draft_tiny", None),
         "step_pairs": shipped("d3po_tiny", None)}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_each_loop_stops_after_one_unit_once_the_budget_is_spent(tmp_path, loop):
    data, _ = LOOPS[loop](tmp_path)
    # 1e-6 minutes: spent before the first check, so each loop does exactly one unit of work
    cfg = load_config(data=data, overrides=QUIET + ["epochs=3", "train.max_minutes=1e-6"])
    trainer = make_trainer(cfg)
    history = trainer.train()
    assert len(history) == 1 and history[0]["stopped_by_budget"] == 1
    assert optimiser_steps(trainer) == 1
    lines = read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))
    assert [line["epoch"] for line in lines] == [0] and lines[0]["stopped_by_budget"] == 1
    assert lines[0]["elapsed_s"] > 0 and lines[0]["hardware"]["torch_threads"] >= 1
    assert load_checkpoint(latest_checkpoint(cfg.output_dir))[1]["epoch"] == 0  # the stopped epoch is saved
    assert os.listdir(os.path.join(cfg.output_dir, "final"))


@pytest.mark.parametrize("loop", ["online", "offline"])
def test_without_a_budget_every_step_runs(tmp_path, loop):
    data, steps = LOOPS[loop](tmp_path)
    trainer = make_trainer(load_config(data=data, overrides=QUIET + ["epochs=1"]))
    history = trainer.train()
    assert optimiser_steps(trainer) == steps and "stopped_by_budget" not in history[0]


def test_a_generous_budget_changes_nothing(tmp_path):
    data, _ = online(tmp_path)
    plain = make_trainer(load_config(data=data, overrides=QUIET + ["epochs=2"])).train()
    data["output_dir"] = str(tmp_path / "budget")
    timed = make_trainer(load_config(data=data, overrides=QUIET + ["epochs=2", "train.max_minutes=60"])).train()
    assert [same_run(m) for m in plain] == [same_run(m) for m in timed]


@pytest.mark.parametrize("value", [0, -1])
def test_max_minutes_must_be_positive(tmp_path, value):
    data, _ = online(tmp_path)
    with pytest.raises(ConfigError, match="train.max_minutes"):
        load_config(data=data, overrides=[f"train.max_minutes={value}"])
