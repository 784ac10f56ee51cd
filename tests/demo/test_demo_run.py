"""``diffalign demo`` end to end (--quick), its outputs, the pluggable after stage, the CLI's errors."""
import dataclasses
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.cli import main
from diffalign.demo import run as demo_run
from diffalign.demo import shapes
from diffalign.rewards.compositional import compositional_report, compositional_reward
from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint
from diffalign.trainer.logging import read_metrics

ONLINE, OFFLINE = ("ddpo", "grpo", "dpok", "rwr"), ("dpo", "kto", "ipo", "orpo", "simpo", "e2po")


def _cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def _load_stage(out, stage, index):
    names = sorted(n for n in index if n.startswith(stage + "/"))
    images = np.stack([np.asarray(Image.open(os.path.join(out, "samples", n)).convert("RGB")) for n in names])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, [index[n]["prompt"] for n in names]


def _check_outputs(out, report):
    for name in ("report.json", "report.md", "grid.png", "reward_curve.png", "samples/prompts.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    for key in ("before", "after", "seconds", "curve", "eval"):
        assert key in report, key
    with open(os.path.join(out, "samples", "prompts.json")) as f:
        index = json.load(f)
    n = report["eval"]["samples"]
    assert len(index) == 2 * n
    for stage in ("before", "after"):
        images, prompts = _load_stage(out, stage, index)
        assert images.shape == (n, 3, 32, 32)
        # the report is measured on exactly these files: re-scoring them reproduces it
        rescored_report = compositional_report(images, prompts)
        rescored = dict(rescored_report["accuracies"], accuracy_by_caption=demo_run.by_caption_accuracy(rescored_report))
        for k, v in report[stage].items():
            assert rescored[k] == pytest.approx(v, abs=1e-9), (stage, k)
        assert 0.0 <= report[stage]["accuracy"] <= 1.0
    # the paired statistics are those of the saved per-sample verdicts
    verdicts = {stage: [index[f"{stage}/{i:04d}.png"]["correct"] for i in range(n)] for stage in ("before", "after")}
    paired = report["paired"]["all"]
    assert paired["fixed"] == sum(1 for b, a in zip(verdicts["before"], verdicts["after"]) if a and not b)
    assert paired["broken"] == sum(1 for b, a in zip(verdicts["before"], verdicts["after"]) if b and not a)
    assert paired["delta"] == pytest.approx(report["after"]["accuracy"] - report["before"]["accuracy"], abs=1e-12)
    assert paired["ci95"][0] <= paired["delta"] <= paired["ci95"][1] and 0 <= paired["mcnemar_p"] <= 1
    assert set(report["paired"]) == {"all", *shapes.KINDS}
    seeds = [index[f"before/{i:04d}.png"]["seed"] for i in range(n)]
    assert seeds == [index[f"after/{i:04d}.png"]["seed"] for i in range(n)] and len(set(seeds)) == n
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert f"{100 * report['before']['accuracy']:.1f}%" in md and "grid.png" in md


def test_quick_demo_cli_end_to_end(tmp_path):
    out = str(tmp_path / "demo")
    assert _cli(["demo", "--quick", "--output", out]) == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["algo"] == demo_run.DEFAULT_ALGO and report["quick"] is True
    _check_outputs(out, report)
    assert len(report["curve"]) == demo_run.QUICK["overrides"]["epochs"]
    assert all(0.0 <= c["reward"] <= 1.0 for c in report["curve"])
    assert report["seconds"]["after_stage"] > 0
    final = os.listdir(os.path.join(out, "train", "final"))  # LoRA (diffusers format) or the full UNet
    assert any(name.endswith(".safetensors") for name in final), final
    # the demo trains through the trainer: its metrics, tensorboard logs and the last epoch's checkpoint
    lines = read_metrics(os.path.join(out, "train", "metrics.jsonl"))
    assert [line["epoch"] for line in lines] == [c["epoch"] for c in report["curve"]]
    assert [line["reward_mean"] for line in lines] == [c["reward"] for c in report["curve"]]
    assert lines[0]["hardware"] == report["hardware"] and lines[0]["precision"] == report["precision"]["chosen"]
    assert os.listdir(os.path.join(out, "train", "tensorboard"))
    assert load_checkpoint(latest_checkpoint(os.path.join(out, "train")))[1]["epoch"] == len(lines) - 1
    # the tests fix "auto" to float32 (tests/conftest.py); the report says so
    assert report["precision"]["requested"] == "auto" and report["precision"]["chosen"] == "no"
    assert "DIFFALIGN_AUTO_PRECISION" in report["precision"]["reason"]
    assert report["hardware"]["model"] and isinstance(report["hardware"]["flags"], list)


def test_demo_budget_is_held_by_the_trainer(tmp_path):
    out = str(tmp_path / "demo")
    # far less than one epoch: the trainer stops after one rollout batch and one optimiser step
    report = demo_run.run_demo(out, demo_run.train_stage("rwr", {"epochs": 50}), {"algo": "rwr"}, quick=True,
                               minutes=1e-6)
    assert report["info"]["stopped_by_budget"] is True and report["info"]["epochs"] == 1
    assert report["curve"][0]["stopped_by_budget"] == 1
    _check_outputs(out, report)


def test_quick_demo_offline_algorithm_uses_ai_feedback(tmp_path):
    out = str(tmp_path / "demo")
    # demo.train_kinds: the feedback prompts come from the single and count captions only
    stage = demo_run.train_stage("kto", {"demo.train_kinds": "single,count"})
    report = demo_run.run_demo(out, stage, {"algo": "kto"}, quick=True)
    _check_outputs(out, report)
    assert report["info"]["feedback"]["kept"] > 0
    sizes = [sum(shapes.caption_kind(c) == k for c in shapes.all_captions("train")) for k in ("single", "count")]
    assert report["info"]["train_prompts"] == 2 * math.lcm(*sizes)
    assert report["info"]["demo_options"] == {"train_kinds": "single,count"}
    with open(os.path.join(out, "feedback", "pairs.jsonl")) as f:
        pairs = [json.loads(line) for line in f]
    assert all(p["chosen_reward"] >= p["rejected_reward"] for p in pairs)
    assert {shapes.caption_kind(p["prompt"]) for p in pairs} <= {"single", "count"}
    # demo.feedback: another offline loss (E2PO reads the stored rewards) trains on the very same pairs
    again = str(tmp_path / "again")
    stage = demo_run.train_stage("e2po", {"demo.feedback": os.path.join(out, "feedback")})
    report = demo_run.run_demo(again, stage, {"algo": "e2po"}, quick=True)
    assert report["info"]["feedback"] == {"path": os.path.join(out, "feedback", "pairs.jsonl"), "reused": True}
    assert not os.path.exists(os.path.join(again, "feedback"))
    with open(os.path.join(again, "train", "data_report.json")) as f:
        assert json.load(f)["source"] == os.path.join(out, "feedback", "pairs.jsonl")
    with pytest.raises(ValueError, match="demo.feedback"):
        demo_run.train_stage("ipo", {"demo.feedback": str(tmp_path / "nowhere")})(
            demo_run.DemoContext("demo", None, ["a red circle"], str(tmp_path / "x"), 0.1, quick=True))


def test_quick_demo_direct_reward_algorithm_backpropagates_the_relaxed_reward(tmp_path):
    out = str(tmp_path / "demo")
    report = demo_run.run_demo(out, demo_run.train_stage("draft"), {"algo": "draft"}, quick=True)
    _check_outputs(out, report)
    assert len(report["curve"]) == demo_run.QUICK["overrides"]["epochs"]
    for row in report["curve"]:  # the relaxed reward of its training batches and of its fixed evaluation batch
        assert 0.0 <= row["reward"] <= 1.0 and 0.0 <= row["eval_reward"] <= 1.0 and row["grad_norm"] > 0


def test_after_stage_is_pluggable_and_evaluation_deterministic(tmp_path):
    calls = []

    def identity(ctx):
        calls.append(ctx)
        return demo_run.AfterResult(demo_run.base_sampler(ctx.model, {"num_steps": 4}),
                                    [{"seconds": 0.0, "reward": 0.5}], {"model_evaluations": 0})
    out = str(tmp_path / "same")
    report = demo_run.run_demo(out, identity, {"method": "identity", "budget": 0}, quick=True)
    assert report["method"] == "identity" and report["info"] == {"model_evaluations": 0}
    assert calls[0].reward is compositional_reward
    # training prompts: the training split only, each caption kind a third (as the evaluation weighs them)
    kinds = Counter(shapes.caption_kind(c) for c in calls[0].train_prompts)
    assert set(calls[0].train_prompts) == set(shapes.all_captions("train"))
    assert len(set(kinds.values())) == 1 and set(kinds) == set(shapes.KINDS)
    assert report["after"] == report["before"]  # the same model and seeds give the same images
    _check_outputs(out, report)


def test_every_demo_config_loads_and_samples_like_the_evaluation():
    algos = demo_run.available_algos()
    assert set(ONLINE + OFFLINE) <= set(algos) and demo_run.DEFAULT_ALGO in algos
    for algo in algos:
        cfg = demo_run.load_demo_config(algo, "/tmp/unused", ["a red circle"])
        s = cfg.sampling
        assert (s.num_steps, s.eta, s.guidance_scale) == tuple(demo_run.EVAL_DEFAULTS[k] for k in
                                                               ("num_steps", "eta", "guidance_scale")), algo
        assert cfg.modality.options["model"] == "demo"


def test_cli_rejects_unknown_algo_listing_choices(tmp_path, capsys):
    assert _cli(["demo", "--algo", "nope", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and all(a in err for a in ONLINE + OFFLINE)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("argv,needle", [(["--minutes", "0"], "--minutes"),
                                         (["--samples-per-kind", "0"], "--samples-per-kind"),
                                         (["--model", "/nonexistent/x"], "/nonexistent/x")])
def test_cli_rejects_bad_values(argv, needle, tmp_path, capsys):
    assert _cli(["demo", "--output", str(tmp_path)] + argv) == 2
    assert needle in capsys.readouterr().err


def test_unknown_algo_in_api_names_choices():
    with pytest.raises(ValueError, match="ddpo"):
        demo_run.train_stage("nope")


def test_eval_set_weighs_caption_kinds_equally():
    prompts, seeds = demo_run.eval_set(5)
    assert [shapes.caption_kind(p) for p in prompts] == ["single"] * 5 + ["count"] * 5 + ["relation"] * 5
    assert all(shapes.split_of(p) == "heldout" for p in prompts)
    assert seeds == [demo_run.SEED_BASE + i for i in range(15)]


def test_by_caption_accuracy_averages_each_caption_first():
    # caption A: 1 of 3 images right; caption B: its one image right -> (1/3 + 1) / 2, not 2/4
    def result(caption, ok):
        return {"caption": caption, "correct": ok}
    report = {"results": [result("A", True), result("A", False), result("A", False), result("B", True)]}
    assert demo_run.by_caption_accuracy(report) == pytest.approx((1 / 3 + 1) / 2)


def test_training_prompts_weigh_kinds_and_captions_equally():
    from collections import Counter as C
    out = demo_run.training_prompts(["single", "count"])
    per_caption = C(out)
    kinds = C(shapes.caption_kind(c) for c in out)
    sizes = {k: sum(shapes.caption_kind(c) == k for c in shapes.all_captions("train")) for k in ("single", "count")}
    assert kinds == {"single": 16, "count": 16} and sizes == {"single": 4, "count": 16}  # lcm(4, 16) of each
    assert set(per_caption) == {c for c in shapes.all_captions("train") if shapes.caption_kind(c) != "relation"}
    assert all(n == 16 // sizes[shapes.caption_kind(c)] for c, n in per_caption.items())
    assert demo_run.training_prompts() == demo_run.training_prompts(list(shapes.KINDS)) == \
        shapes.balanced_prompts("train", None)


def test_demo_options_from_the_config_and_overrides(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    shipped = open(demo_run.demo_config_path("rwr")).read()
    (cfg_dir / "demo_rwr.yaml").write_text(shipped)
    without = "\n".join(line for line in shipped.splitlines() if not line.startswith("demo:"))
    (cfg_dir / "demo_bad.yaml").write_text(without + "\ndemo: {colours: 3}\n")
    monkeypatch.setattr(demo_run, "CONFIG_DIR", str(cfg_dir))
    extra = {"seed": 1, "demo.train_kinds": "single,relation"}
    opts = demo_run.demo_options("rwr", extra)
    assert opts["train_kinds"] == "single,relation" and extra == {"seed": 1}  # the override replaced the file's
    assert demo_run._kinds(opts["train_kinds"]) == ["single", "relation"]
    with pytest.raises(ValueError, match="demo.train_kinds must be distinct caption kinds"):
        demo_run._kinds("single,colour")
    with pytest.raises(ValueError, match=r"unknown override 'demo.colours'"):
        demo_run.demo_options("rwr", {"demo.colours": 3})
    with pytest.raises(ValueError, match=r"demo_bad.yaml: unknown key\(s\) \['colours'\] in its demo: section"):
        demo_run.demo_options("bad", {})
    # the trainer never sees the section
    assert demo_run.load_demo_config("rwr", str(tmp_path / "out"), ["a red circle"]).prompts.list == ["a red circle"]


def test_eval_sampling_option_overlays_the_configs_sampling():
    cfg = demo_run.load_demo_config("rwr", "/tmp/unused", ["a red circle"])
    assert demo_run.evaluation_sampling(cfg, {}) == cfg.sampling
    s = demo_run.evaluation_sampling(cfg, {"eval_sampling": {"num_steps": 7, "eta": 0.0}})
    assert (s.num_steps, s.eta, s.guidance_scale) == (7, 0.0, cfg.sampling.guidance_scale)
    assert cfg.sampling.num_steps != 7  # the config itself (the rollouts' settings) is untouched
    q = demo_run.evaluation_sampling(cfg, {"eval_sampling": {"num_steps": 7, "eta": 0.0}}, quick=True)
    assert q.num_steps == cfg.sampling.num_steps and q.eta == 0.0  # --quick keeps its own step count
    with pytest.raises(ValueError, match=r"eval_sampling: unknown sampling setting\(s\) \['steps'\]"):
        demo_run.evaluation_sampling(cfg, {"eval_sampling": {"steps": 7}})
    with pytest.raises(ValueError, match="must be a mapping"):
        demo_run.evaluation_sampling(cfg, {"eval_sampling": 7})


def test_evaluation_config_takes_demo_options_out_and_applies_the_rest(tmp_path):
    """One place sets up a demo's evaluation: demo.* overrides are options (not trainer keys), the others and
    --quick's reach the config, and the sampling is evaluation_sampling of both."""
    over = {"demo.eval_sampling": {"num_steps": 7}, "train.learning_rate": 0.123}
    cfg, s = demo_run.evaluation_config("rwr", str(tmp_path), ["a red circle"], over)
    assert over == {"demo.eval_sampling": {"num_steps": 7}, "train.learning_rate": 0.123}  # the caller's dict kept
    assert cfg.train.learning_rate == 0.123 and cfg.output_dir == os.path.join(str(tmp_path), "train")
    assert cfg.prompts.list == ["a red circle"]
    assert s == dataclasses.replace(cfg.sampling, num_steps=7)
    qcfg, q = demo_run.evaluation_config("rwr", str(tmp_path), ["a red circle"], over, quick=True)
    for key, value in demo_run.QUICK["overrides"].items():
        section, name = key.split(".") if "." in key else (None, key)
        assert getattr(getattr(qcfg, section) if section else qcfg, name) == value, key
    assert q.num_steps == qcfg.sampling.num_steps  # --quick keeps its own step count
    with pytest.raises(ValueError, match=r"unknown override 'demo.colours'"):
        demo_run.evaluation_config("rwr", str(tmp_path), ["a red circle"], {"demo.colours": 3})


def test_aligned_weights_are_evaluated_with_the_eval_sampling_not_the_rollouts(tmp_path):
    """demo.eval_sampling: the stage's sampler is the trained weights under the evaluation's settings, image for
    image what those weights (reloaded from final/) give under them."""
    from diffalign.eval.samples import load_checkpoint_into
    from diffalign.trainer.builders import build_adapter, build_policy
    torch.set_num_threads(1)
    prompts = ["a red circle", "two blue squares"]
    ctx = demo_run.DemoContext(model="demo", reward=None, train_prompts=prompts, output=str(tmp_path), minutes=1e-6,
                               quick=True, seed=0)
    evaluation = {"guidance_scale": 1.5, "eta": 0.0}
    result = demo_run.train_stage("rwr", {"demo.eval_sampling": evaluation})(ctx)
    cfg = demo_run.load_demo_config("rwr", str(tmp_path / "train"), prompts, "demo", dict(demo_run.QUICK["overrides"]))
    assert result.info["rollout_sampling"]["guidance_scale"] == cfg.sampling.guidance_scale != 1.5
    assert {k: result.info["eval_sampling"][k] for k in evaluation} == evaluation
    adapter = build_adapter(cfg, prompts, torch.device("cpu"))
    load_checkpoint_into(adapter, result.info["final"])
    s = demo_run.evaluation_sampling(cfg, {"eval_sampling": evaluation}, quick=True)
    expected = demo_run.policy_sampler(build_policy(dataclasses.replace(cfg, sampling=s), adapter), 8)(prompts, [3, 4])
    assert torch.allclose(result.sampler(prompts, [3, 4]), expected, atol=1e-6)
    rollout_like = demo_run.policy_sampler(build_policy(cfg, adapter), 8)(prompts, [3, 4])
    assert (rollout_like - expected).abs().max() > 1e-3  # the settings changed what is sampled


def test_measure_alignment_evaluates_base_then_trained_sampler_in_the_precision():
    calls = []

    def base(prompts, seeds):
        calls.append(("base", torch.is_autocast_cpu_enabled()))
        return torch.zeros(1)

    def trained(prompts, seeds):
        calls.append(("trained", torch.is_autocast_cpu_enabled()))
        return torch.ones(1)

    def stage(ctx):
        calls.append(("stage", ctx))
        return demo_run.AfterResult(sampler=trained, info={"epochs": 1})

    def evaluate(sampler):
        return float(sampler(["a"], [0]).item())

    before, result, after, seconds = demo_run.measure_alignment(evaluate, base, stage, "ctx", "bf16")
    assert (before, after, result.info) == (0.0, 1.0, {"epochs": 1})
    assert calls == [("base", True), ("stage", "ctx"), ("trained", True)]
    assert set(seconds) == {"before_eval", "after_stage", "after_eval"} and min(seconds.values()) >= 0
    demo_run.measure_alignment(evaluate, base, stage, "ctx", "fp32")
    assert calls[-3:] == [("base", False), ("stage", "ctx"), ("trained", False)]
