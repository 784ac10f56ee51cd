"""Training-free methods as the demo's "after" stage (``diffalign demo --method NAME --budget N``).

The demo (:mod:`diffalign.demo.run`) measures the shipped model on held-out prompts, runs an after
stage that returns a sampler ``(prompts, seeds) -> images``, and measures that sampler at the same
seeds. Here the sampler is the BASE model (same sampling settings as the before measurement) wrapped
by an inference-time method; nothing is trained. The stage's ``info`` records the model evaluations
the method spent on the held-out samples and what plain sampling of them costs, so a method can be
set against a training run at equal compute.

Rewards: best-of-N, rejection sampling and prompt optimisation rank by the demo's compositional
reward itself (so "after" is judged by the reward that selected it, as those methods are used in
practice); noise optimisation climbs the differentiable surrogate
:func:`diffalign.inference.surrogates.shapes_surrogate`, and the compositional accuracy it reaches
is what the report shows. Attend-and-Excite excites each caption's object nouns.

Measured (shipped demo model after its steps_offset fix, 2 shared CPU cores, 2 threads, 2026-11-26;
``diffalign demo --method M --budget B`` with the evaluation of that time, P held-out prompts x S seeds drawn
mostly from the relation captions, before the demo weighed the caption kinds equally (``--samples-per-kind``);
each row's before/after from one run, same seeds; evaluations = model evaluations of the method / of plain sampling):

| method, budget | held-out samples | accuracy before -> after | reward | evaluations |
| --- | --- | --- | --- | --- |
| best_of_n 4 | 31 prompts x 3 | 7.5% -> 21.5% | 0.490 -> 0.684 | 7440 / 1860 |
| rejection 8 (threshold 1) | 16 x 3 | 12.5% -> 35.4% | 0.529 -> 0.792 | 5820 / 960 |
| noise_opt 3 (shapes_surrogate) | 12 x 2 | 8.3% -> 20.8% | 0.469 -> 0.586 | 3360 / 480 |
| prompt_opt 4 | 31 x 3 | 7.5% -> 8.6% | 0.490 -> 0.499 | 6820 / 1860 |
| attend_excite 5 | 31 x 3 | 7.5% -> 8.6% | 0.490 -> 0.473 | 3813 / 1860 |

Ranking by the judging reward (best-of-N, rejection) buys the most per evaluation; noise optimisation
moves position most (0.20 -> 0.60 on its 12 prompts) since its surrogate scores centroids; the rewrites
the demo's closed vocabulary allows (word repeats) and A&E's attention updates barely change accuracy
on this 8x8-cross-attention model (A&E raised count accuracy 9.5% -> 28.6% but lowered position).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import torch

__all__ = ["inference_stage", "demo_subjects", "REJECTION_THRESHOLD"]

# rejection sampling on the demo accepts a sample that satisfies every constraint of its caption
REJECTION_THRESHOLD = 1.0


def demo_subjects(prompt: str) -> List[str]:
    """The object nouns of a shapes caption as written ("two blue squares" -> ["squares"])."""
    from diffalign.data.shapes import parse_caption
    scene = parse_caption(prompt)
    words = prompt.lower().split()
    out = []
    for o in scene.objects:
        noun = o.shape + "s" if o.count > 1 else o.shape
        if noun in words and noun not in out:
            out.append(noun)
    return out


def _policy(model: str, quick: bool):
    from diffalign.demo.run import EVAL_DEFAULTS, QUICK
    from diffalign.mdp import DiffusionPolicy, make_step_rule
    from diffalign.modalities.image import ImageAdapter, ImageOptions
    s = dict(EVAL_DEFAULTS)
    if quick:  # what run_demo's --quick before-measurement samples with
        s.update(num_steps=QUICK["overrides"]["sampling.num_steps"], batch_size=8)
    adapter = ImageAdapter.from_options(ImageOptions(model=model, lora_rank=0), device="cpu")
    rule = make_step_rule("ddim", adapter.scheduler, s["num_steps"], eta=s["eta"])
    return DiffusionPolicy(adapter, rule, s["guidance_scale"]), s["batch_size"]


def inference_stage(method: str, budget: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
    """An after stage (``DemoContext -> AfterResult``) that samples the base model through ``method``."""
    from diffalign.inference.methods import DEFAULT_BUDGETS, METHODS
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    budget = DEFAULT_BUDGETS[method] if budget is None else int(budget)
    if method != "plain" and budget < 1:
        raise ValueError(f"--budget for {method} must be >= 1, got {budget}")

    def stage(ctx):
        from diffalign.demo.run import AfterResult
        from diffalign.inference.methods import plain_evaluations, run_method
        from diffalign.inference.surrogates import shapes_surrogate
        policy, batch_size = _policy(ctx.model, ctx.quick)
        info: Dict[str, Any] = {"method": method, "budget": budget, "model_evaluations": 0,
                                "plain_model_evaluations": 0,
                                "evaluation_unit": "one denoiser forward on one sample (a guided step costs 2)",
                                "grad_reward": "shapes_surrogate" if method == "noise_opt" else None}

        def sample(prompts, seeds) -> torch.Tensor:
            start = time.perf_counter()
            out = run_method(policy, method, list(prompts), list(seeds), ctx.reward, budget,
                             threshold=REJECTION_THRESHOLD, grad_reward=shapes_surrogate,
                             subjects=[demo_subjects(p) for p in prompts], batch_size=batch_size,
                             options=options)
            # the report is written after this sampler ran, so these land in report.json's "info"
            info["model_evaluations"] += out.evaluations
            info["plain_model_evaluations"] += plain_evaluations(policy, len(prompts), prompts[0])
            info["method_seconds"] = info.get("method_seconds", 0.0) + time.perf_counter() - start
            info["per_sample"] = out.info
            return out.decoded.float()

        return AfterResult(sample, [], info)

    return stage
