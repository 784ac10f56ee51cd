"""Bad configs fail before any compute, with one message naming the key and the value."""
import os
import subprocess
import sys

import pytest

from diffalign.config import ConfigError, TrainConfig, apply_overrides, load_config, parse_overrides
from tests.trainer.conftest import write_yaml


def test_valid_config_loads_with_types_and_overrides(tiny_config):
    cfg = load_config(data=tiny_config, overrides=["train.learning_rate=1e-3", "epochs=7", "prompts.list=[x, y]"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.train.learning_rate == 1e-3 and cfg.epochs == 7 and cfg.prompts.list == ["x", "y"]
    assert cfg.sampling.num_steps == 4 and cfg.algorithm["name"] == "ddpo"


@pytest.mark.parametrize("overrides,message", [
    (["train.learnig_rate=1"], r"unknown config key 'train.learnig_rate' \(value 1\)"),
    (["bogus=3"], r"unknown config key 'bogus' \(value 3\)"),
    (["epochs=three"], r"'epochs': expected an integer, got 'three'"),
    (["train.learning_rate=fast"], r"'train.learning_rate': expected a number, got 'fast'"),
    (["logging.tensorboard=maybe"], r"'logging.tensorboard': expected true/false, got 'maybe'"),
    (["prompts.list=null", "prompts.file=/no/such/prompts.txt"], r"'prompts.file': file '/no/such/prompts.txt'"),
    (["train.batch_size=3"], r"'train.batch_size' = 3 does not divide the 8 samples"),
    (["train.gradient_accumulation_steps=3"], r"'train.gradient_accumulation_steps' = 3"),
    (["algorithm.name=ppo"], r"'algorithm.name' must be one of .*got 'ppo'"),
    (["algorithm.clip_rang=0.1"], r"unknown config key 'algorithm.clip_rang' \(value 0.1\)"),
    (["algorithm.estimator=reinforce"], r"algorithm.estimator must be one of .*'reinforce'"),
    (["algorithm={name: grpo, group_size: 3}"], r"'algorithm.group_size' = 3 does not divide the rollout batch of 8"),
    (["modality.options.dims=4"], r"unknown config key 'modality.options.dims' \(value 4\)"),
    (["modality.options.scheduler=euler"], r"'modality.options.scheduler' must be one of .*'euler'"),
    (["modality.name=audio"], r"'modality.name' must be one of .*'audio'"),
    (["sampling.step_rule=heun"], r"'sampling.step_rule' must be one of .*'heun'"),
    (["train.timestep_fraction=1.5"], r"'train.timestep_fraction' must lie in \(0, 1\], got 1.5"),
    (["train.ema_decay=1.0"], r"'train.ema_decay' must lie in \[0, 1\) \(0: no average\), got 1.0"),
    (["resume_from=/no/such/ckpt"], r"'resume_from': checkpoint '/no/such/ckpt' does not exist"),
    (["output_dir=''"], r"'output_dir' is required"),
    (["output_dir="], r"'output_dir': expected a string, got None"),
    (["reward.name=no_such_reward"], r"reward.name 'no_such_reward' is unknown"),
    (["reward.kwargs={scale: 2}"], r"reward.kwargs \{'scale': 2\} do not fit reward 'toy_target_distance'"),
    (["modality={name: image, options: {model: tiny, architecture: sd3, prediction_type: v_prediction}}",
      "reward.name=brightness"], r"'modality.options.prediction_type' applies to the tiny UNet preset only"),
])
def test_bad_values_name_key_and_value(tiny_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(data=tiny_config, overrides=overrides)


def test_group_size_checked_against_all_processes(tiny_config):
    tiny_config["algorithm"] = {"name": "grpo", "group_size": 16}
    with pytest.raises(ConfigError, match="rollout batch of 8"):
        load_config(data=tiny_config)
    assert load_config(data=tiny_config, num_processes=2).algorithm["group_size"] == 16


def test_prompts_file_is_accepted(tiny_config, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\nred fox\n\nblue whale\n")
    cfg = load_config(data=tiny_config, overrides=["prompts.list=null", f"prompts.file={path}"])
    assert cfg.prompts.file == str(path)


def test_override_parsing():
    assert parse_overrides(["a.b=1", "c=[x, y]", "d=true", "e=hello world"]) == {
        "a.b": 1, "c": ["x", "y"], "d": True, "e": "hello world"}
    assert apply_overrides({"a": {"b": 0}}, {"a.b": 2, "x.y.z": 3}) == {"a": {"b": 2}, "x": {"y": {"z": 3}}}
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        apply_overrides({"epochs": 3}, {"epochs.x": 1})


def test_cli_overrides_may_follow_options(capsys):
    """`diffalign demo molecule --seed 1 algorithm.beta=2000`: an override after an option joins args.overrides
    (argparse alone called it unrecognized); a stray word is still an error."""
    from diffalign.cli import parse_args
    args, _ = parse_args(["demo", "molecule", "--seed", "1", "algorithm.beta=2000", "--quick", "train.lr=1"])
    assert (args.modality, args.seed, args.quick) == ("molecule", 1, True)
    assert args.overrides == ["algorithm.beta=2000", "train.lr=1"]
    args, _ = parse_args(["train", "dpo_tiny", "epochs=2", "seed=3"])
    assert args.overrides == ["epochs=2", "seed=3"]
    with pytest.raises(SystemExit):
        parse_args(["demo", "molecule", "--seed", "1", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_cli_reports_bad_config_before_any_compute(tiny_config, tmp_path):
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    proc = subprocess.run([sys.executable, "-m", "diffalign.cli", "train", path, "train.batch_size=5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "'train.batch_size' = 5" in proc.stderr
    assert not os.path.exists(tiny_config["output_dir"])  # nothing was built or written


def test_shipped_configs_are_valid(tmp_path):
    from diffalign.cli import shipped_config
    names = ["toy_ddpo", "ddpo_tiny", "dpok_tiny", "rwr_tiny", "grpo_tiny", "ddpo_sd15", "dpok_sdxl", "grpo_sd35m",
             "toy_sds"]
    for name in names:
        path = shipped_config(name)
        assert path is not None, name
        load_config(path, [f"output_dir={tmp_path}"])
