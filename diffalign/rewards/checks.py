"""Results of the rule-based demo rewards: each sample is checked against what its caption states.

A :class:`Check` is one stated constraint (``"exactly 2 blue squares"``) with the attribute it belongs to
(colour, shape, count, position, direction, ...), whether it holds, and a graded value in [0, 1] where the
reward grades it (the fraction of frames in which it holds); else the value is 1 or 0. A :class:`CheckedSample`
holds one sample's checks: its reward is their mean value, it is ``correct`` when every check holds (GenEval's
per-image accuracy), and ``attributes`` says per attribute whether all its checks hold. :func:`accuracies`
summarises a batch the same way for every modality's demo (images, clips, edits), so their reports agree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Check", "CheckedSample", "accuracies"]


@dataclass(frozen=True)
class Check:
    attribute: str
    text: str                      # what was checked, e.g. "exactly 2 blue squares"
    ok: bool
    value: Optional[float] = None  # graded value in [0, 1]; None: 1.0 when ok, else 0.0

    @property
    def score(self) -> float:
        return float(self.ok) if self.value is None else float(self.value)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not (k == "value" and v is None)}


@dataclass(frozen=True)
class CheckedSample:
    caption: str
    kind: str                      # the caption's kind (single, count, relation, moving, recolour, ...)
    constraints: Tuple[Check, ...]

    @property
    def reward(self) -> float:
        """The mean value of the checks, in [0, 1]."""
        return float(np.mean([c.score for c in self.constraints]))

    @property
    def correct(self) -> bool:
        return all(c.ok for c in self.constraints)

    @property
    def attributes(self) -> Dict[str, bool]:
        """For each attribute the caption states: do all its checks hold?"""
        out: Dict[str, bool] = {}
        for c in self.constraints:
            out[c.attribute] = out.get(c.attribute, True) and c.ok
        return out

    @property
    def values(self) -> Dict[str, float]:
        """Each attribute's mean check value."""
        groups: Dict[str, list] = {}
        for c in self.constraints:
            groups.setdefault(c.attribute, []).append(c.score)
        return {a: float(np.mean(v)) for a, v in groups.items()}

    def as_dict(self) -> dict:
        return {"caption": self.caption, "kind": self.kind, "reward": self.reward, "correct": self.correct,
                "attributes": self.attributes, "constraints": [c.as_dict() for c in self.constraints]}


def accuracies(results: Sequence[CheckedSample], attributes: Sequence[str], kinds: Sequence[str],
               attributes_per_kind: bool = False) -> Dict[str, float]:
    """Batch summary: ``accuracy`` (every check of a sample holds), ``reward`` (the mean reward), ``n``, per attribute
    the fraction of the samples stating it where it holds, ``accuracy/<kind>``, and with ``attributes_per_kind``
    ``<attribute>/<kind>`` too. An attribute or kind no sample has is left out; no results give an empty dict."""
    if not results:
        return {}
    out: Dict[str, float] = {"accuracy": float(np.mean([r.correct for r in results])),
                             "reward": float(np.mean([r.reward for r in results])), "n": float(len(results))}
    for attr in attributes:
        vals = [r.attributes[attr] for r in results if attr in r.attributes]
        if vals:
            out[attr] = float(np.mean(vals))
    for kind in kinds:
        group = [r for r in results if r.kind == kind]
        if not group:
            continue
        out[f"accuracy/{kind}"] = float(np.mean([r.correct for r in group]))
        for attr in attributes if attributes_per_kind else ():
            vals = [r.attributes[attr] for r in group if attr in r.attributes]
            if vals:
                out[f"{attr}/{kind}"] = float(np.mean(vals))
    return out
