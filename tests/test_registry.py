"""Modalities and rewards from Python entry points (diffalign/registry.py): a fake installed plugin (a dist-info
folder on sys.path, as pip would write it) registers a modality and rewards, and `diffalign train` uses them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from diffalign import registry
from diffalign.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLUGIN = '''
import dataclasses
import torch
from diffalign.registry import ModalityEntry, RewardType

CALLS = []

@dataclasses.dataclass
class PlaneOptions:
    dim: int = 2
    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"config key 'modality.options.dim' must be >= 1, got {self.dim}")

def build(options, prompts, device):
    from diffalign.modalities.toy import ToyAdapter
    return ToyAdapter(prompts, dim=options.dim, hidden=16, scheduler="ddim", device=device, pretrain_steps=0)

def plane_norm(samples, prompts):          # the modality's own reward
    return -samples.norm(dim=-1)

def first_coord(samples, prompts, scale=1.0):   # a generic reward, by entry point
    CALLS.append(len(prompts))
    return scale * samples[:, 0]

class Mean(torch.nn.Module):
    def forward(self, samples, prompts):
        return samples.float().flatten(1).mean(1)

def load_mean(directory, device, dtype, offset=0.0):
    return lambda samples, prompts: Mean()(samples, prompts) + offset

MODALITY = ModalityEntry(options=PlaneOptions, build=build, rewards=lambda: {"plane_norm": plane_norm})
MEAN = RewardType(load_mean)
NOT_AN_ENTRY = 3
'''


def install_plugin(tmp_path, monkeypatch, entry_points: str, module: str = PLUGIN, name: str = "fake_plugin"):
    """Write ``<name>`` (module fakeplug) as an installed distribution under tmp_path and put it on sys.path."""
    site = tmp_path / f"site_{name}"
    site.mkdir()
    (site / "fakeplug.py").write_text(module)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("fakeplug", None)
    monkeypatch.setattr(registry.modalities, "_loaded", {})
    monkeypatch.setattr(registry.rewards, "_loaded", {})
    return site


GOOD = """
    [diffalign.modalities]
    plane = fakeplug:MODALITY
    [diffalign.rewards]
    first_coord = fakeplug:first_coord
    plugin_mean = fakeplug:MEAN
"""


def _cfg(tmp_path, **over):
    data = {"output_dir": str(tmp_path / "run"), "epochs": 1, "modality": {"name": "plane", "options": {"dim": 3}},
            "prompts": {"list": ["a", "b"]}, "reward": {"name": "first_coord", "kwargs": {"scale": 2.0}},
            "sampling": {"num_steps": 3, "batch_size": 4}, "train": {"batch_size": 4},
            "algorithm": {"name": "ddpo"}}
    data.update(over)
    return data


def test_pyproject_declares_the_builtin_tables():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomli = pytest.importorskip("tomli")
        tomllib = tomli
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        eps = tomllib.load(f)["project"]["entry-points"]
    assert eps[registry.MODALITY_GROUP] == registry.BUILTIN_MODALITIES
    assert eps[registry.REWARD_GROUP] == registry.BUILTIN_REWARDS


def test_builtins_resolve_without_installed_metadata(monkeypatch):
    import importlib.metadata
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    assert {"toy", "image"} <= set(registry.modalities)
    assert registry.modalities["toy"].options.__name__ == "ToyOptions"
    from diffalign.rewards import REWARD_TYPES, REWARDS
    assert "clip_score" in REWARD_TYPES and "jpeg_compressibility" not in REWARD_TYPES
    assert set(registry.BUILTIN_REWARDS) <= set(REWARDS)
    for name in registry.BUILTIN_REWARDS:  # every built-in target exists and is of the right kind
        assert registry.rewards[name] is not None


def test_plugin_modality_and_reward_reach_train(tmp_path, monkeypatch, capsys):
    install_plugin(tmp_path, monkeypatch, GOOD)
    assert "plane" in registry.modalities and "first_coord" in registry.rewards
    assert "fake_plugin" in registry.modalities.origin("plane")
    cfg = load_config(data=_cfg(tmp_path))
    with pytest.raises(ConfigError, match="modality.options.dim"):
        load_config(data=_cfg(tmp_path, modality={"name": "plane", "options": {"dim": 0}}))
    with pytest.raises(ConfigError, match="modality.options.depth"):
        load_config(data=_cfg(tmp_path, modality={"name": "plane", "options": {"depth": 2}}))
    with pytest.raises(ConfigError, match="reward.kwargs"):  # checked against the plugin reward's signature
        load_config(data=_cfg(tmp_path, reward={"name": "first_coord", "kwargs": {"scael": 2.0}}))
    load_config(data=_cfg(tmp_path, reward={"name": "plane_norm"}))  # the modality's own reward

    from diffalign.trainer.builders import build_adapter
    import torch
    adapter = build_adapter(cfg, ["a", "b"], torch.device("cpu"))
    assert type(adapter).__name__ == "ToyAdapter" and adapter.dim == 3

    # the real command: `diffalign train CONFIG` validates, builds and trains on the plugin's modality and reward
    path = tmp_path / "plane.yaml"
    path.write_text(json.dumps(_cfg(tmp_path)))
    from diffalign.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(path), "logging.tensorboard=false", "logging.progress_bar=false"])
    assert exit_.value.code in (0, None), capsys.readouterr().err
    assert sys.modules["fakeplug"].CALLS, "the plugin's reward was never called"
    assert os.path.isfile(tmp_path / "run" / "metrics.jsonl")


def test_plugin_reward_type_loads_by_name(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, GOOD)
    import torch
    from diffalign.rewards import REWARD_TYPES, load_reward, resolve_reward
    from diffalign.rewards.loading import is_model_reward
    assert is_model_reward("plugin_mean") and "plugin_mean" in REWARD_TYPES
    x = torch.ones(2, 3)
    assert torch.allclose(load_reward("plugin_mean", offset=1.0)(x, ["a", "b"]), torch.full((2,), 2.0))
    assert torch.allclose(resolve_reward("plugin_mean")(x, ["a", "b"], offset=0.5), torch.full((2,), 1.5))


def test_unknown_modality_lists_the_registered_ones(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, GOOD)
    with pytest.raises(ConfigError, match=r"'modality.name' must be one of \['editing', 'image', 'plane', 'planning', 'toy', 'toy_dual', 'toy_points', 'video'\], got 'planar'"):
        load_config(data=_cfg(tmp_path, modality={"name": "planar"}))


def test_broken_plugin_names_its_entry_point_and_package(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, """
        [diffalign.modalities]
        broken = fakeplug:MODALITY
        [diffalign.rewards]
        wrong_kind = fakeplug:NOT_AN_ENTRY
        missing = fakeplug:no_such_name
    """, module="import no_such_dependency_xyz\n", name="broken_plugin")
    with pytest.raises(ConfigError) as exc:
        load_config(data=_cfg(tmp_path, modality={"name": "broken"}))
    msg = str(exc.value)
    assert "modality.name" in msg and "broken = 'fakeplug:MODALITY'" in msg and "'broken_plugin'" in msg
    assert "no_such_dependency_xyz" in msg
    # a broken plugin does not break runs that do not use it
    load_config(data=_cfg(tmp_path, modality={"name": "toy"}, reward={"name": "toy_target_distance"}))
    with pytest.raises(registry.RegistryError, match="missing = 'fakeplug:no_such_name'.*'broken_plugin'"):
        registry.rewards["missing"]


def test_wrong_kind_and_duplicate_names_are_errors(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, """
        [diffalign.modalities]
        toy = fakeplug:MODALITY
        [diffalign.rewards]
        wrong_kind = fakeplug:NOT_AN_ENTRY
    """)
    with pytest.raises(registry.RegistryError, match="not a reward callable or a diffalign.registry.RewardType"):
        registry.rewards["wrong_kind"]
    with pytest.raises(registry.RegistryError, match="'toy' is declared more than once.*built-in.*fake_plugin"):
        registry.modalities["toy"]


def test_register_in_process():
    from diffalign.registry import ModalityEntry, RewardType
    entry = registry.modalities["toy"]
    registry.modalities.register("toy_copy", ModalityEntry(entry.options, entry.build, entry.rewards))
    try:
        assert "toy_copy" in registry.modalities
        with pytest.raises(registry.RegistryError, match="already registered"):
            registry.modalities.register("toy", entry)
        with pytest.raises(registry.RegistryError, match="not a diffalign.registry.ModalityEntry"):
            registry.modalities.register("bad", object())
        with pytest.raises(registry.RegistryError, match="not a reward callable"):
            registry.rewards.register("bad", 3)
        registry.rewards.register("bad_type", RewardType(lambda d, dev, dt: None))
        assert "bad_type" in registry.rewards
    finally:
        registry.rewards.unregister("bad_type")
        registry.modalities.unregister("toy_copy")
    assert "toy_copy" not in registry.modalities


def test_registry_and_config_do_not_import_modalities_eagerly():
    """Listing and checking a toy config loads the toy entry only: no image modality, no model rewards."""
    code = textwrap.dedent("""
        import sys
        import diffalign.registry as r
        assert sorted(r.modalities)[:2] and not any(m.startswith("diffalign.modalities") for m in sys.modules)
        from diffalign.config import load_config
        load_config(data={"output_dir": "x", "modality": {"name": "toy"}, "prompts": {"list": ["a"]}})
        loaded = [m for m in sys.modules if m.startswith(("diffalign.modalities.image", "diffalign.rewards.clip"))]
        assert not loaded, loaded
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
