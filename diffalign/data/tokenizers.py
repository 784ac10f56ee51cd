"""Tokenizers that need no download: the tiny text encoders of the image modality and the trainable reward
model use :class:`CharTokenizer` (real models use their own CLIP/T5 tokenizers)."""
from __future__ import annotations

from typing import List, Sequence

import torch

__all__ = ["CharTokenizer"]


class CharTokenizer:
    """A character tokenizer for the tiny text encoder (real models use their own CLIP/T5 tokenizers).

    ids: 0 = bos, 1 = pad, 2 = eos (inside the vocab, as tiny CLIP configs require), then bytes + 3.
    """

    bos, pad, eos = 0, 1, 2
    vocab_size = 259

    def __init__(self, max_length: int = 16):
        self.model_max_length = max_length

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        rows: List[List[int]] = []
        for p in prompts:
            ids = [self.bos] + [b + 3 for b in p.encode()[: self.model_max_length - 2]] + [self.eos]
            rows.append(ids + [self.pad] * (self.model_max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)
