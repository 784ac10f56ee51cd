"""Preference records, the load report, and how a stored sample becomes something an adapter encodes.

A *sample* is whatever one side of a comparison holds: an image file path, encoded image bytes (a
Pick-a-Pic parquet cell), a PIL image (a decoded ``datasets`` Image column), or a numeric vector / tensor
(the toy modality's points; AI feedback on non-image modalities). :func:`load_sample` turns each into a
PIL image or a float tensor; the modality adapter's ``encode`` turns a batch of those into x0.
:func:`save_sample` writes a decoded sample so that :func:`load_sample` reads it back.

A sample with no decoded form (an invalid molecule: ``decode`` gave None) is stored as the model state it
came from: a :class:`StoredState` file (``NAME.state.pt``: its x0 and its conditions, batch dimension dropped),
which the offline trainer uses as is, without the adapter's ``encode``. Preference pairs then still teach that an
invalid sample is worse (Diffusion-DPO needs the rejected sample's x0, which exists before decoding).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TENSOR_EXTENSIONS = (".npy", ".pt")
STATE_SUFFIX = ".state.pt"  # a StoredState file (checked before the plain ".pt" tensor)


class PreferenceDataError(ValueError):
    """A dataset that cannot be used (no usable pairs, unknown layout, missing file); names the file."""


@dataclasses.dataclass
class PreferencePair:
    prompt: str
    chosen: Any                               # a sample (path, bytes, PIL image, vector)
    rejected: Any
    chosen_reward: Optional[float] = None     # scores, where the data has them (AI feedback, E2PO soft labels)
    rejected_reward: Optional[float] = None


@dataclasses.dataclass
class LabelledSample:
    """Binary feedback (KTO): one sample judged desirable or not."""

    prompt: str
    sample: Any
    desirable: bool


@dataclasses.dataclass
class LoadReport:
    """What loading kept and what it could not use, by reason. Nothing is dropped without a count."""

    source: str
    layout: str
    rows: int = 0                 # records read from the source
    kept: int = 0                 # pairs (or labelled samples) produced
    ties: int = 0                 # comparisons with no preferred side (Pick-a-Pic 0.5/0.5, equal ranks)
    undecodable: int = 0          # records with an image that is missing or does not decode
    missing_caption: int = 0      # records without a prompt
    malformed: int = 0            # records lacking a required field or with an unreadable value
    examples: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # a few details per reason

    def skip(self, reason: str, detail: str, count: int = 1) -> None:
        setattr(self, reason, getattr(self, reason) + count)
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(detail)

    @property
    def skipped(self) -> int:
        return self.ties + self.undecodable + self.missing_caption + self.malformed

    def summary(self) -> str:
        parts = [f"{self.source} ({self.layout}): {self.rows} records -> {self.kept} usable"]
        for reason in ("ties", "undecodable", "missing_caption", "malformed"):
            n = getattr(self, reason)
            if n:
                ex = "; ".join(self.examples.get(reason, []))
                parts.append(f"{n} {reason.replace('_', ' ')}" + (f" (e.g. {ex})" if ex else ""))
        return ", ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def jsonl_objects(path: str, report: LoadReport, max_records: Optional[int] = None) -> Iterator[Tuple[str, dict]]:
    """(where, row) for each JSON object line of a JSONL file, ``where`` = "<file> line <n>" for messages.
    Blank lines are skipped; every other line counts in ``report.rows``, and one that is not a JSON object is
    counted as malformed (with its line) rather than yielded. Stops after ``max_records`` rows."""
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if max_records is not None and report.rows >= max_records:
            return
        if not line.strip():
            continue
        report.rows += 1
        where = f"{name} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            report.skip("malformed", f"{where}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            report.skip("malformed", f"{where}: not a JSON object")
            continue
        yield where, row


def pair_rewards(row: Dict[str, Any]) -> Tuple[Optional[float], Optional[float]]:
    """A pair row's optional ``chosen_reward`` / ``rejected_reward`` (what ``diffalign feedback`` writes; E2PO's
    soft labels read them): both numbers, or both absent. Anything else raises ValueError with the reason, which
    the readers count as a malformed row: a half-scored pair would silently turn E2PO's soft labels off."""
    rewards = (row.get("chosen_reward"), row.get("rejected_reward"))
    if rewards == (None, None):
        return None, None
    if any(r is None or isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)
           for r in rewards):
        raise ValueError(f"'chosen_reward' and 'rejected_reward' must both be finite numbers (or both absent), "
                         f"got {rewards[0]!r} and {rewards[1]!r}")
    return float(rewards[0]), float(rewards[1])


@dataclasses.dataclass
class PreferenceDataset:
    """Pairs (DPO family) or labelled samples (KTO), and the report of how they were loaded."""

    pairs: List[PreferencePair]
    labels: List[LabelledSample]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs else len(self.labels)

    @property
    def kind(self) -> str:
        return "pairs" if self.pairs else "labels"

    @property
    def prompts(self) -> List[Any]:
        """The distinct prompts in first-seen order; a prompt may be a mapping item (an edit's instruction and
        input image), keyed by its sorted JSON as diffalign.rewards.prompt_key keys it."""
        seen = [p.prompt for p in self.pairs] + [s.prompt for s in self.labels]
        distinct: Dict[str, Any] = {}
        for p in seen:
            distinct.setdefault(p if isinstance(p, str) else json.dumps(p, sort_keys=True, separators=(",", ":")), p)
        return list(distinct.values())

    def as_labels(self) -> List[LabelledSample]:
        """Binary feedback; pairs become 2n samples (winner desirable, loser not), as KTO does (survey 3.2.2)."""
        if self.labels:
            return list(self.labels)
        out = []
        for p in self.pairs:
            out.append(LabelledSample(p.prompt, p.chosen, True))
            out.append(LabelledSample(p.prompt, p.rejected, False))
        return out

    @property
    def has_rewards(self) -> bool:
        return bool(self.pairs) and all(p.chosen_reward is not None and p.rejected_reward is not None
                                        for p in self.pairs)


@dataclasses.dataclass
class StoredState:
    """One sample kept as its model state: x0 (no batch dimension) and its conditions (each tensor without the
    batch dimension), what the offline trainer would otherwise get from ``adapter.encode``. ``source``: the file."""

    x0: torch.Tensor
    cond: Dict[str, torch.Tensor]
    source: str = ""


def is_state_ref(ref: Any) -> bool:
    """Whether ``ref`` is a StoredState or names a StoredState file."""
    return isinstance(ref, StoredState) or (isinstance(ref, str) and ref.endswith(STATE_SUFFIX))


def save_state(x0: torch.Tensor, cond: Dict[str, torch.Tensor], folder: str, name: str) -> str:
    """One sample's x0 and conditions (no batch dimension) -> ``folder/name.state.pt``; returns the file name."""
    if not isinstance(x0, torch.Tensor) or not all(isinstance(v, torch.Tensor) for v in cond.values()):
        raise ValueError(f"stored state {name!r}: x0 and every condition must be tensors")
    os.makedirs(folder, exist_ok=True)
    torch.save({"x0": x0.detach().cpu().contiguous(),
                "cond": {k: v.detach().cpu().contiguous() for k, v in cond.items()}},
               os.path.join(folder, name + STATE_SUFFIX))
    return name + STATE_SUFFIX


def load_state(ref: Any, root: Optional[str] = None) -> StoredState:
    """A StoredState file (or a StoredState) -> the StoredState; ValueError naming the file if it is not one."""
    if isinstance(ref, StoredState):
        return ref
    path = resolve_path(ref, root)
    if not os.path.isfile(path):
        raise ValueError(f"stored state {path!r} does not exist")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(f"stored state {path!r} does not load: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("x0"), torch.Tensor) or not isinstance(data.get("cond"), dict) \
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data["cond"].items()):
        raise ValueError(f"stored state {path!r} must hold {{'x0': tensor, 'cond': {{name: tensor}}}}")
    return StoredState(data["x0"], dict(data["cond"]), path)


def resolve_path(ref: str, root: Optional[str]) -> str:
    ref = os.path.expanduser(ref)
    if root is not None and not os.path.isabs(ref):
        return os.path.join(root, ref)
    return ref


def load_sample(ref: Any, root: Optional[str] = None):
    """A stored sample -> a PIL image (RGB), a float32 tensor, or a :class:`StoredState` (a ``.state.pt`` file).
    Raises ValueError if it cannot be read."""
    from PIL import Image
    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, torch.Tensor):
        return ref.detach().float()
    if isinstance(ref, dict) and ("bytes" in ref or "path" in ref):  # a datasets Image cell, undecoded
        ref = ref.get("bytes") or ref.get("path")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(ref))) as im:
                return im.convert("RGB")
        except Exception as exc:
            raise ValueError(f"image bytes do not decode: {exc}") from None
    if isinstance(ref, (list, tuple)):
        try:
            return torch.tensor([float(v) for v in ref], dtype=torch.float32)
        except (TypeError, ValueError):
            raise ValueError("a list sample must hold numbers") from None
    if is_state_ref(ref):
        return load_state(ref, root)
    if isinstance(ref, str):
        path = resolve_path(ref, root)
        if not os.path.isfile(path):
            raise ValueError(f"file {path!r} does not exist")
        ext = os.path.splitext(path)[1].lower()
        if ext == ".npy":
            import numpy as np
            return torch.from_numpy(np.load(path)).float()
        if ext == ".pt":
            return torch.load(path, weights_only=True).float()
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as exc:
            raise ValueError(f"{path!r} does not decode as an image: {exc}") from None
    raise ValueError(f"cannot read a sample of type {type(ref).__name__}")


def check_sample(ref: Any, root: Optional[str] = None) -> Optional[str]:
    """None if the sample can be read, else why not (what the readers count as undecodable)."""
    try:
        load_sample(ref, root)
    except ValueError as exc:
        return str(exc)
    return None


def save_sample(sample: torch.Tensor, folder: str, name: str) -> str:
    """A decoded sample -> a file in ``folder`` that :func:`load_sample` reads back: an image (C, H, W) in [0, 1]
    with 1 or 3 channels -> ``name.png`` (8 bits), anything else -> ``name.npy`` (exact). Returns the file name."""
    sample = sample.detach().float().cpu()
    os.makedirs(folder, exist_ok=True)
    if sample.ndim == 3 and sample.shape[0] in (1, 3):
        from PIL import Image
        array = (sample.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        if array.shape[2] == 1:
            array = array[:, :, 0]
        Image.fromarray(array).save(os.path.join(folder, name + ".png"))
        return name + ".png"
    import numpy as np
    np.save(os.path.join(folder, name + ".npy"), sample.numpy())
    return name + ".npy"


def load_samples(refs: Sequence[Any], root: Optional[str] = None) -> list:
    return [load_sample(r, root) for r in refs]
