"""``diffalign demo editing``: measure the shipped tiny instruction editor, align it, measure again.

The model is the shipped 32x32 pixel-space InstructPix2Pix-style editor (diffalign/assets/editing_demo_model, made
by scripts/train_editing_demo_model.py from the image demo model). The reward is ``shapes_edit``
(:mod:`diffalign.rewards.edit_compositional`): the instruction holds in the edit, every object it does not name is
preserved, and nothing extra is drawn. Stages, as the image demo (:mod:`diffalign.demo.run`):

1. before: edit the held-out evaluation set (:func:`editing_eval_set`: held-out instructions on held-out input
   scenes, the same number of each kind, recolour / move / add / remove) with fixed seeds and score the edits;
2. align through the trainer with a shipped ``diffalign/configs/demo_editing_<algo>.yaml``
   (:func:`diffalign.demo.run.train_stage`, the budget in ``train.max_minutes``) on training edit items of the
   kinds :data:`TRAIN_KINDS`;
3. edit and score the same items and seeds again, with the same sampler settings whatever the rollouts used
   (the demo option ``eval_sampling``, :func:`diffalign.demo.run.evaluation_sampling`), and write ``report.json`` / ``report.md`` (the image demo's
   schema with ``modality: editing``), ``reward_curve.png``, ``grid.png`` (input | edit before | edit after),
   every input as ``samples/inputs/NNNN.png``, every edit as ``samples/{before,after}/NNNN.png`` and
   ``samples/prompts.json`` (each edit's instruction, input file, seed and verdict).

An edit item is ``{"text": instruction, "image": input PNG path, "edit": the structured instruction}``. Scores are
computed on the saved 8-bit images, so re-scoring the PNGs reproduces the report.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

DEFAULT_EDITING_ALGO = "rwr"
CONFIG_PREFIX = "editing_"  # demo_editing_<algo>.yaml among the demo configs
# evaluation edits per kind: 4 x 24 = 96 edits, each held-out instruction 2-3 times; an edit costs ~3 model calls
# per step (dual guidance), so both evaluations stay within a few minutes of the demo's 20 on 2 CPU cores
SAMPLES_PER_KIND = 24
QUICK_SAMPLES_PER_KIND = 2
TRAIN_ITEMS_PER_KIND = 64  # training edit items (instruction + input scene) of each kind
# the kinds alignment trains on: those the shipped editor gets partly right on training edits, whose errors are
# near misses of the instruction (its caption noise, scripts/train_editing_demo_model.py --noise-prob). Moves it
# almost never gets right on either split, and on held-out adds it draws the wrong object, so their rollouts
# carried no signal toward accuracy and spent the budget ("add" rollouts taught it to draw nothing extra instead)
TRAIN_KINDS: Tuple[str, ...] = ("recolour", "remove")
TRAIN_SEED = 1             # the training items' scenes (the evaluation's are drawn from seed 0 of the held-out split)
# the evaluation sampler: the image demo's (diffalign.demo.run.EVAL_DEFAULTS: 10 DDIM steps, eta 1, text scale 3) plus
# InstructPix2Pix's default image scale 1.5. A run evaluates with its config's sampling and demo option eval_sampling
# (demo_editing_rwr.yaml: rollouts of 5 steps for more edit items per minute, both evaluations at these 10)
EDIT_EVAL_DEFAULTS = {"num_steps": 10, "eta": 1.0, "guidance_scale": 3.0, "image_guidance_scale": 1.5, "batch_size": 32}
GRID_EDITS = 8             # grid columns: the first edit of this many distinct instructions, kinds alternating


def editing_algos() -> List[str]:
    """Algorithms with a shipped editing demo config (diffalign/configs/demo_editing_<algo>.yaml)."""
    from diffalign.demo.run import available_algos
    return [a[len(CONFIG_PREFIX):] for a in available_algos("editing")]


def write_edit_items(folder: str, examples) -> List[Dict[str, Any]]:
    """Save each example's input picture as ``folder/NNNN.png`` and return its edit items."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    items = []
    for i, ex in enumerate(examples):
        path = os.path.join(folder, f"{i:04d}.png")
        Image.fromarray(ex.images()[0]).save(path)
        items.append({"text": ex.instruction, "image": os.path.abspath(path), "edit": ex.edit.as_dict()})
    return items


def editing_eval_set(output: str, samples_per_kind: int = SAMPLES_PER_KIND) -> Tuple[List[dict], List[int]]:
    """(items, seeds): ``samples_per_kind`` held-out edits of each kind, inputs written to ``output/samples/inputs``,
    seeds SEED_BASE + index."""
    from diffalign.data.shapes_edits import edits
    from diffalign.demo.run import SEED_BASE
    items = write_edit_items(os.path.join(output, "samples", "inputs"), edits("heldout", samples_per_kind, seed=0))
    return items, [SEED_BASE + i for i in range(len(items))]


def training_items(output: str, per_kind: int = TRAIN_ITEMS_PER_KIND,
                   kinds: Sequence[str] = TRAIN_KINDS) -> List[dict]:
    """Training edit items of ``kinds`` (training instructions on training scenes), inputs written to
    ``output/train_inputs``."""
    from diffalign.data.shapes_edits import EDIT_KINDS, edits
    bad = [k for k in kinds if k not in EDIT_KINDS]
    if bad or not kinds:
        raise ValueError(f"editing demo training kinds must be a non-empty subset of {list(EDIT_KINDS)}, got {list(kinds)}")
    examples = [ex for ex in edits("train", per_kind, seed=TRAIN_SEED) if ex.edit.kind in kinds]
    return write_edit_items(os.path.join(output, "train_inputs"), examples)


def base_editing_sampler(sampling: Optional[Dict[str, Any]] = None):
    """The shipped editor's sampler ``(items, seeds) -> edits (B, 3, H, W)`` with the evaluation settings (dual
    guidance: text scale ``guidance_scale``, image scale ``image_guidance_scale``)."""
    from diffalign.demo.run import policy_sampler
    from diffalign.mdp.steps import make_step_rule
    from diffalign.mdp.trajectory import DiffusionPolicy
    from diffalign.modalities.editing.adapter import EditingAdapter
    from diffalign.modalities.editing.options import EditingOptions
    s = dict(EDIT_EVAL_DEFAULTS, **(sampling or {}))
    options = EditingOptions(model="demo", lora_rank=0, image_guidance_scale=s["image_guidance_scale"])
    adapter = EditingAdapter.from_options(options, device="cpu")
    rule = make_step_rule("ddim", adapter.scheduler, s["num_steps"], eta=s["eta"])
    return policy_sampler(DiffusionPolicy(adapter, rule, s["guidance_scale"]), s["batch_size"], desc="edit base")


def score_edit_samples(images: torch.Tensor, items: Sequence[dict]) -> Tuple[dict, List[bool], List[float]]:
    """uint8 (B, H, W, 3) edits -> (edit accuracies, whether each edit is correct, each edit's reward)."""
    from diffalign.rewards.edit_compositional import edit_accuracies, score_items
    results = score_items(images.float().permute(0, 3, 1, 2) / 255, list(items))
    return edit_accuracies(results), [r.correct for r in results], [r.reward for r in results]


def evaluate_edits(sampler, items: Sequence[dict], seeds: Sequence[int]):
    """Edit and score: (uint8 edits (B, H, W, 3), accuracies, per-edit correct, per-edit reward)."""
    from diffalign.demo.run import to_uint8
    images = to_uint8(sampler(list(items), seeds))
    acc, correct, rewards = score_edit_samples(images, items)
    return images, acc, correct, rewards


def paired_editing_report(items: Sequence[dict], before: Sequence[bool], after: Sequence[bool]) -> Dict[str, Any]:
    """:func:`diffalign.eval.paired.paired_change` over every edit and per edit kind (same items and seeds)."""
    from diffalign.data.shapes_edits import EDIT_KINDS
    from diffalign.eval.paired import paired_change
    out: Dict[str, Any] = {"all": paired_change(before, after)}
    for kind in EDIT_KINDS:
        idx = [i for i, it in enumerate(items) if it["edit"]["kind"] == kind]
        if idx:
            out[kind] = paired_change([before[i] for i in idx], [after[i] for i in idx])
    return out


def editing_markdown(report: dict) -> str:
    """report.md of an editing demo run."""
    from diffalign.demo.report import modality_markdown
    return modality_markdown(
        report, "edit", "edits", "held-out instructions on held-out input scenes (the instruction holds, the rest is "
        "preserved, nothing extra)",
        "The four kinds (recolour, move, add, remove) have the same number of edits, so accuracy is the mean of the "
        "kinds'.", "![input | before | after](grid.png)",
        "Every input is in `samples/inputs`, every edit in `samples/before` and `samples/after`; "
        "`samples/prompts.json` maps each edit to its instruction, input file, seed and verdict.")


def _grid_indices(items: Sequence[dict], n: int) -> List[int]:
    """The first edit of each of up to ``n`` distinct instructions, alternating the kinds."""
    from diffalign.data.shapes_edits import EDIT_KINDS
    firsts: Dict[str, List[int]] = {k: [] for k in EDIT_KINDS}
    seen = set()
    for i, it in enumerate(items):
        if it["text"] not in seen:
            seen.add(it["text"])
            firsts[it["edit"]["kind"]].append(i)
    out: List[int] = []
    for j in range(max((len(v) for v in firsts.values()), default=0)):
        out += [firsts[k][j] for k in EDIT_KINDS if j < len(firsts[k])]
    return out[:n]


def save_edit_grid(path: str, items: Sequence[dict], inputs: torch.Tensor, before: torch.Tensor,
                   after: torch.Tensor, correct: Dict[str, Sequence[bool]], title: str) -> None:
    """Rows input | edit before | edit after (uint8 (B, H, W, 3) each), one column per instruction, verdicts below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffalign.demo.report import _wrap
    idx = _grid_indices(items, GRID_EDITS)
    fig, axes = plt.subplots(3, len(idx), figsize=(1.6 * len(idx), 5.6), squeeze=False)
    rows = (("input", inputs, None), ("before", before, correct["before"]), ("after", after, correct["after"]))
    for col, i in enumerate(idx):
        for row, (name, images, ok) in enumerate(rows):
            ax = axes[row][col]
            ax.imshow(images[i].numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if ok is not None:
                ax.set_xlabel("correct" if ok[i] else "wrong", fontsize=7)
            if row == 0:
                ax.set_title(_wrap(items[i]["text"]), fontsize=7)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_editing_outputs(output: str, report: dict, items: Sequence[dict], seeds: Sequence[int],
                          images: Dict[str, torch.Tensor], correct: Dict[str, Sequence[bool]],
                          rewards: Dict[str, Sequence[float]]) -> None:
    """Everything the editing demo writes, from the measured report, the uint8 edits and per-edit verdicts."""
    from PIL import Image

    from diffalign.demo.report import _pct, save_curve, save_samples
    index = save_samples(output, [it["text"] for it in items], seeds, images["before"], images["after"], correct)
    inputs_dir = os.path.join(output, "samples", "inputs")
    for name, entry in index.items():  # the image demo's index plus the input each edit was made from
        i = int(os.path.splitext(os.path.basename(name))[0])
        entry["input"] = os.path.relpath(items[i]["image"], os.path.join(output, "samples"))
        entry["edit"] = items[i]["edit"]
    with open(os.path.join(output, "samples", "prompts.json"), "w") as f:
        json.dump(index, f, indent=1)
    inputs = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(inputs_dir, f"{i:04d}.png")).convert("RGB")))
                          for i in range(len(items))])
    acc_b, acc_a = report["before"]["accuracy"], report["after"]["accuracy"]
    save_edit_grid(os.path.join(output, "grid.png"), items, inputs, images["before"], images["after"], correct,
                   f"editing, algo {report['algo']}: held-out edit accuracy {_pct(acc_b)} -> {_pct(acc_a)}")
    save_curve(os.path.join(output, "reward_curve.png"), report["curve"], float(np.mean(rewards["before"])),
               float(np.mean(rewards["after"])), f"editing, algo {report['algo']}: shapes_edit reward")
    report["files"] = {"grid": "grid.png", "reward_curve": "reward_curve.png", "samples": "samples",
                       "inputs": "samples/inputs", "prompts": "samples/prompts.json", "markdown": "report.md"}
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(editing_markdown(report))


def run_editing_demo(output: str, algo: str = DEFAULT_EDITING_ALGO, quick: bool = False, minutes: float = 10.0,
                     samples_per_kind: int = SAMPLES_PER_KIND, seed: int = 0,
                     overrides: Optional[Dict[str, Any]] = None) -> dict:
    """Before -> align with ``demo_editing_<algo>.yaml`` -> after -> report in ``output``; returns the report."""
    from diffalign.demo.run import DemoContext, demo_precision, evaluation_config, measure_alignment, train_stage
    from diffalign.trainer.precision import cpu_info, log_choice, resolve_precision
    if algo not in editing_algos():
        raise ValueError(f"unknown editing demo algorithm {algo!r}; choose one of {editing_algos()}")
    overrides = dict(overrides or {})
    config_name = CONFIG_PREFIX + algo
    t_total = time.perf_counter()
    choice = resolve_precision(demo_precision(config_name, overrides), "cpu")
    log_choice(choice)
    if quick:
        samples_per_kind = QUICK_SAMPLES_PER_KIND
    os.makedirs(output, exist_ok=True)
    items, seeds = editing_eval_set(output, samples_per_kind)
    train_items = training_items(output, 2 if quick else TRAIN_ITEMS_PER_KIND)
    # both evaluations sample as the config's eval_sampling says (the aligned editor too: train_stage), whatever
    # step count the rollouts take
    cfg, s = evaluation_config(config_name, output, train_items, overrides, quick)
    sampling = {"num_steps": s.num_steps, "eta": s.eta, "guidance_scale": s.guidance_scale,
                "image_guidance_scale": cfg.modality.options.get("image_guidance_scale",
                                                                 EDIT_EVAL_DEFAULTS["image_guidance_scale"]),
                "batch_size": 8 if quick else s.batch_size}
    stage = train_stage(config_name, overrides)
    ctx = DemoContext(model="demo", reward=None, train_prompts=train_items, output=output, minutes=minutes,
                      quick=quick, seed=seed)
    (before_images, before, before_ok, before_r), result, (after_images, after, after_ok, after_r), seconds = \
        measure_alignment(lambda sampler: evaluate_edits(sampler, items, seeds), base_editing_sampler(sampling),
                          stage, ctx, choice.precision)
    seconds["total"] = time.perf_counter() - t_total

    from diffalign.modalities.editing.demo_model import EDITING_DEMO_MODEL_DIR
    report = {
        "modality": "editing",
        "algo": algo,
        "model": EDITING_DEMO_MODEL_DIR,
        "before": before,
        "after": after,
        "delta": {k: after[k] - before[k] for k in before if k in after and k != "n"},
        "paired": paired_editing_report(items, before_ok, after_ok),
        "seconds": seconds,
        "curve": result.curve,
        "info": dict(result.info, train_items=len(train_items), train_kinds=list(TRAIN_KINDS)),
        "eval": {"prompts": len({it["text"] for it in items}), "samples": len(items),
                 "samples_per_kind": samples_per_kind, "seeds": [seeds[0], seeds[-1]],
                 "sampling": sampling, "split": "heldout"},
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "hardware": cpu_info(),
        "precision": {"requested": choice.requested, "chosen": choice.precision, "reason": choice.reason,
                      "bf16_speedup_probe": choice.probe_speedup},
    }
    write_editing_outputs(output, report, items, seeds, {"before": before_images, "after": after_images},
                          {"before": before_ok, "after": after_ok}, {"before": before_r, "after": after_r})
    return report
