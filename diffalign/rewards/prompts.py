"""Prompt items: what a sample is conditioned on, from a list or a file.

An item is a text (``"a red circle"``) or a mapping: a text plus whatever else the modality reads
(``{"text": "make it blue", "image": "inputs/cat.png"}`` for an edit, ``{"pocket": "1abc", "num_atoms":
20}`` for a molecule). Adapters encode items (``encode_conditions``), rewards receive them beside the
decoded samples, and algorithms group samples by :func:`prompt_key` (GRPO groups, DDPO's per-prompt
statistics), a stable text for any item.

Files: ``.jsonl`` holds one JSON value per line (a string or an object); any other file holds one text
per line. Blank lines and lines starting with ``#`` are skipped in both.
"""
from __future__ import annotations

import json
import os
from typing import Any, List, Mapping, Optional, Sequence, Union

PromptItem = Union[str, Mapping[str, Any]]

__all__ = ["PromptItem", "load_prompts", "prompt_key", "prompt_text", "check_item"]


def check_item(item: Any, where: str) -> PromptItem:
    """``item`` if it is a text or a JSON-able mapping with string keys, else a ValueError naming ``where``."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        bad = [k for k in item if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{where}: prompt item keys must be strings, got {bad!r}")
        try:
            json.dumps(item, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: a prompt item must hold JSON values (text, numbers, lists, paths): {e}") from None
        return dict(item)
    raise ValueError(f"{where}: a prompt item is a text or a mapping, got {type(item).__name__} {item!r}")


def prompt_key(item: PromptItem) -> str:
    """A stable, hashable key of an item: the text itself, or the mapping as sorted compact JSON (the same
    on every process and across runs, so it can key saved statistics)."""
    if isinstance(item, str):
        return item
    return json.dumps(item, sort_keys=True, separators=(",", ":"))


def prompt_text(item: PromptItem, default: str = "") -> str:
    """The text of an item: the item itself, or its ``"text"`` (``"prompt"``) entry, else ``default``."""
    if isinstance(item, str):
        return item
    for key in ("text", "prompt"):
        if isinstance(item.get(key), str):
            return item[key]
    return default


def _read_file(file: str) -> List[PromptItem]:
    jsonl = file.endswith(".jsonl")
    out: List[PromptItem] = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if not jsonl:
                out.append(text)
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"prompts.file {file!r}, line {n}: not JSON ({e.msg})") from None
            out.append(check_item(value, f"prompts.file {file!r}, line {n}"))
    return out


def load_prompts(prompts: Optional[Sequence[Any]] = None, file: Optional[str] = None) -> List[PromptItem]:
    """The prompt items of ``prompts.list`` or ``prompts.file`` (exactly one of them)."""
    if (prompts is None) == (file is None):
        raise ValueError("prompts: give exactly one of prompts.list and prompts.file")
    if file is not None:
        if not os.path.isfile(file):
            raise ValueError(f"prompts.file {file!r} does not exist")
        out = _read_file(file)
        if not out:
            raise ValueError(f"prompts.file {file!r} holds no prompt")
        return out
    # numbers are texts (a YAML list of ids), as before items could be mappings
    out = [str(p) if isinstance(p, (int, float)) else check_item(p, f"prompts.list[{i}]") for i, p in enumerate(prompts)]
    if not out:
        raise ValueError("prompts.list is empty")
    return out
