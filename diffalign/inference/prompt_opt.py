"""Prompt optimisation: search over rewrites of the user's prompt, scored by the reward on samples.

The survey (4.3, "Prompt Optimization") reviews methods that turn a user's prompt into a
"model-preferred" one (Promptist, OPT2I, ...). Here the search is explicit and budgeted: candidate
rewrites come from templates, attribute-emphasis edits (repeating or fronting a content word, the
plain-text analogue of prompt weighting) and, optionally, a local causal language model from
transformers loaded from a path (OPT2I uses an LLM as the rewriter). Each candidate generates
``samples_per_prompt`` samples at the SAME seeds, and the reward judges them against the ORIGINAL
prompt (the user's intent: a rewrite that drops a constraint must not be rewarded for satisfying an
easier one). The original prompt is always candidate 0, so the best score is never below plain
sampling's at those seeds. Compute: candidates x samples x (steps x rows per step) evaluations.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from diffalign.inference.sampler import EvalCounter, sample_images
from diffalign.mdp import DiffusionPolicy

__all__ = ["PromptOptConfig", "PromptOptResult", "rewrite_candidates", "LMRewriter", "optimize_prompt",
           "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = ("{prompt} {prompt}", "{prompt}, {prompt}", "{prompt}.", "an image of {prompt}",
                     "{prompt}, clear, simple")
# words that carry no attribute of their own: never emphasised
_FUNCTION_WORDS = frozenset("a an the of and with in on at to two three four five one left right above below "
                            "is are".split())


def _content_words(prompt: str) -> List[str]:
    seen, out = set(), []
    for w in re.findall(r"[A-Za-z][A-Za-z'-]*", prompt):
        if w.lower() not in _FUNCTION_WORDS and w.lower() not in seen:
            seen.add(w.lower())
            out.append(w)
    return out


def rewrite_candidates(prompt: str, templates: Sequence[str] = DEFAULT_TEMPLATES, emphasis: bool = True,
                       max_repeat: int = 2) -> List[str]:
    """Deterministic rewrites of ``prompt`` (the prompt itself first, no duplicates).

    Templates are format strings with ``{prompt}``. Emphasis edits, per content word w: repeat it in
    place ("a red red circle"), and front it ("red a red circle"). For models with a closed
    vocabulary, :func:`optimize_prompt` skips candidates with words the tokenizer does not know.
    """
    out = [prompt]
    for t in templates:
        if "{prompt}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{prompt}}' placeholder")
        out.append(t.format(prompt=prompt))
    if emphasis:
        for w in _content_words(prompt):
            pattern = re.compile(rf"\b{re.escape(w)}\b")
            for k in range(2, max_repeat + 1):
                out.append(pattern.sub(" ".join([w] * k), prompt, count=1))
            out.append(f"{w} {prompt}")
    seen, unique = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


class LMRewriter:
    """Rewrites from a local causal LM (transformers ``AutoModelForCausalLM`` + its tokenizer, loaded
    from ``path``; nothing is downloaded when ``path`` is a folder). The LM continues
    ``instruction.format(prompt=...)``; each sampled continuation's first line is a candidate."""

    def __init__(self, path: str, num_candidates: int = 4, max_new_tokens: int = 24, temperature: float = 1.0,
                 instruction: str = "Rewrite the image prompt to be more precise.\nPrompt: {prompt}\nRewrite:",
                 seed: int = 0, device: str = "cpu"):
        import os

        from transformers import AutoModelForCausalLM, AutoTokenizer
        if not os.path.isdir(path):
            raise ValueError(f"prompt_opt lm_path {path!r} is not a folder holding a causal LM and its tokenizer "
                             "(save one with model.save_pretrained(path) and tokenizer.save_pretrained(path))")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        self.num_candidates, self.max_new_tokens = int(num_candidates), int(max_new_tokens)
        self.temperature, self.instruction, self.seed, self.device = float(temperature), instruction, int(seed), device

    @torch.no_grad()
    def __call__(self, prompt: str) -> List[str]:
        ids = self.tokenizer(self.instruction.format(prompt=prompt), return_tensors="pt").to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.random.fork_rng(devices=[]):  # seeded sampling without touching the caller's RNG
            torch.manual_seed(self.seed)
            out = self.model.generate(**ids, do_sample=True, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens, num_return_sequences=self.num_candidates,
                                      pad_token_id=pad)
        texts = self.tokenizer.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        lines = [t.strip().split("\n")[0].strip() for t in texts]
        return [t for t in lines if t]


def _encodable(adapter, prompt: str) -> bool:
    """Whether the model can take ``prompt`` as it is: the toy knows a fixed prompt list (encoding
    anything else raises), the demo model's word tokenizer maps unknown words to <unk>."""
    unknown = getattr(getattr(adapter, "tokenizer", None), "unknown_words", None)
    if callable(unknown) and unknown(prompt):
        return False
    try:
        adapter.encode_conditions([prompt])
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class PromptOptConfig:
    samples_per_prompt: int = 4     # samples per candidate (same seeds for every candidate)
    max_candidates: int = 8         # candidates scored, the original included (the budget)
    templates: Sequence[str] = DEFAULT_TEMPLATES
    emphasis: bool = True
    lm_path: Optional[str] = None   # a local causal LM folder: its rewrites are scored first after the original
    lm_candidates: int = 4
    batch_size: int = 16

    def __post_init__(self):
        if self.samples_per_prompt < 1 or self.max_candidates < 1 or self.batch_size < 1:
            raise ValueError(f"prompt_opt needs samples_per_prompt, max_candidates and batch_size >= 1, got "
                             f"{self.samples_per_prompt}, {self.max_candidates}, {self.batch_size}")


@dataclasses.dataclass
class PromptOptResult:
    prompt: str                     # the user's prompt
    best_prompt: str
    best_score: float               # mean reward of best_prompt's samples (judged against ``prompt``)
    original_score: float           # the same for the prompt itself (plain sampling at the same seeds)
    scores: Dict[str, float]        # every candidate scored, in order
    seeds: List[int]
    best_decoded: object            # best_prompt's samples
    evaluations: int


def optimize_prompt(policy: DiffusionPolicy, prompt: str, reward_fn, seeds: Sequence[int],
                    config: PromptOptConfig = PromptOptConfig(), rewriter=None,
                    progress: bool = True) -> PromptOptResult:
    """Score rewrites of ``prompt`` and return the best (ties keep the earlier candidate)."""
    from diffalign.rewards import call_reward
    seeds = [int(s) for s in seeds][:config.samples_per_prompt]
    if len(seeds) < config.samples_per_prompt:
        raise ValueError(f"prompt_opt needs {config.samples_per_prompt} seeds (samples_per_prompt), got {len(seeds)}")
    if rewriter is None and config.lm_path:
        rewriter = LMRewriter(config.lm_path, num_candidates=config.lm_candidates)
    candidates = [prompt] + (list(rewriter(prompt)) if rewriter is not None else [])
    candidates += rewrite_candidates(prompt, config.templates, config.emphasis)
    unique: List[str] = []
    for c in candidates:  # the original first, then what the model can take as it is, up to the budget
        if c not in unique and (c == prompt or _encodable(policy.adapter, c)):
            unique.append(c)
    candidates = unique[:config.max_candidates]
    counter = EvalCounter()
    scores: Dict[str, float] = {}
    best, best_decoded = None, None
    for cand in tqdm(candidates, desc="prompt optimisation", disable=not progress, leave=False):
        batch = sample_images(policy, [cand] * len(seeds), seeds, batch_size=config.batch_size, counter=counter)
        r = call_reward(reward_fn, batch.decoded, [prompt] * len(seeds), torch.device("cpu"))
        scores[cand] = float(r.mean())
        if best is None or scores[cand] > scores[best]:
            best, best_decoded = cand, batch.decoded
    return PromptOptResult(prompt, best, scores[best], scores[prompt], scores, seeds, best_decoded, counter.evaluations)
