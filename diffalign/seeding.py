"""Per-sample random seeds that do not depend on how work is split across processes or batches.

Used by the trainer, data generation, evaluation and inference alike, so it sits low in the layer order
(docs/design.md, "Layers") and imports nothing from diffalign.
"""
from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator"]


def derive_seed(*parts) -> int:
    """A 63-bit seed from any hashable parts (same on every process and every run)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*parts, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
