import pytest

TINY = {
    "seed": 3,
    "epochs": 4,
    "modality": {"name": "toy", "options": {"dim": 2, "hidden": 32, "scheduler": "ddim", "pretrain_steps": 20}},
    "prompts": {"list": ["a", "b", "c"]},
    "sampling": {"num_steps": 4, "batch_size": 8},
    "reward": {"name": "toy_target_distance"},
    "algorithm": {"name": "ddpo", "clip_range": 0.05, "min_count": 4},
    "train": {"batch_size": 4, "learning_rate": 0.01, "inner_epochs": 2},
    "logging": {"tensorboard": False, "progress_bar": False},
}

# wall-clock fields differ between any two runs; everything else must match exactly
# (and the machine, on the first line each train() call logs)
TIMING = {"samples_per_s", "train_s", "collect_s", "elapsed_s", "hardware"}


def same_run(line: dict) -> dict:
    """A metrics line without what differs between two runs of the same training (wall clock, machine)."""
    return {k: v for k, v in line.items() if k not in TIMING}


@pytest.fixture
def tiny_config(tmp_path):
    import copy
    cfg = copy.deepcopy(TINY)
    cfg["output_dir"] = str(tmp_path / "run")
    return cfg


def write_yaml(path, data):
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)
