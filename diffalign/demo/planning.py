"""``diffalign demo planning``: ask the shipped attribute-conditioned planner for behaviours, align it, ask again.

The shipped model (diffalign/assets/planning_demo_model, made by scripts/train_planning_demo_model.py with
AlignDiff's pipeline, diffalign/demo/planning_model.py) is a Hopper-v5 trajectory planner conditioned on
requested attribute strengths in [0, 1] (masked attribute vectors, classifier-free guidance), with the
attribute strength model it was relabelled by (``strength/``). Stages, as the other demos
(:func:`diffalign.demo.run.measure_alignment`):

1. before: every held-out request (:data:`HELD_OUT_REQUESTS`) from held-out start seeds is executed in the
   environment by receding-horizon control (plan, act ``REPLAN_EVERY`` steps of the plan, re-plan) for
   ``EPISODE_STEPS`` steps; the strength model scores the segment after ``WARMUP_STEPS`` (a gait needs time to
   build up from the reset pose), and AlignDiff's metrics compare achieved with requested strengths
   (diffalign.rewards.strength_metrics: ``attribute_mae``, ``match_rate`` within ``TOLERANCE``);
2. align through the trainer with ``diffalign/configs/demo_planning_<algo>.yaml`` on the training requests from
   the states the base planner's own episodes reach under them (:func:`visited_items`, training start seeds),
   rewarded by the planning modality's ``planning_executed_match`` (-mean |achieved - requested| strength of each
   plan executed open loop in the environment, plus a bonus when every requested strength is within ``TOLERANCE``);
3. the same requests, start seeds and sampling seeds again; report.json / report.md (the image demo's schema
   with ``modality: planning``), ``samples/{before,after}/NNNN.npz`` (executed trajectory, plan-free: observations,
   actions, torso x) with ``samples/prompts.json``, filmstrips of a few episodes, ``achieved_vs_requested.png``,
   and one episode whose request switches (slow -> fast) half-way (:func:`run_schedule`, ``switch.png``).

Run-time switching: the execution loop takes a *schedule* per episode, ``[(first_step, request), ...]``; each
re-plan asks for the request in force at that step (:func:`scheduled_planner`).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from diffalign.demo.planning_model import ENV

DEFAULT_PLANNING_ALGO = "grpo"
CONFIG_PREFIX = "planning_"          # demo_planning_<algo>.yaml among the demo configs
TOLERANCE = 0.1                      # a request is matched when every requested strength is within this
SEGMENT_STEPS = 32                   # the strength model's segment length (= the planner's horizon)
# A Hopper standing at its reset pose cannot reach most requested gaits within one 32-step (0.256 s) segment
# (the shipped planner's plans executed from resets span speed strengths 0.16-0.62, 5th-95th percentile), so an
# episode first walks WARMUP_STEPS steps under the request and the strength model scores the segment after them.
WARMUP_STEPS = 32
EPISODE_STEPS = WARMUP_STEPS + SEGMENT_STEPS
# re-plan once per planner horizon: each scored segment is then one plan executed open loop from the state
# the episode reached, exactly what the alignment reward (planning_executed_match) executes and scores
REPLAN_EVERY = 32
SEED_BASE = 10_000                   # held-out start seeds: SEED_BASE + index (training starts use 0..)
SAMPLES_PER_KIND = 6                 # start seeds per held-out request
QUICK_SAMPLES_PER_KIND = 1
FILMSTRIP_EPISODES = 4
# held-out requests (strengths never requested in training, which asks for multiples of 0.1 + 0.05 offsets
# below): speed alone, and speed with jump height (the rest of the attribute vector masked)
HELD_OUT_REQUESTS: List[Dict[str, float]] = [
    {"speed": 0.2}, {"speed": 0.35}, {"speed": 0.5}, {"speed": 0.65}, {"speed": 0.8},
    {"speed": 0.3, "jump_height": 0.4}, {"speed": 0.6, "jump_height": 0.5}, {"speed": 0.75, "jump_height": 0.6}]
TRAIN_REQUESTS: List[Dict[str, float]] = [
    {"speed": 0.1}, {"speed": 0.25}, {"speed": 0.4}, {"speed": 0.55}, {"speed": 0.7}, {"speed": 0.9},
    {"speed": 0.45, "jump_height": 0.3}, {"speed": 0.7, "jump_height": 0.7}]
TRAIN_START_SEEDS = 8                # training episodes 0..7 per training request (visited_items)
QUICK_TRAIN_START_SEEDS = 1
SWITCH = [(0, {"speed": 0.2}), (EPISODE_STEPS, {"speed": 0.8})]  # the switching episode: slow, then fast


def _spec():
    """Where Hopper's quantities sit in a trajectory row (diffalign.rewards.behaviour.ENV_SPECS)."""
    from diffalign.rewards.behaviour import env_spec
    return env_spec(ENV)


def shipped_model() -> str:
    import diffalign
    return os.path.join(os.path.dirname(os.path.abspath(diffalign.__file__)), "assets", "planning_demo_model")


def planning_algos() -> List[str]:
    """Algorithms with a shipped planning demo config (diffalign/configs/demo_planning_<algo>.yaml)."""
    from diffalign.demo.run import available_algos
    return [a[len(CONFIG_PREFIX):] for a in available_algos("planning")]


def config_path(algo: str) -> str:
    from diffalign.demo.run import demo_config_path
    if algo not in planning_algos():
        raise ValueError(f"unknown planning demo algorithm {algo!r}; choose one of {planning_algos()}")
    return demo_config_path(CONFIG_PREFIX + algo)


def request_text(request: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in request.items())


def request_item(request: Mapping[str, float], **where: Any) -> Dict[str, Any]:
    """A prompt item asking for ``request``: ``attributes`` conditions the planner, ``targets`` is what the
    strength-model reward compares with; ``where``: ``start_seed`` or ``observation``."""
    return {"text": request_text(request), "attributes": dict(request), "targets": dict(request), **where}


def eval_set(per_request: int = SAMPLES_PER_KIND) -> Tuple[List[Dict[str, float]], List[int]]:
    """(requests, start seeds): each held-out request from ``per_request`` held-out start seeds (each episode
    its own seed SEED_BASE + index)."""
    if per_request < 1:
        raise ValueError(f"start seeds per request must be >= 1, got {per_request}")
    requests = [r for r in HELD_OUT_REQUESTS for _ in range(per_request)]
    return requests, [SEED_BASE + i for i in range(len(requests))]


def train_items() -> List[Dict[str, Any]]:
    """Every training request from every training start seed's reset state."""
    return [request_item(r, start_seed=s) for r in TRAIN_REQUESTS for s in range(TRAIN_START_SEEDS)]


def visited_items(sampler, start_seeds: int = TRAIN_START_SEEDS, every: int = REPLAN_EVERY,
                  inverse_dynamics=None) -> List[Dict[str, Any]]:
    """The alignment stage's prompt items: every training request from each state the base planner's own episodes
    reach (each training request from training start seeds 0..``start_seeds`` - 1, every ``every``-th step, the
    episode still running), so the planner is aligned where the evaluation re-plans: mid-gait, not only at the
    reset pose. The items of one state share a ``group`` (its index): a GRPO group then holds different requests
    from one state, and its advantages reward a plan for matching its own request better than the plans for the
    other requests did from the same state. Grouped by item instead, most requests asked more speed than the
    base gave, and every group's update pushed the whole policy the same way (one fast gait for every request)."""
    requests = [r for r in TRAIN_REQUESTS for _ in range(start_seeds)]
    seeds = [s for _ in TRAIN_REQUESTS for s in range(start_seeds)]
    run = run_schedule(sampler, [[(0, r)] for r in requests], seeds, EPISODE_STEPS, every, inverse_dynamics)
    s = _spec().obs_dim
    states = [run.trajectories[b, t, :s].tolist() for b in range(len(requests)) for t in range(0, EPISODE_STEPS, every)
              if run.alive[b, t]]
    return [dict(request_item(r, observation=o), group=g) for g, o in enumerate(states) for r in TRAIN_REQUESTS]


# ---- execution with a schedule of requests --------------------------------------------------------------
def request_at(schedule: Sequence[Tuple[int, Mapping[str, float]]], step: int) -> Mapping[str, float]:
    """The request in force at ``step``: the last entry whose first step is <= step."""
    if not schedule or schedule[0][0] != 0:
        raise ValueError(f"a request schedule starts at step 0, got {list(schedule)!r}")
    if any(b[0] <= a[0] for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"a request schedule's steps must increase, got {[s for s, _ in schedule]}")
    return [r for s, r in schedule if s <= step][-1]


def scheduled_planner(sampler, schedules: Sequence[Sequence[Tuple[int, Mapping[str, float]]]],
                      seeds: Sequence[int]):
    """The execution loop's planner ``(observations (B, S), step) -> plans``: episode b asks ``sampler``
    (``(items, seeds) -> plans``, :func:`diffalign.demo.run.policy_sampler`) for the request its schedule holds
    at that step, from its current observation, with sampling seed ``seeds[b] * 1000 + step``."""
    def plan(observations: torch.Tensor, step: int) -> torch.Tensor:
        items = [request_item(request_at(sch, step), observation=o.tolist())
                 for sch, o in zip(schedules, observations)]
        return sampler(items, [int(s) * 1000 + int(step) for s in seeds])
    return plan


def run_schedule(sampler, schedules, start_seeds: Sequence[int], steps: int, replan_every: Optional[int] = None,
                 inverse_dynamics=None):
    """Receding-horizon episodes from seeded resets following each episode's request schedule (an Execution);
    ``replan_every`` defaults to :data:`REPLAN_EVERY`; actions from the plans, or with ``inverse_dynamics`` toward
    their planned states (execute.receding_horizon)."""
    from diffalign.modalities.planning import receding_horizon
    replan_every = REPLAN_EVERY if replan_every is None else replan_every
    if len(schedules) != len(start_seeds):
        raise ValueError(f"{len(schedules)} schedules but {len(start_seeds)} start seeds")
    return receding_horizon(scheduled_planner(sampler, schedules, start_seeds), ENV, list(start_seeds),
                            steps, replan_every, inverse_dynamics)


def requested_matrix(requests: Sequence[Mapping[str, float]], aspects: Sequence[str]) -> torch.Tensor:
    """(N, A) requested strengths, NaN where an attribute is not requested (strength_metrics' layout)."""
    out = torch.full((len(requests), len(aspects)), math.nan, dtype=torch.float64)
    for i, r in enumerate(requests):
        for k, v in r.items():
            if k not in aspects:
                raise ValueError(f"request {dict(r)!r}: {k!r} is not one of the model's attributes {list(aspects)}")
            out[i, list(aspects).index(k)] = float(v)
    return out


def achieved_strengths(strength_model, trajectories: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(B, A) calibrated strengths of the executed steps [start, start + segment length)."""
    h = strength_model.horizon
    x = torch.as_tensor(trajectories)[:, start:start + h]
    if x.shape[1] != h:
        raise ValueError(f"the strength model scores {h}-step segments; steps {start}.. of these trajectories "
                         f"hold {x.shape[1]}")
    with torch.no_grad():
        return strength_model.strengths(x).double()


def paired_errors(before: Sequence[float], after: Sequence[float]) -> Dict[str, float]:
    """Mean change of the per-episode error over the same episodes, with a normal 95% interval of the mean
    difference and the episodes it lowered / raised."""
    d = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    half = 1.96 * (d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.inf)
    return {"n": int(len(d)), "delta": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "lowered": int((d < 0).sum()), "raised": int((d > 0).sum())}


def evaluate_planning(sampler, requests: Sequence[Mapping[str, float]], seeds: Sequence[int], strength_model,
                      steps: int = EPISODE_STEPS, inverse_dynamics=None) -> Dict[str, Any]:
    """Execute every (request, start seed) episode and score it: ``execution``, ``achieved`` (N, A),
    ``metrics`` (matching_metrics), per-episode ``matched`` and ``error``."""
    from diffalign.rewards.strength_metrics import matching_metrics, per_sample_error
    run = run_schedule(sampler, [[(0, r)] for r in requests], seeds, steps, None, inverse_dynamics)
    achieved = achieved_strengths(strength_model, run.trajectories, WARMUP_STEPS)
    requested = requested_matrix(requests, strength_model.aspects)
    within = ((achieved - requested.nan_to_num()).abs() <= TOLERANCE) | requested.isnan()
    metrics = matching_metrics(requested, achieved, TOLERANCE)
    metrics["mean_speed_m_s"] = float(run.progress.mean() / (steps * _spec().dt))
    return {"execution": run, "achieved": achieved, "metrics": metrics, "matched": within.all(dim=1).tolist(),
            "error": per_sample_error(requested, achieved).tolist()}


# ---- the reward the alignment trains on ----------------------------------------------------------------
# ---- the alignment stage -------------------------------------------------------------------------------
QUICK_OVERRIDES = {"epochs": 2, "sampling.batch_size": 16, "train.batch_size": 16}


def load_planning_config(algo: str, output: str, model: str, overrides: Optional[Dict[str, Any]] = None,
                         items: Optional[List[Dict[str, Any]]] = None):
    """demo_planning_<algo>.yaml with the model folder, its strength model as the reward's, the training items
    (``items``, default :func:`train_items`)."""
    import yaml

    from diffalign.config import load_config
    with open(config_path(algo), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["output_dir"] = output
    data["prompts"] = {"list": train_items() if items is None else list(items)}
    data.setdefault("modality", {}).setdefault("options", {})["model"] = model
    kwargs = data.setdefault("reward", {}).setdefault("kwargs", {})
    kwargs["strength_model"] = os.path.join(model, "strength")
    from diffalign.modalities.planning.execute import INVERSE_DYNAMICS_FILE
    if os.path.isfile(os.path.join(model, INVERSE_DYNAMICS_FILE)):  # the reward executes plans as the demo does
        kwargs["inverse_dynamics"] = model
    items = [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]
    return load_config(data=data, overrides=items)


def base_sampler(model: str, cfg) -> Any:
    """The shipped planner's sampler with the alignment config's sampling settings (so the aligned policy is
    scored as it was trained)."""
    from diffalign.demo.run import policy_sampler
    from diffalign.modalities.planning import PlanningAdapter
    from diffalign.trainer.builders import build_policy
    adapter = PlanningAdapter.from_pretrained(model)
    return policy_sampler(build_policy(cfg, adapter), 64, desc="plan base")


def planning_train_stage(algo: str, model: str, overrides: Optional[Dict[str, Any]] = None,
                         items: Optional[List[Dict[str, Any]]] = None):
    """The after stage: the trainer with demo_planning_<algo>.yaml on ``items`` for ``ctx.minutes``."""
    def stage(ctx):
        from diffalign.demo.run import AfterResult, policy_sampler
        from diffalign.trainer import make_trainer
        extra = dict(QUICK_OVERRIDES) if ctx.quick else {}
        extra.update(overrides or {})
        extra["seed"] = ctx.seed
        out_dir = os.path.join(ctx.output, "train")
        cfg = load_planning_config(algo, out_dir, model, extra, items)
        cfg.train.max_minutes = ctx.minutes
        start = time.perf_counter()
        trainer = make_trainer(cfg)
        offset = time.perf_counter() - start
        history = trainer.train()
        curve = [{"seconds": offset + m["elapsed_s"], "reward": float(m["reward_mean"]),
                  **{k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "elapsed_s"}}
                 for m in history if "reward_mean" in m]
        info = {"config": config_path(algo), "overrides": extra, "epochs": len(history),
                "stopped_by_budget": bool(history and history[-1].get("stopped_by_budget")),
                "train_seconds": time.perf_counter() - start, "train_items": len(cfg.prompts.list),
                "metrics": os.path.join(out_dir, "metrics.jsonl")}
        return AfterResult(policy_sampler(trainer.policy, 64, desc="plan aligned"), curve, info)
    return stage


# ---- outputs ---------------------------------------------------------------------------------------------
def save_episodes(output: str, requests, seeds, evaluations: Dict[str, Dict[str, Any]]) -> Dict[str, dict]:
    """samples/{before,after}/NNNN.npz (executed observations, actions, torso x, alive) and samples/prompts.json
    (file -> request, start seed, achieved strengths, matched)."""
    index: Dict[str, dict] = {}
    for stage, ev in evaluations.items():
        os.makedirs(os.path.join(output, "samples", stage), exist_ok=True)
        run, s = ev["execution"], _spec().obs_dim
        for i, (request, seed) in enumerate(zip(requests, seeds)):
            name = f"{stage}/{i:04d}.npz"
            traj = run.trajectories[i].numpy()
            np.savez_compressed(os.path.join(output, "samples", name), observations=traj[:, :s], actions=traj[:, s:],
                                x=run.positions[i].numpy(), alive=run.alive[i].numpy())
            index[name] = {"request": dict(request), "start_seed": int(seed),
                           "achieved": dict(zip(ev["aspects"], ev["achieved"][i].tolist())),
                           "matched": bool(ev["matched"][i])}
    with open(os.path.join(output, "samples", "prompts.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index


def save_filmstrips(path: str, rows: Sequence[Tuple[str, np.ndarray, np.ndarray]], every: int = 4, size: int = 64):
    """One labelled filmstrip row per (label, executed (T, S + A), torso x (T,)), every ``every``-th step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffalign.modalities.planning import filmstrip, render_states
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.3 * len(rows)), squeeze=False)
    for ax, (label, traj, x) in zip(axes[:, 0], rows):
        ax.imshow(filmstrip(render_states(traj[::every], ENV, size, x[::every])))
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_scatter(path: str, requested: torch.Tensor, achieved: Dict[str, torch.Tensor], aspects: Sequence[str]):
    """Achieved against requested strength per attribute, before and after (the diagonal is a perfect match)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(aspects), figsize=(4 * len(aspects), 3.6), squeeze=False)
    for a, (ax, name) in enumerate(zip(axes[0], aspects)):
        asked = ~requested[:, a].isnan()
        for stage, colour in (("before", "gray"), ("after", "green")):
            ax.scatter(requested[asked, a], achieved[stage][asked, a], s=12, alpha=0.6, color=colour, label=stage)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.fill_between([0, 1], [-TOLERANCE, 1 - TOLERANCE], [TOLERANCE, 1 + TOLERANCE], color="k", alpha=0.07)
        ax.set_xlabel(f"requested {name} strength"), ax.set_ylabel("achieved")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_switch(path: str, run, strength_model, schedule, labels: Sequence[str]):
    """The switching episodes: filmstrips and the forward velocity per step with the requested speed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(labels), 1, figsize=(8, 2.4 * len(labels)), squeeze=False)
    switch = schedule[1][0]
    for b, (ax, label) in enumerate(zip(axes[:, 0], labels)):
        ax.plot(run.trajectories[b, :, _spec().x_velocity].numpy(), label="torso forward velocity (m/s)")
        ax.axvline(switch, color="k", ls="--", lw=0.8)
        got = [float(achieved_strengths(strength_model, run.trajectories[b:b + 1], s + WARMUP_STEPS)[0, 0])
               for s, _ in schedule]
        ax.set_title(f"{label}: requested speed " + " -> ".join(f"{r['speed']:g}" for _, r in schedule)
                     + "; achieved " + " -> ".join(f"{g:.2f}" for g in got), fontsize=8)
        ax.set_xlabel("step"), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def planning_markdown(report: dict) -> str:
    b, a, p = report["before"], report["after"], report["paired"]
    m = p["all"]
    e = p["attribute_mae"]
    lines = [f"# diffalign demo planning: algo {report['algo']}", "",
             f"Held-out match rate (every requested strength within {b['tolerance']:g}) {100 * b['match_rate']:.1f}% "
             f"-> {100 * a['match_rate']:.1f}%, attribute MAE {b['attribute_mae']:.3f} -> {a['attribute_mae']:.3f} "
             f"({report['eval']['samples']} episodes: {report['eval']['prompts']} held-out requests x "
             f"{report['eval']['samples_per_kind']} held-out start seeds, executed in Hopper-v5 by receding-horizon "
             f"control; same seeds before and after; alignment {report['seconds']['after_stage']:.0f} s).", "",
             f"Match rate change {100 * m['delta']:+.1f} points, 95% CI [{100 * m['ci95'][0]:+.1f}, "
             f"{100 * m['ci95'][1]:+.1f}]; {m['fixed']} episodes fixed, {m['broken']} broken; McNemar exact p = "
             f"{m['mcnemar_p']:.2g}. MAE change {e['delta']:+.3f}, 95% CI [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}] "
             f"(lower in {e['lowered']} episodes, higher in {e['raised']}).", "",
             "| metric | before | after | change |", "|---|---|---|---|",
             f"| match_rate | {100 * b['match_rate']:.1f}% | {100 * a['match_rate']:.1f}% | "
             f"{100 * (a['match_rate'] - b['match_rate']):+.1f} pts |",
             f"| attribute_mae | {b['attribute_mae']:.3f} | {a['attribute_mae']:.3f} | "
             f"{a['attribute_mae'] - b['attribute_mae']:+.3f} |",
             f"| mean speed (m/s) | {b['mean_speed_m_s']:.2f} | {a['mean_speed_m_s']:.2f} | "
             f"{a['mean_speed_m_s'] - b['mean_speed_m_s']:+.2f} |", "",
             "![achieved vs requested](achieved_vs_requested.png)", "", "![episodes](filmstrip.png)", "",
             "Run-time switching (one episode, the request changes half-way):", "", "![switch](switch.png)", "",
             "![reward curve](reward_curve.png)", "",
             "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()), ""]
    hw, prec = report["hardware"], report["precision"]
    lines += [f"Machine: {hw.get('model')} ({', '.join(hw.get('flags', [])) or 'no listed flags'}), "
              f"{report['torch_threads']} torch threads; precision {prec['chosen']}", "",
              "Every executed episode is in `samples/before` and `samples/after` (.npz: observations, actions, "
              "torso x); "
              "`samples/prompts.json` maps each file to its request, start seed and achieved strengths."]
    if report.get("quick"):
        lines += ["", "**--quick run**: one start seed per request and two training epochs; the numbers only check "
                      "the pipeline."]
    return "\n".join(lines) + "\n"


def run_planning_demo(output: str, algo: str = DEFAULT_PLANNING_ALGO, quick: bool = False, minutes: float = 10.0,
                      samples_per_kind: int = SAMPLES_PER_KIND, seed: int = 0,
                      overrides: Optional[Dict[str, Any]] = None, model: Optional[str] = None) -> dict:
    """Before -> align with ``demo_planning_<algo>.yaml`` -> after -> report in ``output``; returns the report."""
    from diffalign.demo.report import save_curve
    from diffalign.demo.run import DemoContext, measure_alignment
    from diffalign.eval.paired import paired_change
    from diffalign.modalities.planning import load_inverse_dynamics
    from diffalign.rewards.attribute_strength import load_attribute_strength
    from diffalign.trainer.precision import cpu_info
    model = model or shipped_model()
    if not os.path.isfile(os.path.join(model, "planner.json")):
        raise FileNotFoundError(f"{model} is not a planning demo model (scripts/train_planning_demo_model.py)")
    t_total = time.perf_counter()
    if quick:
        samples_per_kind = QUICK_SAMPLES_PER_KIND
    os.makedirs(output, exist_ok=True)
    strength = load_attribute_strength(os.path.join(model, "strength"))
    requests, seeds = eval_set(samples_per_kind)
    cfg = load_planning_config(algo, os.path.join(output, "train"), model, dict(overrides or {}))
    ctx = DemoContext(model=model, reward=None, train_prompts=[], output=output, minutes=minutes, quick=quick,
                      seed=seed)

    idm = load_inverse_dynamics(model)  # None: the plans' own actions

    def evaluate(sampler):
        ev = evaluate_planning(sampler, requests, seeds, strength, inverse_dynamics=idm)
        ev["aspects"] = list(strength.aspects)
        ev["sampler"] = sampler
        return ev
    base = base_sampler(model, cfg)
    t = time.perf_counter()
    items = visited_items(base, QUICK_TRAIN_START_SEEDS if quick else TRAIN_START_SEEDS, inverse_dynamics=idm)
    items_seconds = time.perf_counter() - t
    before, result, after, seconds = measure_alignment(evaluate, base, planning_train_stage(algo, model, overrides,
                                                                                           items), ctx, "no")
    seconds["train_states"] = items_seconds
    t = time.perf_counter()
    switch = run_schedule(before["sampler"], [SWITCH], [SEED_BASE], SWITCH[-1][0] + EPISODE_STEPS, None, idm)
    switch_after = run_schedule(after["sampler"], [SWITCH], [SEED_BASE], SWITCH[-1][0] + EPISODE_STEPS, None, idm)
    seconds["switch"] = time.perf_counter() - t
    requested = requested_matrix(requests, strength.aspects)
    report = {
        "modality": "planning", "algo": algo, "model": model,
        "before": before["metrics"], "after": after["metrics"],
        "delta": {k: after["metrics"][k] - before["metrics"][k] for k in ("match_rate", "attribute_mae",
                                                                          "mean_speed_m_s")},
        # "all": the headline's paired test (the match rate), as the other demos' reports
        "paired": {"all": paired_change(before["matched"], after["matched"]),
                   "attribute_mae": paired_errors(before["error"], after["error"])},
        "switch": {"schedule": [[s, r] for s, r in SWITCH], "start_seed": SEED_BASE,
                   "achieved_speed": {stage: [float(achieved_strengths(strength, run.trajectories,
                                                                       s + WARMUP_STEPS)[0, 0]) for s, _ in SWITCH]
                                      for stage, run in (("before", switch), ("after", switch_after))}},
        "seconds": seconds, "curve": result.curve, "info": result.info,
        "eval": {"prompts": len(HELD_OUT_REQUESTS), "samples": len(requests), "samples_per_kind": samples_per_kind,
                 "seeds": [seeds[0], seeds[-1]], "episode_steps": EPISODE_STEPS,
                 "warmup_steps": WARMUP_STEPS, "replan_every": REPLAN_EVERY,
                 "actions": "inverse dynamics toward the plan" if idm is not None else "the plan's own (open loop)",
                 "tolerance": TOLERANCE, "sampling": {"num_steps": cfg.sampling.num_steps,
                                                      "guidance_scale": cfg.sampling.guidance_scale},
                 "requests": HELD_OUT_REQUESTS, "split": "heldout"},
        "quick": quick, "torch_threads": torch.get_num_threads(), "hardware": cpu_info(),
        "precision": {"requested": "no", "chosen": "no", "reason": "float32 (the project's CPU measurements)"},
    }
    save_episodes(output, requests, seeds, {"before": before, "after": after})
    picks = [requests.index(r) for r in HELD_OUT_REQUESTS[:1 if quick else FILMSTRIP_EPISODES]]  # rendering costs
    rows = [(f"{stage}: {request_text(requests[i])} (achieved " +
             ", ".join(f"{v:.2f}" for v in ev["achieved"][i].tolist()) + ")",
             ev["execution"].trajectories[i].numpy(), ev["execution"].positions[i].numpy())
            for i in picks for stage, ev in (("before", before), ("after", after))]
    save_filmstrips(os.path.join(output, "filmstrip.png"), rows)
    save_scatter(os.path.join(output, "achieved_vs_requested.png"), requested,
                 {"before": before["achieved"], "after": after["achieved"]}, strength.aspects)
    save_switch(os.path.join(output, "switch.png"), _stacked(switch, switch_after), strength, SWITCH,
                ["before", "after"])
    save_filmstrips(os.path.join(output, "switch_filmstrip.png"),
                    [(f"{stage}: speed 0.2 -> 0.8 at step {SWITCH[1][0]}", run.trajectories[0].numpy(),
                      run.positions[0].numpy()) for stage, run in (("before", switch), ("after", switch_after))])
    save_curve(os.path.join(output, "reward_curve.png"), result.curve, -before["metrics"]["attribute_mae"],
               -after["metrics"]["attribute_mae"], f"planning, algo {algo}: -|achieved - requested| strength")
    seconds["total"] = time.perf_counter() - t_total
    report["files"] = {"filmstrip": "filmstrip.png", "switch": "switch.png", "switch_filmstrip": "switch_filmstrip.png",
                       "scatter": "achieved_vs_requested.png", "reward_curve": "reward_curve.png",
                       "samples": "samples", "prompts": "samples/prompts.json", "markdown": "report.md"}
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(planning_markdown(report))
    return report


def headline(report: dict) -> str:
    """The CLI's one-line summary."""
    b, a = report["before"], report["after"]
    return (f"held-out request match rate {100 * b['match_rate']:.1f}% -> {100 * a['match_rate']:.1f}% "
            f"({100 * (a['match_rate'] - b['match_rate']):+.1f} points), attribute MAE {b['attribute_mae']:.3f} -> "
            f"{a['attribute_mae']:.3f}")


def _stacked(*runs):
    """Executions of one episode each, as one batch (for plotting them together)."""
    from diffalign.modalities.planning import Execution
    return Execution(*(torch.cat([getattr(r, f) for r in runs]) for f in
                       ("trajectories", "rewards", "alive", "progress", "positions")))
