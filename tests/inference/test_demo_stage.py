"""The training-free after stage of ``diffalign demo`` on a random model of the shipped demo architecture."""
import pytest
import torch

from diffalign.demo import run
from diffalign.demo.inference_stage import demo_subjects, inference_stage


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    from diffalign.demo.model import build_demo_model, save_demo_model, task_vocabulary
    folder = str(tmp_path_factory.mktemp("demo_model"))
    save_demo_model(folder, *build_demo_model(task_vocabulary(), seed=1))
    return folder


def test_demo_subjects_are_the_caption_nouns():
    assert demo_subjects("a red circle left of a blue square") == ["circle", "square"]
    assert demo_subjects("three green triangles") == ["triangles"]


def test_inference_stage_samples_the_base_model_and_counts_evaluations(demo_folder):
    from diffalign.rewards.compositional import compositional_reward
    ctx = run.DemoContext(model=demo_folder, reward=compositional_reward, train_prompts=[], output="unused",
                          minutes=1.0, quick=True)
    prompts = ["a red circle left of a blue square", "two green triangles"]
    seeds = [run.SEED_BASE, run.SEED_BASE + 1]
    plain = inference_stage("plain")(ctx)
    base = run.base_sampler(demo_folder, {"num_steps": run.QUICK["overrides"]["sampling.num_steps"], "batch_size": 8})
    assert torch.allclose(plain.sampler(prompts, seeds), base(prompts, seeds), atol=1e-6)  # same as "before"
    best = inference_stage("best_of_n", 3)(ctx)
    images = best.sampler(prompts, seeds)
    assert images.shape == (2, 3, 32, 32)
    steps = run.QUICK["overrides"]["sampling.num_steps"]
    assert best.info["plain_model_evaluations"] == steps * 2 * 2
    assert best.info["model_evaluations"] == 3 * best.info["plain_model_evaluations"]
    assert (compositional_reward(images, prompts) >= compositional_reward(base(prompts, seeds), prompts)).all()
    with pytest.raises(ValueError, match="unknown method"):
        inference_stage("dpo")
    with pytest.raises(ValueError, match="budget"):
        inference_stage("noise_opt", 0)


def _demo(argv):
    from diffalign.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["demo"] + argv)
    return exc.value.code


def test_demo_cli_with_a_method_reports_its_model_evaluations(tmp_path, capsys):
    import json
    out = tmp_path / "demo"
    assert _demo(["--quick", "--method", "best_of_n", "--budget", "2", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["method"], report["budget"]) == ("best_of_n", 2) and "algo" not in report
    samples = report["eval"]["samples"]
    steps = report["eval"]["sampling"]["num_steps"]
    assert report["plain_model_evaluations"] == samples * steps * 2
    assert report["model_evaluations"] == 2 * report["plain_model_evaluations"]
    assert report["after"]["reward"] >= report["before"]["reward"]  # best-of-2 ranked by this very reward
    assert (out / "samples" / "after").is_dir() and (out / "report.md").is_file()
    assert "model evaluations" in capsys.readouterr().out
    assert _demo(["--budget", "3"]) == 2
    assert "--method" in capsys.readouterr().err
    assert _demo(["--method", "noise_opt", "--budget", "0"]) == 2
    assert _demo(["--method", "best_of_n", "epochs=3"]) == 2
