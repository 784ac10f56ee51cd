"""The two generic hooks the video modality's offline data needed, tested on the toy modality: a modality's own
preference layouts (``ModalityEntry.readers``, chosen by ``data.format``) and its own sample loading
(``ModalityAdapter.load_sample``, which the offline loop calls before ``encode``)."""
import pytest

from diffalign import registry
from diffalign.config import ConfigError, load_config
from diffalign.data import LoadReport, PreferenceDataset, PreferencePair
from diffalign.modalities.toy.options import ToyOptions

LOADED = []


def read_pipes(path, verify, max_records):
    """A layout only this test modality knows: ``prompt|x,y|x,y`` per line, the first point preferred."""
    report = LoadReport(path, "pipes")
    pairs = []
    with open(path) as f:
        for line in f:
            report.rows += 1
            prompt, chosen, rejected = line.strip().split("|")
            pairs.append(PreferencePair(prompt, chosen, rejected))  # samples stay text until load_sample
            report.kept += 1
    return PreferenceDataset(pairs, [], report)


def build(options, prompts, device):
    from diffalign.modalities.toy.adapter import ToyAdapter

    class PipesAdapter(ToyAdapter):
        def load_sample(self, ref):
            LOADED.append(ref)
            return [float(v) for v in ref.split(",")]

    return PipesAdapter(prompts, dim=options.dim, hidden=options.hidden, scheduler=options.scheduler,
                        init_seed=options.init_seed, device=device, pretrain_steps=options.pretrain_steps)


@pytest.fixture
def pipes_modality():
    registry.modalities.register("toy_pipes", registry.ModalityEntry(options=ToyOptions, build=build,
                                                                     readers=lambda: {"pipes": read_pipes}))
    yield "toy_pipes"
    registry.modalities.unregister("toy_pipes")


def test_a_modality_reads_and_loads_its_own_preference_layout(tmp_path, pipes_modality):
    path = tmp_path / "pairs.txt"
    path.write_text("a|1,1|-1,-1\nb|0.5,0|0,0.5\na|1,0|0,1\nb|0,0|2,2\n")
    cfg = {"output_dir": str(tmp_path / "run"), "seed": 0, "epochs": 1,
           "modality": {"name": pipes_modality, "options": {"dim": 2, "hidden": 16, "pretrain_steps": 5}},
           "prompts": {"list": ["a", "b"]}, "data": {"path": str(path), "format": "pipes"},
           "algorithm": {"name": "dpo", "beta": 50.0}, "train": {"batch_size": 2, "learning_rate": 0.01},
           "logging": {"tensorboard": False, "progress_bar": False}}
    from diffalign.trainer import make_trainer
    LOADED.clear()
    trainer = make_trainer(load_config(data=cfg))
    assert [p.chosen for p in trainer.items] == ["1,1", "0.5,0", "1,0", "0,0"]
    trainer.train()
    assert sorted(LOADED) == sorted(["1,1", "-1,-1", "0.5,0", "0,0.5", "1,0", "0,1", "0,0", "2,2"])  # once each
    with pytest.raises(ConfigError, match="data.format' must be one of"):  # another modality lacks the layout
        load_config(data=dict(cfg, modality={"name": "toy", "options": {"dim": 2}}))


def test_default_load_sample_is_the_data_layer_loader(tmp_path):
    import torch
    from diffalign.modalities.toy.adapter import ToyAdapter
    adapter = ToyAdapter(["a"], dim=2, hidden=8, pretrain_steps=0)
    assert torch.equal(adapter.load_sample([1.0, 2.0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="does not exist"):
        adapter.load_sample(str(tmp_path / "missing.png"))
