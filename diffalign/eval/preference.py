"""``diffalign eval preference --reward NAME_OR_DIR --data PATH``: pairwise preference accuracy of a reward.

The protocol of the survey's section 5.2.1 / Table 3: score both images of every same-prompt pair
with the reward; the accuracy is the share of pairs where the human-preferred image scores higher.
Ranked groups count each of their C(K, 2) pairs.

Tie policy (stated in the printed table and the JSON): pairs the data labels as ties (Pick-a-Pic's
0.5/0.5, equal ranks, ``"tie": true``) are excluded from the accuracy and counted in ``n_ties``
(including ties the pairwise readers skip at load); pairs the reward scores equally count 0.5
(``n_score_ties``). The reward is anything ``load_reward`` accepts: a registered name
(``jpeg_compressibility``, ``pickscore``, ...), a reward folder (``diffalign reward train`` writes
OUTPUT_DIR/reward), or ``package.module:function``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

HELP = "pairwise preference accuracy of a reward on preference data (survey 5.2.1 / Table 3)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward", required=True, help="a reward name load_reward accepts, or a reward folder")
    p.add_argument("--data", required=True, help="preference data: a ranked JSONL, or any layout the readers know")
    p.add_argument("--format", default=None, help="data layout (default: detected)")
    p.add_argument("--split", default="train", help="hub datasets: the split")
    p.add_argument("--max-records", type=int, default=None)
    p.add_argument("--aspect", default=None,
                   help="which labels to score against (an aspect of a multi-aspect ranked file); a multi-head "
                        "reward folder then scores that aspect too. Default: the plain labels")
    p.add_argument("--batch-size", type=int, default=32, help="images per reward call")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="reward dtype (model rewards), e.g. bf16")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _reward_kwargs(name: str, aspect: Optional[str]) -> Dict[str, Any]:
    """Pass ``aspect`` to a multi-head preference model that has it; other rewards take no keyword."""
    if aspect is None or not os.path.isdir(name):
        return {}
    from diffalign.rewards.loading import read_reward_config
    meta = read_reward_config(name)
    return {"aspect": aspect} if aspect in (meta.get("aspects") or []) else {}


def _as_tensor(sample) -> torch.Tensor:
    """A loaded sample (PIL image or tensor) as a float tensor; images (3, H, W) in [0, 1]."""
    if isinstance(sample, torch.Tensor):
        return sample.float()
    import numpy as np
    return torch.from_numpy(np.asarray(sample.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def score_samples(reward, items: Sequence[Tuple[Any, Any]], batch_size: int, device=None,
                  progress: bool = True) -> torch.Tensor:
    """Float64 scores of (sample ref, prompt item) items, ``batch_size`` per reward call (the prompt item is
    the text, or for ranked edits the edit item with its input image).

    Samples of one shape share a call (images of different sizes are scored in separate calls, so
    plain rewards that want one (B, 3, H, W) tensor work on mixed-size data).
    """
    from diffalign.data.types import load_sample
    out = torch.empty(len(items), dtype=torch.float64)
    starts = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="scoring", unit="batch")
    with torch.no_grad():
        for start in starts:
            chunk = list(range(start, min(start + batch_size, len(items))))
            tensors = {i: _as_tensor(load_sample(items[i][0])) for i in chunk}
            by_shape: Dict[tuple, List[int]] = {}
            for i in chunk:
                by_shape.setdefault(tuple(tensors[i].shape), []).append(i)
            for idx in by_shape.values():
                batch = torch.stack([tensors[i] for i in idx])
                if device is not None:
                    batch = batch.to(device)
                r = torch.as_tensor(reward(batch, [items[i][1] for i in idx])).detach().double().cpu().reshape(-1)
                if r.shape[0] != len(idx) or not torch.isfinite(r).all():
                    raise ValueError(f"the reward returned {r.tolist()} for {len(idx)} samples; expected one "
                                     "finite score each")
                out[idx] = r
    return out


def evaluate_preference(reward, data: str, format: Optional[str] = None, split: str = "train",
                        max_records: Optional[int] = None, aspect: Optional[str] = None, batch_size: int = 32,
                        device=None, progress: bool = True) -> Dict[str, Any]:
    """Pairwise accuracy of ``reward`` (a callable (samples, prompts) -> Tensor[B]) on the data at ``data``."""
    from diffalign.rewards.training.data import rank_tensor, read_comparisons
    from diffalign.rewards.training.metrics import TIE_POLICY, pairwise_accuracy
    start = time.perf_counter()
    groups, report = read_comparisons(data, format=format, split=split, max_records=max_records)
    # labels: --aspect, else the plain ranks, else a ranked file's only (or "overall") aspect
    named = sorted({k for g in groups for k in g.ranks if k is not None})
    plain = any(None in g.ranks for g in groups)
    if aspect is not None:
        if aspect not in named and not plain:
            raise ValueError(f"--aspect {aspect!r}: {data} labels the aspects {named}")
        label = aspect
    elif plain:
        label = None
    elif len(named) == 1 or "overall" in named:
        label = named[0] if len(named) == 1 else "overall"
    else:
        raise ValueError(f"{data} labels several aspects {named}: choose one with --aspect")
    key = label if label is not None else "__plain__"
    ranks = rank_tensor(groups, [key], primary=key)[..., 0]
    items = [(s, g.item) for g in groups for s in g.samples]  # ranked edits: the edit item with the input image
    flat = score_samples(reward, items, batch_size, device, progress)
    scores = torch.full(ranks.shape, float("nan"), dtype=torch.float64)
    pos = 0
    for gi, g in enumerate(groups):
        scores[gi, : len(g.samples)] = flat[pos:pos + len(g.samples)]
        pos += len(g.samples)
    acc = pairwise_accuracy(torch.nan_to_num(scores, nan=0.0), ranks)
    skipped_ties = report.ties if report.layout != "ranked" else 0   # ties the pairwise readers dropped at load
    result = acc.to_dict()
    result.update({"n_ties": acc.n_ties + skipped_ties, "n_ties_in_groups": acc.n_ties,
                   "n_ties_skipped_at_load": skipped_ties, "n_groups": len(groups), "n_samples": len(items),
                   "aspect": label, "tie_policy": TIE_POLICY, "data": data, "layout": report.layout,
                   "load_report": report.to_dict(), "seconds": time.perf_counter() - start})
    return result


def format_table(result: Dict[str, Any]) -> str:
    rows = [("reward", str(result.get("reward", ""))), ("data", f"{result['data']} ({result['layout']})"),
            ("aspect", str(result["aspect"] or "(plain labels)")), ("groups", str(result["n_groups"])),
            ("pairs scored", str(result["n_pairs"])), ("label ties (excluded)", str(result["n_ties"])),
            ("score ties (count 0.5)", str(result["n_score_ties"])), ("accuracy", f"{result['accuracy']:.4f}"),
            ("seconds", f"{result['seconds']:.1f}")]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule] + lines + [rule, f"tie policy: {result['tie_policy']}"])


def run(args) -> int:
    from diffalign.data.types import PreferenceDataError
    from diffalign.rewards.loading import load_reward
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        reward = load_reward(args.reward, device=device, dtype=args.dtype, **_reward_kwargs(args.reward, args.aspect))
        result = evaluate_preference(reward, args.data, args.format, args.split, args.max_records, args.aspect,
                                     args.batch_size, device, progress=not args.no_progress)
    except (ValueError, PreferenceDataError, FileNotFoundError) as exc:
        print(f"diffalign eval preference: {exc}", file=sys.stderr)
        return 1
    result = {"reward": args.reward, **result}
    print(format_table(result))
    if math.isnan(result["accuracy"]):  # no strictly preferred pair: JSON null, not NaN
        result["accuracy"] = None
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output}")
    return 0
