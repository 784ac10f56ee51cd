"""Prompt items: what a sample is conditioned on, from a list or a file.

An item is a text (``"a red circle"``) or a mapping: a text plus whatever else the modality reads
(``{"text": "make it blue", "image": "inputs/cat.png"}`` for an edit, ``{"pocket": "1abc", "num_atoms":
20}`` for a molecule). Adapters encode items (``encode_conditions``), rewards receive them beside the
decoded samples, and algorithms group samples by :func:`prompt_key` (GRPO groups, DDPO's per-prompt
statistics), a stable text for any item.

Files: ``.jsonl`` holds one JSON value per line (a string or an object); any other file holds one text
per line. Blank lines and lines starting with ``#`` are skipped in both.

Paths in items: a modality names the item keys that hold file paths (its registry entry's ``item_paths``, e.g. a
molecule's ``pocket``). Relative paths there resolve against the folder of the file the item was written in: the
prompts file's folder for ``prompts.file``, the config file's folder for a config's ``prompts.list``
(diffalign.config); items given on the command line stay relative to the working directory.
``package:MODULE/PATH`` names a file shipped inside an installed package (the bundled pockets), wherever it is.
"""
from __future__ import annotations

import json
import os
from typing import Any, List, Mapping, Optional, Sequence, Union

PromptItem = Union[str, Mapping[str, Any]]

__all__ = ["PromptItem", "load_prompts", "prompt_key", "prompt_text", "check_item", "resolve_item_path",
           "resolve_item_paths", "PACKAGE_PREFIX"]

PACKAGE_PREFIX = "package:"


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


def group_key(item: PromptItem) -> str:
    """The key that groups samples for group-relative advantages and per-prompt statistics: an item's ``"group"``
    entry when it has one (items that share it form one group, e.g. one start state asked for different
    behaviours), else :func:`prompt_key` (the samples of one item)."""
    if isinstance(item, Mapping) and "group" in item:
        return "group:" + json.dumps(item["group"], sort_keys=True, separators=(",", ":"))
    return prompt_key(item)


def prompt_text(item: PromptItem, default: str = "") -> str:
    """The text of an item: the item itself, or its ``"text"`` (``"prompt"``) entry, else ``default``."""
    if isinstance(item, str):
        return item
    for key in ("text", "prompt"):
        if isinstance(item.get(key), str):
            return item[key]
    return default


def resolve_item_path(value: str, root: Optional[str], where: str) -> str:
    """A path in a prompt item -> the path to open: ``package:MODULE/PATH`` -> PATH inside the installed package
    MODULE; a relative path -> joined to ``root`` (None: left relative to the working directory); an absolute path
    as it is. ValueError naming ``where`` for a package reference that does not resolve."""
    if value.startswith(PACKAGE_PREFIX):
        module, _, rel = value[len(PACKAGE_PREFIX):].partition("/")
        if not module or not rel:
            raise ValueError(f"{where}: {value!r} must read {PACKAGE_PREFIX}MODULE/PATH")
        import importlib.resources
        try:
            base = importlib.resources.files(module)
        except (ModuleNotFoundError, TypeError) as exc:
            raise ValueError(f"{where}: {value!r} names no importable package {module!r} ({exc})") from None
        return str(base.joinpath(rel))
    value = os.path.expanduser(value)
    if root is not None and not os.path.isabs(value):
        return os.path.normpath(os.path.join(root, value))
    return value


def resolve_item_paths(item: PromptItem, keys: Sequence[str], root: Optional[str], where: str) -> PromptItem:
    """``item`` with the string values under ``keys`` resolved by :func:`resolve_item_path` (a text, and values
    that are not strings, such as an inline image given as numbers, are left as they are)."""
    if isinstance(item, str) or not any(isinstance(item.get(k), str) for k in keys):
        return item
    return {k: resolve_item_path(v, root, f"{where}, key {k!r}") if k in keys and isinstance(v, str) else v
            for k, v in item.items()}


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


def load_prompts(prompts: Optional[Sequence[Any]] = None, file: Optional[str] = None,
                 path_keys: Sequence[str] = (), root: Optional[str] = None) -> List[PromptItem]:
    """The prompt items of ``prompts.list`` or ``prompts.file`` (exactly one of them). Values under ``path_keys``
    are resolved (:func:`resolve_item_path`): a file's items against its folder, the list's against ``root``."""
    if (prompts is None) == (file is None):
        raise ValueError("prompts: give exactly one of prompts.list and prompts.file")
    if file is not None:
        if not os.path.isfile(file):
            raise ValueError(f"prompts.file {file!r} does not exist")
        out = _read_file(file)
        if not out:
            raise ValueError(f"prompts.file {file!r} holds no prompt")
        folder = os.path.dirname(os.path.abspath(file))
        return [resolve_item_paths(p, path_keys, folder, f"prompts.file {file!r}, item {i}") for i, p in enumerate(out)]
    # numbers are texts (a YAML list of ids), as before items could be mappings
    out = [str(p) if isinstance(p, (int, float)) else check_item(p, f"prompts.list[{i}]") for i, p in enumerate(prompts)]
    if not out:
        raise ValueError("prompts.list is empty")
    return [resolve_item_paths(p, path_keys, root, f"prompts.list[{i}]") for i, p in enumerate(out)]
