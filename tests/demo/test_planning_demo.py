"""``diffalign demo planning``: request schedules (run-time switching), the metrics' inputs, the executed-match reward,
the AlignDiff pipeline that makes the shipped model, the --quick run end to end and the CLI's errors."""
import json
import math
import os

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from diffalign.cli import main  # noqa: E402
from diffalign.demo import planning  # noqa: E402
from diffalign.demo import planning_model  # noqa: E402
from diffalign.demo.run import available_algos  # noqa: E402
from diffalign.modalities.planning import Episode, env_spec  # noqa: E402
from diffalign.rewards.attribute_strength import build_attribute_strength_model, calibrate  # noqa: E402

SPEC = env_spec("Hopper-v5")
D = SPEC.state_dim + SPEC.action_dim


def _cli(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


# ---- schedules -----------------------------------------------------------------------------------------
def test_request_at_picks_the_request_in_force():
    schedule = [(0, {"speed": 0.2}), (10, {"speed": 0.8}), (20, {"speed": 0.5})]
    assert [planning.request_at(schedule, t)["speed"] for t in (0, 9, 10, 19, 20, 99)] == [0.2, 0.2, 0.8, 0.8, 0.5, 0.5]
    with pytest.raises(ValueError, match="starts at step 0"):
        planning.request_at([(3, {"speed": 0.2})], 5)
    with pytest.raises(ValueError, match="must increase"):
        planning.request_at([(0, {"speed": 0.2}), (0, {"speed": 0.3})], 5)


class RecordingSampler:
    """Plans that repeat the observation with zero actions; records what each re-plan asked for."""

    def __init__(self, horizon=8):
        self.calls, self.horizon = [], horizon

    def __call__(self, items, seeds):
        self.calls.append((items, list(seeds)))
        obs = torch.tensor([it["observation"] for it in items])
        plans = torch.zeros(len(items), self.horizon, D)
        plans[:, :, :SPEC.state_dim] = obs[:, None]
        return plans


def test_a_schedule_switches_the_request_within_one_episode():
    sampler = RecordingSampler()
    schedules = [[(0, {"speed": 0.2}), (8, {"speed": 0.8})], [(0, {"speed": 0.5, "jump_height": 0.4})]]
    run = planning.run_schedule(sampler, schedules, [3, 4], steps=16, replan_every=4)
    asked = [[it["attributes"] for it in items] for items, _ in sampler.calls]
    assert len(asked) == 4  # re-plans at steps 0, 4, 8, 12
    assert [a[0] for a in asked] == [{"speed": 0.2}] * 2 + [{"speed": 0.8}] * 2
    assert all(a[1] == {"speed": 0.5, "jump_height": 0.4} for a in asked)
    assert all(it["targets"] == it["attributes"] for items, _ in sampler.calls for it in items)
    # each re-plan starts from the observation the environment is in, and seeds depend on (episode, step)
    for k, (items, seeds) in enumerate(sampler.calls):
        assert seeds == [3000 + 4 * k, 4000 + 4 * k]
        for b in range(2):
            np.testing.assert_allclose(items[b]["observation"], run.trajectories[b, 4 * k, :SPEC.state_dim].tolist(),
                                       atol=1e-6)


def test_visited_items_ask_every_training_request_from_each_state_the_episodes_reach():
    sampler = RecordingSampler(horizon=planning.REPLAN_EVERY)
    items = planning.visited_items(sampler, start_seeds=2, every=planning.REPLAN_EVERY)
    per_episode = planning.EPISODE_STEPS // planning.REPLAN_EVERY
    n_req = len(planning.TRAIN_REQUESTS)
    # zero actions keep a Hopper alive over these few steps, so every re-plan state is kept
    assert len(items) == n_req * (n_req * 2 * per_episode)
    first_call = sampler.calls[0][0]
    for g in range(n_req * 2 * per_episode):
        mine = items[g * n_req:(g + 1) * n_req]
        # one state (its group), asked for every training request
        assert [it["attributes"] for it in mine] == [it["targets"] for it in mine] == planning.TRAIN_REQUESTS
        assert all(it["group"] == g and it["observation"] == mine[0]["observation"] for it in mine)
        b, k = divmod(g, per_episode)  # episode b (request b // 2, start seed b % 2), its k-th re-plan
        want = first_call[b]["observation"] if k == 0 else sampler.calls[k][0][b]["observation"]
        np.testing.assert_allclose(mine[0]["observation"], want, atol=1e-6)
    assert sampler.calls[0][1] == [1000 * s for _ in planning.TRAIN_REQUESTS for s in range(2)]


# ---- metric inputs ---------------------------------------------------------------------------------------
def test_requested_matrix_marks_unrequested_attributes_nan():
    m = planning.requested_matrix([{"speed": 0.2}, {"jump_height": 0.7, "speed": 0.4}], ["speed", "jump_height"])
    assert m[0, 0] == 0.2 and math.isnan(m[0, 1]) and m[1].tolist() == [0.4, 0.7]
    with pytest.raises(ValueError, match="'height' is not one of"):
        planning.requested_matrix([{"height": 0.2}], ["speed"])


def _strength_model(horizon=8):
    model = build_attribute_strength_model(["speed", "jump_height"], D, horizon, encoder="mlp", width=8, seed=0)
    calibrate(model, torch.randn(32, horizon, D, generator=torch.Generator().manual_seed(0)))
    return model.eval()


def test_achieved_strengths_score_the_segment_from_start():
    model = _strength_model()
    x = torch.randn(2, 20, D, generator=torch.Generator().manual_seed(1))
    got = planning.achieved_strengths(model, x, start=5)
    assert torch.allclose(got, model.strengths(x[:, 5:13]).double())
    with pytest.raises(ValueError, match="8-step segments"):
        planning.achieved_strengths(model, x, start=15)


def test_paired_errors_match_the_closed_form():
    before, after = [0.3, 0.2, 0.5, 0.1], [0.1, 0.25, 0.2, 0.1]
    d = np.array(after) - np.array(before)
    half = 1.96 * d.std(ddof=1) / 2
    out = planning.paired_errors(before, after)
    assert out["delta"] == pytest.approx(d.mean()) and out["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert (out["lowered"], out["raised"], out["n"]) == (2, 1, 4)


def test_executed_match_reward_scores_the_executed_plan(tmp_path):
    from diffalign.modalities.planning import execute_plans
    from diffalign.modalities.planning.rewards import executed_match
    model = _strength_model()
    model.save(str(tmp_path / "strength"))
    gen = torch.Generator().manual_seed(2)
    plans = torch.zeros(3, 8, D)
    plans[:, 0, :SPEC.state_dim] = torch.tensor([1.25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0])
    plans[:, :, SPEC.state_dim:] = torch.rand(3, 8, SPEC.action_dim, generator=gen) * 2 - 1
    requests = [{"speed": 0.3}, {"speed": 0.6, "jump_height": 0.2}, {"jump_height": 0.9}]
    items = [planning.request_item(r, start_seed=0) for r in requests]
    got = executed_match(plans, items, strength_model=str(tmp_path / "strength"))
    with torch.no_grad():
        achieved = model.strengths(execute_plans(plans, "Hopper-v5").trajectories).double()
    want = [-np.mean([abs(float(achieved[b, ["speed", "jump_height"].index(k)]) - v) for k, v in r.items()])
            for b, r in enumerate(requests)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # the match bonus: + bonus exactly where every requested strength is within the tolerance
    tol = float(np.median([abs(w) for w in want]))
    with_bonus = executed_match(plans, items, strength_model=str(tmp_path / "strength"), tolerance=tol,
                                match_bonus=0.5)
    within = [all(abs(float(achieved[b, ["speed", "jump_height"].index(k)]) - v) <= tol for k, v in r.items())
              for b, r in enumerate(requests)]
    assert any(within) and not all(within)
    np.testing.assert_allclose(with_bonus.numpy(), np.array(want) + 0.5 * np.array(within), rtol=1e-5)
    with pytest.raises(ValueError, match="match_bonus must be >= 0"):
        executed_match(plans, items, strength_model=str(tmp_path / "strength"), match_bonus=-1.0)
    # with inverse dynamics (a folder holding one) the plans execute closed loop, as the demo executes them
    from diffalign.modalities.planning import save_inverse_dynamics, train_inverse_dynamics
    g = torch.Generator().manual_seed(3)
    idm = train_inverse_dynamics(torch.randn(64, SPEC.state_dim, generator=g),
                                 torch.randn(64, SPEC.state_dim, generator=g),
                                 torch.rand(64, SPEC.action_dim, generator=g) * 2 - 1, steps=20, hidden=16)
    save_inverse_dynamics(idm, str(tmp_path / "idm"))
    closed = executed_match(plans, items, strength_model=str(tmp_path / "strength"), inverse_dynamics=str(tmp_path / "idm"))
    with torch.no_grad():
        achieved = model.strengths(execute_plans(plans, "Hopper-v5", idm).trajectories).double()
    want = [-np.mean([abs(float(achieved[b, ["speed", "jump_height"].index(k)]) - v) for k, v in r.items()])
            for b, r in enumerate(requests)]
    np.testing.assert_allclose(closed.numpy(), want, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="holds no inverse_dynamics.safetensors"):
        executed_match(plans, items, strength_model=str(tmp_path / "strength"), inverse_dynamics=str(tmp_path))


def test_within_tolerance_checks_every_requested_attribute_only():
    from diffalign.modalities.planning.rewards import within_tolerance
    achieved = torch.tensor([[0.30, 0.90], [0.30, 0.50], [0.45, 0.0]])
    targets = [{"speed": 0.35}, {"speed": 0.35, "jump_height": 0.2}, {"speed": 0.3}]
    assert within_tolerance(achieved, ["speed", "jump_height"], targets, 0.1).tolist() == [True, False, False]


# ---- the pipeline -----------------------------------------------------------------------------------------
def test_segment_windows_cover_each_episode_at_the_stride():
    eps = [Episode(np.arange(20 * 11, dtype=np.float32).reshape(20, 11), np.ones((20, 3), np.float32),
                   np.zeros(20, np.float32)), Episode(np.zeros((5, 11), np.float32), np.zeros((5, 3), np.float32),
                                                      np.zeros(5, np.float32))]
    w = planning_model.segment_windows(eps, horizon=8, stride=4)
    assert w.shape == (4, 8, 14)  # starts 0, 4, 8, 12 of the long episode; the short one is too short
    assert torch.equal(w[2], torch.as_tensor(eps[0].rows()[8:16]))
    with pytest.raises(ValueError, match="horizon 30"):
        planning_model.segment_windows(eps, horizon=30)


def _hopper_like_episodes(n=12, length=48, seed=0):
    """Episodes whose forward velocity (obs[5]) differs by episode, so the annotator's speed labels are learnable."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        obs = 0.05 * rng.standard_normal((length, 11)).astype(np.float32)
        obs[:, 0] += 1.2
        obs[:, 5] += i / n * 2.0
        eps.append(Episode(obs, rng.uniform(-1, 1, (length, 3)).astype(np.float32), np.zeros(length, np.float32)))
    return eps


def test_build_demo_model_writes_a_loadable_planner_and_a_strength_model_that_ranks_speed(tmp_path, monkeypatch):
    from diffalign.modalities.planning import PlanningAdapter, write_episodes
    from diffalign.rewards.attribute_strength import load_attribute_strength
    torch.set_num_threads(1)
    monkeypatch.setattr(planning_model, "HORIZON", 16)
    data = write_episodes(str(tmp_path / "data.npz"), _hopper_like_episodes())
    meta = planning_model.build_demo_model(data, str(tmp_path / "model"), seed=0, planner_steps=60, num_pairs=400,
                                           strength_epochs=4, stride=8, command="test", inverse_dynamics_steps=50)
    adapter = PlanningAdapter.from_pretrained(str(tmp_path / "model"))
    assert adapter.attributes == list(planning_model.ATTRIBUTES) and adapter.horizon == 16
    strength = load_attribute_strength(str(tmp_path / "model" / "strength"))
    assert meta["strength_held_out_accuracy"]["speed"] > 0.8
    assert meta["planner_loss_first_last"][1] < meta["planner_loss_first_last"][0]
    assert not os.path.exists(tmp_path / "model" / "_work")
    # the inverse dynamics that executes the plans is saved beside them (its fit: test_planning_execute.py)
    from diffalign.modalities.planning import load_inverse_dynamics
    assert load_inverse_dynamics(str(tmp_path / "model")) is not None
    assert meta["inverse_dynamics"]["steps"] == 50 and meta["inverse_dynamics"]["held_out_action_mse"] >= 0
    # the demo's alignment reward executes plans with it
    cfg = planning.load_planning_config("grpo", str(tmp_path / "run"), str(tmp_path / "model"))
    assert cfg.reward.kwargs["inverse_dynamics"] == str(tmp_path / "model")
    # calibrated: a dataset window's strength lies in [0, 1], and faster episodes get higher speed strengths
    eps = _hopper_like_episodes()
    s = strength.strengths(torch.stack([torch.as_tensor(e.rows()[:16]) for e in eps]))[:, 0]
    assert s.min() >= -1e-5 and s.max() <= 1 + 1e-5
    assert np.corrcoef(s.numpy(), np.arange(len(eps)))[0, 1] > 0.8


def test_the_shipped_model_is_small_and_records_how_it_was_made():
    folder = planning.shipped_model()
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
    assert size <= 10 * 2 ** 20
    with open(os.path.join(folder, planning_model.TRAINING_FILE)) as f:
        meta = json.load(f)
    assert meta["command"].startswith("python scripts/train_planning_demo_model.py") and meta["seed"] == 0
    assert {"total", "planner", "strength_model", "inverse_dynamics"} <= set(meta["seconds"])
    assert os.path.isfile(os.path.join(folder, "inverse_dynamics.safetensors"))
    assert min(meta["strength_held_out_accuracy"].values()) > 0.7


# ---- the demo ------------------------------------------------------------------------------------------
def test_eval_set_holds_out_requests_and_start_seeds():
    requests, seeds = planning.eval_set(3)
    assert len(planning.HELD_OUT_REQUESTS) >= 8 and len(requests) == 3 * len(planning.HELD_OUT_REQUESTS)
    assert not any(r in planning.TRAIN_REQUESTS for r in planning.HELD_OUT_REQUESTS)
    assert min(seeds) >= planning.SEED_BASE > planning.TRAIN_START_SEEDS and len(set(seeds)) == len(seeds)
    assert available_algos("planning") == ["planning_grpo"] and "planning_grpo" not in available_algos("image")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("planning_demo"))
    assert _cli(["demo", "planning", "--quick", "--minutes", "0.3", "--output", out]) == 0
    with open(os.path.join(out, "report.json")) as f:
        return out, json.load(f)


def test_quick_planning_demo_writes_the_report_schema(quick_run):
    out, report = quick_run
    for name in ("report.md", "filmstrip.png", "switch.png", "switch_filmstrip.png", "achieved_vs_requested.png",
                 "reward_curve.png", "samples/prompts.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert report["modality"] == "planning" and report["algo"] == planning.DEFAULT_PLANNING_ALGO and report["quick"]
    assert {"model", "flags"} <= set(report["hardware"]) and report["precision"]["chosen"] == "no"
    for stage in ("before", "after"):
        assert 0 <= report[stage]["match_rate"] <= 1 and report[stage]["attribute_mae"] >= 0
        assert report[stage]["n"] == len(planning.HELD_OUT_REQUESTS)
    assert report["paired"]["all"]["n"] == report["paired"]["attribute_mae"]["n"] == report["eval"]["samples"]
    assert report["info"]["epochs"] == 2 and len(report["curve"]) == 2
    assert len(report["switch"]["achieved_speed"]["before"]) == 2


def test_saved_episodes_reproduce_the_reported_metrics(quick_run):
    from diffalign.rewards.attribute_strength import load_attribute_strength
    from diffalign.rewards.strength_metrics import matching_metrics
    out, report = quick_run
    with open(os.path.join(out, "samples", "prompts.json")) as f:
        index = json.load(f)
    strength = load_attribute_strength(os.path.join(planning.shipped_model(), "strength"))
    for stage in ("before", "after"):
        names = sorted(k for k in index if k.startswith(stage + "/"))
        x = torch.stack([torch.as_tensor(np.concatenate([np.load(os.path.join(out, "samples", n))[k]
                                                         for k in ("observations", "actions")], axis=1))
                         for n in names])
        assert x.shape[1] == planning.EPISODE_STEPS == planning.WARMUP_STEPS + planning.SEGMENT_STEPS
        achieved = strength.strengths(x[:, planning.WARMUP_STEPS:])  # the segment after the warm-up
        requested = planning.requested_matrix([index[n]["request"] for n in names], strength.aspects)
        got = matching_metrics(requested, achieved, planning.TOLERANCE)
        assert got["attribute_mae"] == pytest.approx(report[stage]["attribute_mae"], abs=1e-5)
        assert got["match_rate"] == pytest.approx(report[stage]["match_rate"])


def test_cli_rejects_an_unknown_planning_algo(capsys):
    assert _cli(["demo", "planning", "--algo", "nope"]) == 2
    assert "unknown --algo 'nope' for planning" in capsys.readouterr().err


def _benchmark_module(name):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quick_report_collects_and_renders_as_a_planning_row(quick_run):
    out, report = quick_run
    data = _benchmark_module("demo_results").collect([out])
    header, rows = _benchmark_module("report").demo_modality_rows("planning", data)
    row = dict(zip(header, rows[0]))
    b, a = report["before"], report["after"]
    assert row["match rate before -> after"] == f"{100 * b['match_rate']:.1f}% -> **{100 * a['match_rate']:.1f}%**"
    assert row["attribute MAE before -> after"] == f"{b['attribute_mae']:.3f} -> **{a['attribute_mae']:.3f}**"
    assert row["fixed / broken"] == f"{report['paired']['all']['fixed']} / {report['paired']['all']['broken']}"
