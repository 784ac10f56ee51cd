"""Reward-conditioned fine-tuning (HIVE's second way; Zhang et al. 2023, "HIVE: Harnessing Human Feedback
for Instructional Visual Editing"): the reward of each training sample, quantised into N levels, is
written into its condition, and sampling asks for the top level.

HIVE appends the level to the instruction text: its released sampler (``edit_cli_rw_label.py``) edits
with ``instruction + ", image quality is five out of five"``. The default template and number words
here reproduce that form: ``"{text}, image quality is {level} out of {levels}"`` with ``words: true``.
A short text encoder (the tiny image model reads 14 characters) needs the level first, e.g.
``template: "{level}/{levels} {text}"``.

Quantisation (HIVE does not publish its thresholds): ``range: [lo, hi]`` cuts [lo, hi] into N equal
bins (rewards outside fall into the end bins); without a range each rollout batch is cut at its own
quantiles, level = 1 + floor(N * rank / B) with rank 0 for the lowest reward (ties broken by order),
so every level is used whatever the reward's scale.

In the online loop (``algorithm.reward_condition`` of RWR, trainer/online.py) the rollouts sample the
plain prompts, as HIVE collects the editor's own edits of the plain instructions; after scoring, each
sample's condition is re-encoded at its level (:func:`level_items`) for the loss. Sampling afterwards
asks for the top level (:func:`top_items`).

The option rewrites prompt items only (:func:`condition_item`: a text, or a mapping's "text" /
"prompt" entry), so it is modality-generic: an edit item keeps its input image.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence, Union

import torch

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
HIVE_TEMPLATE = "{text}, image quality is {level} out of {levels}"


@dataclasses.dataclass
class RewardConditionConfig:
    levels: int = 5                       # N, HIVE's five
    template: str = HIVE_TEMPLATE         # {text}, {level} and {levels} are filled in
    # levels as English words ("five out of five"), as HIVE writes them; false: digits; or a list of N words
    # naming levels 1..N (a word-level tokenizer with a small vocabulary: the editing demo's)
    words: Union[bool, List[str]] = True
    range: Optional[List[float]] = None   # [lo, hi]: fixed equal bins; None: quantiles of each rollout batch

    def __post_init__(self):
        if int(self.levels) < 2:
            raise ValueError(f"algorithm.reward_condition.levels must be >= 2, got {self.levels}")
        if isinstance(self.words, (list, tuple)):
            if len(self.words) != int(self.levels) or not all(isinstance(w, str) and w.strip() for w in self.words):
                raise ValueError(f"algorithm.reward_condition.words: a list names each of the {self.levels} levels, "
                                 f"got {self.words!r}")
        elif self.words and int(self.levels) >= len(NUMBER_WORDS):
            raise ValueError(f"algorithm.reward_condition.words: levels up to {len(NUMBER_WORDS) - 1} have words, "
                             f"got levels {self.levels}; set words: false")
        if "{text}" not in self.template or "{level}" not in self.template:
            raise ValueError(f"algorithm.reward_condition.template must contain {{text}} and {{level}}, "
                             f"got {self.template!r}")
        try:
            self.template.format(text="t", level="1", levels="2")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"algorithm.reward_condition.template {self.template!r}: {exc!r}; only {{text}}, "
                             "{level} and {levels} can be filled in") from None
        if self.range is not None and (len(self.range) != 2 or not self.range[0] < self.range[1]):
            raise ValueError(f"algorithm.reward_condition.range must be [lo, hi] with lo < hi, got {self.range}")


def quantize(rewards: torch.Tensor, config: RewardConditionConfig) -> torch.Tensor:
    """(B,) long levels in 1..N of a batch's rewards (module docstring)."""
    n = int(config.levels)
    r = rewards.detach().double().reshape(-1).cpu()
    if config.range is not None:
        lo, hi = float(config.range[0]), float(config.range[1])
        return (torch.floor((r - lo) / (hi - lo) * n).clamp(0, n - 1) + 1).long()
    rank = torch.empty(r.shape[0], dtype=torch.long)
    rank[torch.argsort(r, stable=True)] = torch.arange(r.shape[0])
    return (rank * n // r.shape[0] + 1).long()


def _number(k: int, config: RewardConditionConfig) -> str:
    if isinstance(config.words, (list, tuple)):
        return config.words[k - 1]
    return NUMBER_WORDS[k] if config.words else str(k)


def condition_text(text: str, level: int, config: RewardConditionConfig) -> str:
    if not 1 <= int(level) <= int(config.levels):
        raise ValueError(f"reward level {level} is outside 1..{config.levels}")
    return config.template.format(text=text, level=_number(int(level), config),
                                  levels=_number(int(config.levels), config))


def condition_item(item: Any, level: int, config: RewardConditionConfig) -> Any:
    """The prompt item with its text conditioned on ``level``: a text, or a copy of a mapping with its
    "text" (else "prompt") entry rewritten; a mapping with neither is an error naming the item."""
    if isinstance(item, str):
        return condition_text(item, level, config)
    if isinstance(item, dict):
        for key in ("text", "prompt"):
            if isinstance(item.get(key), str):
                return {**item, key: condition_text(item[key], level, config)}
    raise ValueError(f"algorithm.reward_condition: prompt item {item!r} has no text to condition (a text, or a "
                     "mapping with a 'text' entry)")


def top_items(items: Sequence[Any], config: RewardConditionConfig) -> List[Any]:
    """What sampling asks for: every item at the top level N."""
    return [condition_item(it, int(config.levels), config) for it in items]


def sampling_items(algorithm_config: Any, items: Sequence[Any]) -> List[Any]:
    """The items a model trained with ``algorithm_config`` is sampled with: the top level when it was trained
    reward-conditioned (its ``reward_condition``), else the items themselves."""
    config = getattr(algorithm_config, "reward_condition", None)
    return list(items) if config is None else top_items(items, config)


def level_items(items: Sequence[Any], rewards: torch.Tensor, config: RewardConditionConfig) -> List[Any]:
    """What training conditions on: each item at the level of its sample's reward (quantised over the batch)."""
    if len(items) != rewards.numel():
        raise ValueError(f"reward_condition: {len(items)} prompt items but {rewards.numel()} rewards")
    return [condition_item(it, int(k), config) for it, k in zip(items, quantize(rewards, config).tolist())]
