"""One entry point for every method: ``run_method(policy, name, prompts, seeds, reward, budget)``.

The CLI (``diffalign sample``) and the demo (``diffalign demo --method``) call this, so a method's
budget means the same everywhere:

| method        | ``budget`` is                               | default |
| ------------- | ------------------------------------------- | ------- |
| plain         | ignored                                     | -       |
| best_of_n     | candidates per prompt (N)                   | 4       |
| rejection     | most candidates per prompt                  | 8       |
| noise_opt     | gradient steps on x_T                       | 10      |
| prompt_opt    | prompt candidates scored (original included) | 8      |
| attend_excite | most refinement iterations per refinement step | 5    |

Every method returns the samples for (prompt, seed) pairs given (one each) and the model evaluations it
spent (denoiser rows; plain sampling of the same pairs costs ``plain_evaluations(policy, n)``).
Prompt optimisation searches with its own seeds (derived from each seed, never the evaluation seed)
and then samples the best rewrite at the given seed, so its result is not selected on the seed it is
judged at.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import torch

from diffalign.inference.sampler import EvalCounter, sample_images
from diffalign.mdp import DiffusionPolicy

__all__ = ["METHODS", "DEFAULT_BUDGETS", "MethodOutput", "run_method", "plain_evaluations", "default_subjects"]

METHODS = ("plain", "best_of_n", "rejection", "noise_opt", "prompt_opt", "attend_excite")
DEFAULT_BUDGETS = {"plain": 0, "best_of_n": 4, "rejection": 8, "noise_opt": 10, "prompt_opt": 8, "attend_excite": 5}


@dataclasses.dataclass
class MethodOutput:
    decoded: Any                      # what rewards see, one per (prompt, seed), CPU
    x0: torch.Tensor                  # (B, ...) final states
    prompts: List[str]
    seeds: List[int]
    evaluations: int                  # model evaluations spent (denoiser rows)
    info: List[Dict[str, Any]]        # per sample: what the method chose (seed, prompt, rewards, losses)


def plain_evaluations(policy: DiffusionPolicy, n: int, item: Any = None) -> int:
    """Model evaluations of plain sampling of n samples: steps x rows x n, rows = 1 without guidance, else the
    adapter's guidance branches for ``item`` (2 for classifier-free guidance, 3 for InstructPix2Pix's dual
    guidance); 2 when no item is given."""
    rows = 1 if policy.guidance_scale == 1.0 else 2
    if rows > 1 and item is not None:
        from diffalign.inference.sampler import encode_items
        rows = len(policy.adapter.guidance_branches(encode_items(policy.adapter, [item], [0])))
    return policy.rule.num_steps * rows * int(n)


def default_subjects(prompt: str) -> List[str]:
    """Attend-and-Excite subjects when none are given: the prompt's content words."""
    from diffalign.inference.prompt_opt import _content_words
    words = _content_words(prompt)
    if not words:
        raise ValueError(f"attend_excite: prompt {prompt!r} has no content word to excite; pass subjects")
    return words


def run_method(policy: DiffusionPolicy, method: str, prompts: Sequence[str], seeds: Sequence[int], reward_fn=None,
               budget: Optional[int] = None, *, threshold: Optional[float] = None, grad_reward=None,
               subjects: Optional[Sequence[Sequence[str]]] = None, lm_path: Optional[str] = None,
               samples_per_candidate: int = 2, batch_size: int = 16, options: Optional[Dict[str, Any]] = None,
               progress: bool = True) -> MethodOutput:
    """Run ``method`` on (prompt, seed) pairs. ``reward_fn`` ranks samples (best_of_n, rejection,
    prompt_opt); ``grad_reward`` (default ``reward_fn``) is the differentiable reward noise_opt climbs;
    ``options`` are extra fields of the method's config dataclass."""
    prompts, seeds = [p if isinstance(p, dict) else str(p) for p in prompts], [int(s) for s in seeds]  # items stay mappings
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    budget = DEFAULT_BUDGETS[method] if budget is None else int(budget)
    if method != "plain" and budget < 1:
        raise ValueError(f"--budget for {method} must be >= 1, got {budget}")
    options = dict(options or {})
    if method in ("best_of_n", "rejection", "prompt_opt") and reward_fn is None:
        raise ValueError(f"method {method} needs a reward to rank samples")

    if method == "plain":
        b = sample_images(policy, prompts, seeds, batch_size=batch_size)
        return MethodOutput(b.decoded, b.x0, prompts, seeds, b.evaluations, [{} for _ in prompts])

    if method in ("best_of_n", "rejection"):
        from diffalign.inference.best_of_n import best_of_n, rejection_sample
        if method == "best_of_n":
            r = best_of_n(policy, prompts, seeds, reward_fn, budget, batch_size=batch_size, progress=progress)
        else:
            if threshold is None:
                raise ValueError("method rejection needs a reward threshold (--threshold)")
            r = rejection_sample(policy, prompts, seeds, reward_fn, threshold, budget, batch_size=batch_size,
                                 progress=progress)
        info = [{"chosen_seed": r.seeds[i], "reward": float(r.rewards[i]), "plain_reward": float(r.plain_rewards[i]),
                 "candidates": int(r.candidates[i])} | ({"accepted": bool(r.accepted[i])} if r.accepted is not None
                                                       else {}) for i in range(len(prompts))]
        return MethodOutput(r.decoded, r.x0, prompts, seeds, r.evaluations, info)

    if method == "noise_opt":
        from diffalign.inference.noise_opt import NoiseOptConfig, optimize_noise
        fn = grad_reward if grad_reward is not None else reward_fn
        if fn is None:
            raise ValueError("method noise_opt needs a differentiable reward")
        if getattr(fn, "differentiable", None) is False:
            raise ValueError("method noise_opt needs a reward differentiable in the samples; this one declares "
                             "differentiable=False (use a differentiable surrogate, e.g. shapes_surrogate)")
        cfg = NoiseOptConfig(**{"iterations": budget, "batch_size": batch_size, **options})
        r = optimize_noise(policy, prompts, seeds, fn, cfg, progress=progress)
        info = [{"objective_reward": float(r.rewards[i]), "objective_plain_reward": float(r.plain_rewards[i]),
                 "shell_ratio": float(r.shell_ratio[i]), "regularizer": float(r.regularizer[i])}
                for i in range(len(prompts))]
        return MethodOutput(r.decoded, r.x0, prompts, seeds, r.evaluations, info)

    if method == "prompt_opt":
        from diffalign.inference.best_of_n import candidate_seed
        from diffalign.inference.prompt_opt import PromptOptConfig, optimize_prompt
        cfg = PromptOptConfig(**{"max_candidates": budget, "samples_per_prompt": samples_per_candidate,
                                 "batch_size": batch_size, "lm_path": lm_path, **options})
        rewriter = None
        if cfg.lm_path:
            from diffalign.inference.prompt_opt import LMRewriter
            rewriter = LMRewriter(cfg.lm_path, num_candidates=cfg.lm_candidates)
        counter = EvalCounter()
        best: Dict[str, Any] = {}
        for p in dict.fromkeys(prompts):  # each distinct prompt searched once, with seeds of its first sample
            first = seeds[prompts.index(p)]
            search = [candidate_seed(first, 1000 + k) for k in range(cfg.samples_per_prompt)]
            best[p] = optimize_prompt(policy, p, reward_fn, search, cfg, rewriter=rewriter, progress=progress)
            counter.evaluations += best[p].evaluations
        final = sample_images(policy, [best[p].best_prompt for p in prompts], seeds, batch_size=batch_size,
                              counter=counter)
        info = [{"best_prompt": best[p].best_prompt, "search_score": best[p].best_score,
                 "search_original_score": best[p].original_score} for p in prompts]
        return MethodOutput(final.decoded, final.x0, prompts, seeds, counter.evaluations, info)

    from diffalign.inference.attend_excite import AttendExciteConfig, attend_and_excite
    subj = [list(s) for s in subjects] if subjects is not None else [default_subjects(p) for p in prompts]
    cfg = AttendExciteConfig(**{"max_refinement_steps": budget, "batch_size": batch_size, **options})
    r = attend_and_excite(policy, prompts, subj, seeds, cfg, progress=progress)
    info = [{"subjects": r.subjects[i], "loss_first_step": float(r.losses[0, i]) if r.losses.numel() else None,
             "loss_after_updates": float(r.final_losses[i])} for i in range(len(prompts))]
    return MethodOutput(r.decoded, r.x0, prompts, seeds, r.evaluations, info)

