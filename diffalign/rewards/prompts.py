"""Prompts from a list or a text file (one prompt per line; blank lines and '#' comments skipped)."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence


def load_prompts(prompts: Optional[Sequence[str]] = None, file: Optional[str] = None) -> List[str]:
    if (prompts is None) == (file is None):
        raise ValueError("prompts: give exactly one of prompts.list and prompts.file")
    if file is not None:
        if not os.path.isfile(file):
            raise ValueError(f"prompts.file {file!r} does not exist")
        with open(file, encoding="utf-8") as f:
            out = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        if not out:
            raise ValueError(f"prompts.file {file!r} holds no prompt")
        return out
    out = [str(p) for p in prompts]
    if not out:
        raise ValueError("prompts.list is empty")
    return out
