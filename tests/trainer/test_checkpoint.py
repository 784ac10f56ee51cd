"""Checkpoints that fail safely: damaged files are named, latest falls back, state.pt cannot run code."""
import os
import re

import pytest
import torch

from diffalign.config import load_config
from diffalign.trainer import make_trainer
from diffalign.trainer.checkpoint import (CheckpointError, UnsafeCheckpointError, latest_checkpoint, load_checkpoint,
                                          resolve_resume, save_checkpoint)


def three_checkpoints(out):
    for epoch in range(3):
        save_checkpoint(out, epoch, {"w": torch.full((64,), float(epoch))}, {"epoch": epoch}, keep_last=3)
    return [os.path.join(out, "checkpoints", f"epoch_{e:06d}") for e in range(3)]


def truncate(path, keep=None):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2 if keep is None else keep)


@pytest.mark.parametrize("keep", [4, None])  # header length cut short / tensors cut short
def test_truncated_weights_name_the_folder_and_file(tmp_path, keep):
    paths = three_checkpoints(str(tmp_path))
    truncate(os.path.join(paths[2], "weights.safetensors"), keep)
    for call in (lambda: load_checkpoint(paths[2]), lambda: resolve_resume(str(tmp_path), paths[2])):
        with pytest.raises(CheckpointError, match=re.escape(paths[2]) + ".*weights.safetensors"):
            call()


def test_truncated_state_names_the_folder_and_file(tmp_path):
    paths = three_checkpoints(str(tmp_path))
    truncate(os.path.join(paths[2], "state.pt"))
    with pytest.raises(CheckpointError, match=re.escape(paths[2]) + ".*state.pt"):
        load_checkpoint(paths[2])


def test_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    out = str(tmp_path)
    paths = three_checkpoints(out)
    truncate(os.path.join(paths[2], "weights.safetensors"))
    os.remove(os.path.join(paths[1], "state.pt"))
    assert latest_checkpoint(out) == paths[2]  # by name; resolve_resume is what checks
    with pytest.warns(RuntimeWarning) as record:
        assert resolve_resume(out, "latest") == paths[0]
    messages = "\n".join(str(w.message) for w in record)
    assert f"skipping {paths[2]}" in messages and "weights.safetensors" in messages
    assert f"skipping {paths[1]}" in messages and "state.pt is missing" in messages
    assert f"resuming from {paths[0]}" in messages
    assert f"skipping {paths[2]}" in capsys.readouterr().err  # shown even where warnings are filtered
    truncate(os.path.join(paths[0], "state.pt"))
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="every checkpoint"):
        resolve_resume(out, "latest")


def _payload(marker):
    open(marker, "w").close()
    return {}


class Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling calls _payload(marker): arbitrary code
        return _payload, (self.marker,)


def test_pickled_code_in_state_is_refused(tmp_path):
    paths = three_checkpoints(str(tmp_path))
    marker = str(tmp_path / "code_ran")
    state = os.path.join(paths[2], "state.pt")
    torch.save({"epoch": 2, "algorithm": Malicious(marker)}, state)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(paths[2]) + ".*state.pt.*weights_only"):
        load_checkpoint(paths[2])
    assert not os.path.exists(marker)
    torch.load(state, weights_only=False)  # the payload is live: a plain torch.load runs it
    assert os.path.exists(marker)


def test_a_kill_mid_save_leaves_no_final_folder_half_written(tmp_path):
    out = str(tmp_path)
    paths = three_checkpoints(out)
    root = os.path.join(out, "checkpoints")
    # what a kill leaves: a half-written .tmp, and a folder renamed away before its removal
    os.makedirs(os.path.join(root, "epoch_000003.tmp"))
    os.replace(paths[0], paths[0] + ".old")
    assert resolve_resume(out, "latest") == paths[2]
    save_checkpoint(out, 2, {"w": torch.zeros(1)}, {"epoch": 2}, keep_last=1)  # replaces a folder; clears .old
    assert sorted(os.listdir(root)) == ["epoch_000002", "epoch_000003.tmp"]
    assert torch.equal(load_checkpoint(paths[2])[0]["w"], torch.zeros(1))


def test_trainer_resume_refuses_a_damaged_folder_and_latest_falls_back(tiny_config, capsys):
    out = tiny_config["output_dir"]
    make_trainer(load_config(data=tiny_config, overrides=["epochs=2"])).train()
    newest = latest_checkpoint(out)
    assert newest.endswith("epoch_000001")
    truncate(os.path.join(newest, "weights.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(newest) + ".*weights.safetensors"):
        make_trainer(load_config(data=tiny_config, overrides=[f"resume_from={newest}"]))
    with pytest.warns(RuntimeWarning, match="skipping .*epoch_000001"):
        trainer = make_trainer(load_config(data=tiny_config, overrides=["resume_from=latest"]))
    assert trainer.start_epoch == 1  # resumed after epoch 0, the newest intact checkpoint
    assert "epoch_000000, the newest intact checkpoint" in capsys.readouterr().err
