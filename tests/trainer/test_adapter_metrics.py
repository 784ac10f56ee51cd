"""The adapter's own per-epoch numbers (``ModalityAdapter.metrics``) in the trainer's log: metrics.jsonl and
tensorboard, counted afresh each epoch; the molecule adapter reports its decode validity through it."""
import copy
import glob
import json
import os

import pytest
import torch

from diffalign.config import load_config, resolve_config_path
from diffalign.trainer import make_trainer
from diffalign.trainer.logging import read_metrics
from tests.trainer.conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POCKET = {"pocket": os.path.join(REPO, "modalities", "molecule", "pockets", "1uou_pocket10.pdb"),
          "center": [-3.483, 2.004, 29.185]}


def toy_trainer(tmp_path, tensorboard=False):
    cfg = copy.deepcopy(TINY)
    cfg.update(output_dir=str(tmp_path / "run"), epochs=2)
    cfg["modality"]["options"]["pretrain_steps"] = 0
    cfg["logging"]["tensorboard"] = tensorboard
    return make_trainer(load_config(data=cfg))


def count_decodes(adapter):
    """Give the toy adapter a metrics hook counting the samples it decoded since the hook's last call."""
    seen = {"n": 0}
    decode = adapter.decode

    def counting(x0, cond):
        seen["n"] += x0.shape[0]
        return decode(x0, cond)

    def metrics():
        n, seen["n"] = seen["n"], 0
        return {"toy/decoded": n}

    adapter.decode, adapter.metrics = counting, metrics


def test_the_default_hook_reports_nothing(tmp_path):
    trainer = toy_trainer(tmp_path)
    assert trainer.adapter.metrics() == {} and trainer.adapter_metrics() == {}


def test_adapter_metrics_are_logged_per_epoch_to_jsonl_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = toy_trainer(tmp_path, tensorboard=True)
    count_decodes(trainer.adapter)
    cond = trainer.adapter.encode_conditions(["a"] * 5)
    trainer.adapter.decode(torch.zeros(5, 2), cond)  # before training: not any epoch's count
    history = trainer.train()
    per_epoch = TINY["sampling"]["batch_size"]  # one rollout batch decoded per epoch
    assert [h["toy/decoded"] for h in history] == [per_epoch, per_epoch]
    lines = read_metrics(os.path.join(tmp_path, "run", "metrics.jsonl"))
    assert [line["toy/decoded"] for line in lines] == [per_epoch, per_epoch]
    (events,) = glob.glob(os.path.join(tmp_path, "run", "tensorboard", "events.*"))
    acc = EventAccumulator(events)
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("toy/decoded")] == [(0, per_epoch), (1, per_epoch)]


def test_bad_or_colliding_adapter_metrics_are_named(tmp_path):
    trainer = toy_trainer(tmp_path)
    trainer.adapter.metrics = lambda: {"loss": 1.0}
    with pytest.raises(ValueError, match="'loss' collides"):
        trainer.train()
    trainer.adapter.metrics = lambda: {"toy/x": "many"}
    with pytest.raises(ValueError, match="toy/x"):
        trainer.adapter_metrics()


def test_molecule_decode_validity_since_the_last_call():
    from diffalign.modalities.molecule.adapter import MoleculeAdapter
    adapter = MoleculeAdapter(max_atoms=8, min_atoms=4)
    gens = [torch.Generator().manual_seed(i) for i in range(12)]
    cond = adapter.encode_conditions([POCKET] * 12, gens)
    x0 = adapter.initial_noise(cond, torch.Generator().manual_seed(0)) * 1.5  # random atoms: some decode, some not
    mols = adapter.decode(x0, cond)
    m = adapter.metrics()
    assert m["decode/samples"] == 12 and 0 < m["decode/validity"] < 1
    assert m["decode/validity"] == pytest.approx(sum(mol is not None for mol in mols) / 12)
    invalid = {k: v for k, v in m.items() if k.startswith("decode/invalid_")}
    assert sum(invalid.values()) == pytest.approx(1 - m["decode/validity"])
    assert adapter.metrics() == {}  # nothing decoded since
    adapter.decode(x0[:3], {k: v[:3] for k, v in cond.items()})
    assert adapter.metrics()["decode/samples"] == 3
    assert adapter.decode_stats["samples"] == 15  # the running totals stay


def test_molecule_training_logs_the_validity_of_each_epochs_rollouts(tmp_path):
    cfg = load_config(resolve_config_path("molecule_ddpo_tiny"), overrides=["modality.options.pretrain_steps=0", "sampling.num_steps=2", "sampling.batch_size=8",
                   "train.batch_size=8", "epochs=2", f"output_dir={tmp_path}", "prompts.list=" + json.dumps([POCKET])])
    trainer = make_trainer(cfg)
    seen = []
    inner = trainer.reward_fn
    trainer.reward_fn = lambda mols, items: seen.append([m is not None for m in mols]) or inner(mols, items)
    history = trainer.train()
    assert [h["decode/samples"] for h in history] == [8, 8]
    assert [h["decode/validity"] for h in history] == [pytest.approx(sum(s) / 8) for s in seen]
    lines = read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
    assert [line["decode/validity"] for line in lines] == [h["decode/validity"] for h in history]


def test_an_adapter_without_the_hook_still_trains(tmp_path):
    """A plugin adapter written against the contract before ``metrics`` existed (not deriving ModalityAdapter's
    default) trains and logs no adapter metric."""
    trainer = toy_trainer(tmp_path)
    trainer.adapter.metrics = None  # the instance attribute hides the default method, as if it did not exist
    history = trainer.train()
    assert len(history) == 2 and not any("/" in k for k in history[0])
