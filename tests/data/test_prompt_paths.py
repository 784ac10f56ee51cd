"""Paths in prompt items resolve against the file that holds the item (a config's prompts.list: the config's
folder; a prompts file: its folder) or name a file shipped in a package, so configs work from any directory."""
import json
import os

import pytest

from diffalign.config import ConfigError, config_prompts, item_path_keys, load_config, resolve_config_path
from diffalign.rewards.prompts import load_prompts, resolve_item_path, resolve_item_paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED = os.path.join(REPO, "modalities", "molecule", "pockets", "1uou_pocket10.pdb")


def same_file(a, b):
    return os.path.samefile(a, b)


def test_resolve_item_path_rules(tmp_path):
    assert resolve_item_path("p/a.pdb", str(tmp_path), "here") == str(tmp_path / "p" / "a.pdb")
    assert resolve_item_path("/abs/a.pdb", str(tmp_path), "here") == "/abs/a.pdb"
    assert resolve_item_path("p/a.pdb", None, "here") == "p/a.pdb"  # no folder: the working directory's
    shipped = resolve_item_path("package:diffalign.modalities.molecule/pockets/1uou_pocket10.pdb", None, "here")
    assert same_file(shipped, BUNDLED)
    with pytest.raises(ValueError, match="here: 'package:nope_pkg_x/a.pdb' names no importable package"):
        resolve_item_path("package:nope_pkg_x/a.pdb", None, "here")
    with pytest.raises(ValueError, match="MODULE/PATH"):
        resolve_item_path("package:diffalign", None, "here")


def test_only_the_modalitys_path_keys_with_string_values_are_resolved(tmp_path):
    item = {"text": "keep/me.txt", "pocket": "a.pdb", "image": [0.1, 0.2]}
    out = resolve_item_paths(item, ("pocket", "image"), str(tmp_path), "here")
    assert out == {"text": "keep/me.txt", "pocket": str(tmp_path / "a.pdb"), "image": [0.1, 0.2]}
    assert resolve_item_paths("a text", ("pocket",), str(tmp_path), "here") == "a text"
    assert item_path_keys("molecule") == ("pocket",) and item_path_keys("toy") == () and item_path_keys(3) == ()


def test_a_prompts_files_items_resolve_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "items.jsonl").write_text(json.dumps({"pocket": "pockets/x.pdb"}) + "\n" + json.dumps("text") + "\n")
    monkeypatch.chdir(tmp_path)
    items = load_prompts(file="prompts/items.jsonl", path_keys=("pocket",))
    assert items == [{"pocket": str(folder / "pockets" / "x.pdb")}, "text"]
    assert load_prompts(file="prompts/items.jsonl") == [{"pocket": "pockets/x.pdb"}, "text"]  # no keys: as written


def config_with_relative_pocket(folder):
    os.makedirs(folder / "pockets", exist_ok=True)
    with open(BUNDLED) as src, open(folder / "pockets" / "mine.pdb", "w") as dst:
        dst.write(src.read())
    path = folder / "mine.yaml"
    path.write_text("output_dir: run\nmodality: {name: molecule, options: {model: tiny, pretrain_steps: 0}}\n"
                    "prompts: {list: [{pocket: pockets/mine.pdb, center: [-3.483, 2.004, 29.185]}]}\n"
                    "sampling: {num_steps: 2, batch_size: 4}\ntrain: {batch_size: 4}\nreward: {name: pocket_contact}\n"
                    "algorithm: {name: ddpo}\nlogging: {tensorboard: false, progress_bar: false}\n")
    return str(path)


def test_a_configs_relative_pocket_resolves_against_the_configs_folder_from_another_cwd(tmp_path, monkeypatch):
    path = config_with_relative_pocket(tmp_path / "cfgs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path, [f"output_dir={tmp_path / 'run'}"])
    (item,) = config_prompts(cfg)
    assert item["pocket"] == str(tmp_path / "cfgs" / "pockets" / "mine.pdb")
    # an override on the command line is relative to the working directory, as the user typed it
    cfg = load_config(path, [f"output_dir={tmp_path / 'run'}", 'prompts.list=[{pocket: here.pdb}]'])
    assert config_prompts(cfg) == [{"pocket": "here.pdb"}]


def test_a_bad_package_path_in_a_config_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: run\nmodality: {name: molecule}\nprompts: {list: [{pocket: 'package:nope_pkg_x/a'}]}\n"
                    "algorithm: {name: ddpo}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*prompts.list\\[0\\].*nope_pkg_x"):
        load_config(str(path))


@pytest.mark.parametrize("name", ["molecule_ddpo_tiny", "molecule_grpo_tiny", "molecule_dpo_tiny", "molecule_e2po_tiny"])
def test_shipped_molecule_configs_find_their_pocket_from_any_directory(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    overrides = [f"output_dir={tmp_path / 'run'}"]
    if "po_tiny" in name and "grpo" not in name:  # the offline configs check their data file exists
        (tmp_path / "pairs.jsonl").write_text("")
        overrides.append(f"data.path={tmp_path / 'pairs.jsonl'}")
    cfg = load_config(resolve_config_path(name), overrides)
    (item,) = config_prompts(cfg)
    assert same_file(item["pocket"], BUNDLED)


def test_feedback_cli_runs_the_shipped_molecule_config_from_another_directory(tmp_path, monkeypatch, capsys):
    from diffalign.cli import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["feedback", "molecule_ddpo_tiny", "fb", "modality.options.pretrain_steps=0", "sampling.num_steps=2",
              "sampling.batch_size=4", "train.batch_size=4", "output_dir=unused", "--samples-per-prompt", "4"])
    assert exc.value.code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in open(tmp_path / "fb" / "pairs.jsonl")]
    assert rows and all(same_file(r["prompt"]["pocket"], BUNDLED) for r in rows)  # stored pairs name the file itself
