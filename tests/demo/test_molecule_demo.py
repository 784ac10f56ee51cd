"""``diffalign demo molecule``: the --quick run end to end through the CLI, its outputs, the shipped model, the
demo's statistics against hand computations, the pairing of AI feedback, and the CLI's errors."""
import json
import math
import os

import pytest
import torch

from diffalign.cli import main
from diffalign.demo import molecule
from diffalign.demo.run import SEED_BASE


def _cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def _mol(smiles, seed=0):
    from rdkit import Chem
    from rdkit.Chem import AllChem
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=seed)
    return Chem.RemoveHs(m)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("molecule_demo"))
    assert _cli(["demo", "molecule", "--quick", "--output", out]) == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


def test_quick_molecule_demo_writes_the_image_demos_report_schema(quick_run):
    out, report = quick_run
    for name in ("report.json", "report.md", "grid.png", "histograms.png", "samples/prompts.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert report["modality"] == "molecule" and report["algo"] == molecule.DEFAULT_MOLECULE_ALGO and report["quick"]
    assert {"model", "flags", "torch_threads"} <= set(report["hardware"])
    assert {"before_eval", "after_stage", "after_eval", "total"} <= set(report["seconds"])
    keys = {"vina_min_mean", "vina_min_median", "better_than_base_median", "validity", "connectivity", "qed_mean",
            "sa_mean", "diversity", "posebusters_pass_rate", "vina_ok"}
    for stage in ("before", "after"):
        assert keys <= set(report[stage]), stage
        assert report[stage]["n"] == molecule.QUICK_SAMPLES
    assert report["info"]["feedback"]["pairs"] >= 1  # E2PO trained on AI-feedback pairs
    assert report["paired"]["vina_min"]["n"] <= molecule.QUICK_SAMPLES


def test_quick_run_samples_are_every_evaluated_molecule_with_their_scores(quick_run):
    out, report = quick_run
    from diffalign.modalities.molecule.sdf import read_sdf
    from diffalign.rewards.molecule_properties import qed
    with open(os.path.join(out, "samples", "prompts.json")) as f:
        index = json.load(f)
    for stage in ("before", "after"):
        names = sorted(k for k in index if k.startswith(stage + "/"))
        assert len(names) == molecule.QUICK_SAMPLES
        assert [index[n]["seed"] for n in names] == [SEED_BASE + i for i in range(molecule.QUICK_SAMPLES)]
        assert sum(index[n]["valid"] for n in names) == round(report[stage]["validity"] * len(names))
        for n in names:
            assert index[n]["pocket"] == "diffalign/assets/molecule_pocket/1s3v_pocket.pdb"
            path = os.path.join(out, "samples", n)
            assert os.path.isfile(path) == index[n]["valid"]
            if index[n]["valid"] and index[n]["qed"] is not None:  # the saved file scores what the report says
                assert float(qed([read_sdf(path)])[0]) == pytest.approx(index[n]["qed"], abs=1e-6)


def test_quick_run_report_md_names_the_headline(quick_run):
    out, report = quick_run
    text = open(os.path.join(out, "report.md")).read()
    assert "minimised Vina" in text and "--quick run" in text and "| vina_min_mean |" in text


def test_shipped_model_loads_and_records_how_it_was_trained():
    from diffalign.modalities.molecule.adapter import MoleculeAdapter
    folder = molecule.shipped_model()
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert size <= 10 * 2 ** 20
    info = json.load(open(os.path.join(folder, "train_info.json")))
    assert info["command"].startswith("python scripts/train_molecule_demo_model.py")
    assert {"seed", "seconds", "cpu", "torch_threads", "data", "steps"} <= set(info)
    assert info["data"]["source"].startswith("molsets")
    adapter = MoleculeAdapter(folder)
    assert adapter.max_atoms == info["args"]["max_atoms"] and adapter.sizes.max_atoms <= adapter.max_atoms


def test_a_sample_depends_on_its_seed_not_its_batch():
    """Before and after share each seed's atom count and noise: batch 1 and batch 3 give the same molecules."""
    items, seeds = molecule.molecule_eval_set(3)
    one = molecule.base_molecule_sampler(molecule.shipped_model(), {"num_steps": 2, "batch_size": 1})(items, seeds)
    three = molecule.base_molecule_sampler(molecule.shipped_model(), {"num_steps": 2, "batch_size": 3})(items, seeds)
    for a, b in zip(one, three):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.GetNumAtoms() == b.GetNumAtoms()
            assert torch.allclose(torch.tensor(a.GetConformer().GetPositions()),
                                  torch.tensor(b.GetConformer().GetPositions()), atol=1e-4)


def test_demo_pocket_is_the_bundled_1s3v_with_the_widened_box():
    meta = json.load(open(os.path.join(molecule.assets_dir("molecule_pocket"), "pocket.json")))
    item = molecule.demo_pocket()
    assert os.path.isfile(item["pocket"]) and item["pocket"].endswith("1s3v_pocket.pdb")
    assert item["center"] == meta["center"]
    assert item["box"] == pytest.approx([b + molecule.BOX_MARGIN for b in meta["box"]])
    items, seeds = molecule.molecule_eval_set(5)
    assert items == [item] * 5 and seeds == [SEED_BASE + i for i in range(5)]
    with pytest.raises(ValueError, match="samples must be >= 1"):
        molecule.molecule_eval_set(0)


def test_group_pairs_prefers_the_lower_energy_within_groups_above_the_threshold():
    energies = [-5.0, -7.0, None, -5.2, -9.0, -8.0]
    # groups of 3: (0, 1, 2) -> (1, 0) only (2 failed); (3, 4, 5) -> (4, 3), (5, 3), (4, 5) with gaps 3.8, 2.8, 1.0
    assert molecule.group_pairs(energies, 3, 0.5) == [(1, 0), (4, 3), (5, 3), (4, 5)]
    assert molecule.group_pairs(energies, 3, 1.5) == [(1, 0), (4, 3), (5, 3)]
    assert molecule.group_pairs(energies, 6, 3.5) == [(4, 0), (4, 3)]


def test_paired_energy_change_matches_a_hand_computation():
    before = [-5.0, -6.0, None, -4.0, -7.0]
    after = [-6.0, -6.5, -8.0, -3.0, -9.0]
    out = molecule.paired_energy_change(before, after)
    d = [-1.0, -0.5, 1.0, -2.0]  # seed 2 has no 'before' energy
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert out["n"] == 4 and out["delta"] == pytest.approx(mean)
    assert out["ci95"] == pytest.approx([mean - 1.959964 * sd / 2, mean + 1.959964 * sd / 2], rel=1e-5)
    assert (out["improved"], out["worsened"]) == (3, 1)
    # exact two-sided sign test: 2 P(X <= 1), X ~ Binomial(4, 1/2) = 2 * 5/16
    assert out["sign_test_p"] == pytest.approx(min(1.0, 2 * (1 + 4) / 16))
    assert molecule.paired_energy_change([None], [-1.0])["n"] == 0


def test_stage_metrics_vina_statistics_count_failures_as_not_better():
    mols = [_mol("c1ccccc1O"), _mol("CCO"), None, _mol("CC(=O)Nc1ccccc1")]
    items = [molecule.demo_pocket()] * 4
    energies = [-6.0, -3.0, None, -7.5]
    out = molecule.stage_metrics(mols, items, energies, base_median=-5.0, posebusters=False)
    assert out["vina_min_mean"] == pytest.approx((-6.0 - 3.0 - 7.5) / 3)
    assert out["vina_min_median"] == pytest.approx(-6.0)
    assert out["vina_ok"] == pytest.approx(0.75) and out["better_than_base_median"] == pytest.approx(0.5)
    assert out["validity"] == pytest.approx(0.75) and "posebusters_pass_rate" not in out


def test_cli_rejects_an_unknown_molecule_algorithm(capsys):
    assert _cli(["demo", "molecule", "--algo", "nope", "--output", "unused"]) == 2
    assert "unknown --algo 'nope' for molecule" in capsys.readouterr().err
    assert set(molecule.molecule_algos()) >= {"e2po", "dpo"}


def training_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "train_molecule", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "train_molecule_demo_model.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_training_script_runs_the_steps_it_is_asked_and_writes_a_loadable_model(tmp_path):
    """--steps N trains exactly N steps (what reproduces the shipped run) and the folder loads as a model."""
    from diffalign.modalities.molecule.adapter import MoleculeAdapter
    torch.set_num_threads(1)
    out = str(tmp_path / "model")
    assert training_script().main(["--steps", "3", "--molecules", "4", "--hidden", "8", "--layers", "1", "--batch", "2",
                                   "--ema", "0.5", "--output", out]) == 0
    info = json.load(open(os.path.join(out, "train_info.json")))
    assert info["steps"] == 3 and info["args"]["ema"] == 0.5 and len(info["loss_every_200_steps"]) == 1
    assert info["data"]["molecules"] == 4
    adapter = MoleculeAdapter(out)
    assert sum(p.numel() for p in adapter.denoiser.parameters()) > 0


def test_training_scripts_weight_average_is_the_exponential_moving_average():
    """scripts/train_molecule_demo_model.py --ema: after k updates from a = a0, with params p_i, the average is
    decay^k a0 + (1 - decay) sum_i decay^(k - i) p_i (closed form, float64)."""
    script = training_script()
    g = torch.Generator().manual_seed(0)
    a0 = [torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    average = [t.clone() for t in a0]
    steps = [[torch.randn_like(t) for t in a0] for _ in range(5)]
    decay = 0.9
    for params in steps:
        script.update_average(average, [torch.nn.Parameter(p) for p in params], decay)
    for j, a in enumerate(average):
        expected = decay ** 5 * a0[j] + (1 - decay) * sum(decay ** (4 - i) * steps[i][j] for i in range(5))
        assert torch.allclose(a, expected, atol=1e-12)
