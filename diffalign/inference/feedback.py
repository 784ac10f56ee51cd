"""AI feedback and data-centric preference learning (survey sections 3.1 and 6).

Instead of human annotators, any reward (a closed-form score, a learned reward model, a VLM judge
wrapped as ``(decoded, prompts) -> Tensor[B]``) labels pairs of model samples. Samples of the same
prompt are compared pairwise; a pair is kept only when its reward gap exceeds ``threshold``, which
filters out near-ties whose label would be mostly noise (the data-centric choice: fewer, cleaner
pairs). The result is written in the plain JSONL layout of :mod:`diffalign.data.readers`
(``{"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"}``, samples saved as files:
PNG for images, ``.npy`` for other tensors), so the offline trainer reads it like human feedback, and
E2PO can turn the stored rewards into soft labels.

Decoded samples are a tensor batch (images, vectors) or a list (molecules), whose None entries are invalid
samples (nothing decoded). An invalid sample still takes part: its reward is the reward's penalty, and when a
pair uses it, it is stored as its model state (``NAME.state.pt``: x0 and conditions, diffalign.data.StoredState),
so preference learning sees valid-over-invalid pairs.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from diffalign.data import StoredState, save_sample, save_state
from diffalign.inference.sampler import concat_decoded, encode_items
from diffalign.rewards.prompts import prompt_key

PAIRINGS = ("all", "best_worst")


@dataclasses.dataclass
class FeedbackReport:
    samples: int = 0
    candidate_pairs: int = 0   # same-prompt pairs considered
    kept: int = 0
    below_threshold: int = 0   # pairs whose |reward gap| <= threshold (ties included)
    path: str = ""

    def summary(self) -> str:
        return (f"AI feedback: {self.samples} samples, {self.candidate_pairs} same-prompt pairs, {self.kept} kept, "
                f"{self.below_threshold} with a reward gap at or below the threshold -> {self.path}")


def select_pairs(prompts: Sequence[Any], rewards: torch.Tensor, threshold: float = 0.0,
                 pairing: str = "all") -> Tuple[List[Tuple[int, int]], FeedbackReport]:
    """(winner, loser) sample indices of same-prompt pairs whose reward gap exceeds ``threshold``.

    pairing "all": every same-prompt pair (C(K, 2) per prompt); "best_worst": only the best and the
    worst sample of each prompt (one pair, the largest gap).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    r = rewards.detach().double().cpu().reshape(-1)
    if r.shape[0] != len(prompts):
        raise ValueError(f"{len(prompts)} prompts for {r.shape[0]} rewards")
    groups: Dict[str, List[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(prompt_key(p), []).append(i)  # mapping items (a pocket) group by their stable key
    report = FeedbackReport(samples=len(prompts))
    kept = []
    for idx in groups.values():
        if pairing == "best_worst":
            if len(idx) < 2:
                continue
            ordered = sorted(idx, key=lambda i: float(r[i]))
            candidates = [(ordered[-1], ordered[0])]
        else:
            candidates = list(itertools.combinations(idx, 2))
        for a, b in candidates:
            report.candidate_pairs += 1
            gap = float(r[a] - r[b])
            if abs(gap) <= threshold:
                report.below_threshold += 1
                continue
            kept.append((a, b) if gap > 0 else (b, a))
    report.kept = len(kept)
    return kept, report


def write_feedback(out_dir: str, samples: Sequence[Any], prompts: Sequence[Any], rewards: torch.Tensor,
                   pairs: Sequence[Tuple[int, int]], file_name: str = "pairs.jsonl",
                   save: Callable[[Any, str, str], str] = save_sample,
                   states: Optional[Sequence[Optional[StoredState]]] = None) -> str:
    """Save the samples used by ``pairs`` under out_dir/samples with ``save(sample, folder, name) -> file name``
    (an adapter's ``save_sample``, so its ``load_sample`` reads them back) and the pairs as JSONL; returns its path.
    An invalid sample (None) is saved as its state ``states[i]`` (a ``.state.pt`` file) instead."""
    folder = os.path.join(out_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    if states is not None and len(states) != len(samples):
        raise ValueError(f"{len(states)} stored states for {len(samples)} samples")
    names: Dict[int, str] = {}
    for i in sorted({i for pair in pairs for i in pair}):
        if samples[i] is None:
            if states is None or states[i] is None:
                raise ValueError(f"sample {i} is invalid (decoded to None) and no model state was given to store it")
            names[i] = os.path.join("samples", save_state(states[i].x0, states[i].cond, folder, f"{i:06d}"))
        else:
            names[i] = os.path.join("samples", save(samples[i], folder, f"{i:06d}"))
    path = os.path.join(out_dir, file_name)
    r = rewards.detach().double().cpu().reshape(-1)
    with open(path, "w", encoding="utf-8") as f:
        for w, l in pairs:
            f.write(json.dumps({"prompt": prompts[w], "chosen": names[w], "rejected": names[l],
                                "chosen_reward": float(r[w]), "rejected_reward": float(r[l])}) + "\n")
    return path


def label_samples(out_dir: str, samples: Any, prompts: Sequence[Any], reward_fn,
                  threshold: float = 0.0, pairing: str = "all",
                  save: Callable[[Any, str, str], str] = save_sample,
                  states: Optional[Sequence[Optional[StoredState]]] = None) -> FeedbackReport:
    """Score ``samples`` (decoded: a tensor batch of images or vectors, a list of tensors, or a list of other
    objects such as molecules, None for an invalid one) with ``reward_fn(samples, prompts)``, keep same-prompt
    pairs whose gap exceeds ``threshold`` and write them as JSONL (invalid samples as their ``states``)."""
    from diffalign.rewards import call_reward
    batch = samples
    if not isinstance(samples, torch.Tensor) and samples and all(isinstance(s, torch.Tensor) for s in samples):
        batch = torch.stack(list(samples))  # a list of same-shape tensors: the batch rewards expect
    device = batch.device if isinstance(batch, torch.Tensor) else torch.device("cpu")
    rewards = call_reward(reward_fn, batch, list(prompts), device)
    pairs, report = select_pairs(prompts, rewards, threshold, pairing)
    if not pairs:
        raise ValueError(f"AI feedback kept no pair: all {report.candidate_pairs} same-prompt pairs have a reward gap "
                         f"at or below the threshold {threshold}")
    report.path = write_feedback(out_dir, batch, prompts, rewards, pairs, save=save, states=states)
    return report


@dataclasses.dataclass
class DecodedSamples:
    """What :func:`sample_and_decode` draws: the decoded samples (a tensor batch or a list) and, per sample, its
    model state (x0 and conditions, on the CPU) where it has no decoded form (None), else None: only invalid
    samples need one, and keeping every sample's conditions (text embeddings) would cost memory for nothing."""

    decoded: Any
    states: List[Optional[StoredState]]


def sample_and_decode(cfg, adapter, policy, prompts: Sequence[Any], seeds: Sequence[int], progress: bool = False,
                      desc: str = "sampling") -> DecodedSamples:
    """Decoded samples (on the CPU) of ``prompts[i]`` drawn with a generator seeded by ``seeds[i]``, in
    ``cfg.sampling.batch_size`` batches, with the states of the invalid ones. A sample depends only on its prompt
    and seed, not on the batching. Tensor batches are concatenated, list batches (molecules) extended."""
    from tqdm.auto import tqdm
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    decoded, states = [], []
    bs = cfg.sampling.batch_size
    for start in tqdm(range(0, len(prompts), bs), desc=desc, disable=not progress, leave=False):
        chunk = list(prompts[start:start + bs])
        cond = encode_items(adapter, chunk, seeds[start:start + bs])
        gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds[start:start + bs]]  # CPU, as the trainer's
        with torch.no_grad():
            traj = policy.sample(cond, generator=gens)
            out = adapter.decode(traj.x0, cond)
        if isinstance(out, torch.Tensor):
            decoded.append(out.detach().cpu())
            states.extend([None] * len(chunk))
            continue
        decoded.append(list(out))
        states.extend(None if d is not None else
                      StoredState(traj.x0[i].detach().cpu(), {k: v[i].detach().cpu() for k, v in cond.items()})
                      for i, d in enumerate(out))
    return DecodedSamples(concat_decoded(decoded), states)


def sample_decoded(cfg, adapter, policy, prompts: Sequence[Any], seeds: Sequence[int], progress: bool = False,
                   desc: str = "sampling") -> Any:
    """The decoded samples of :func:`sample_and_decode` (a tensor batch, or a list for list-valued decodes)."""
    return sample_and_decode(cfg, adapter, policy, prompts, seeds, progress, desc).decoded


def generate_feedback(cfg, out_dir: str, samples_per_prompt: int = 4, threshold: float = 0.0,
                      pairing: str = "all", device: Optional[Any] = None) -> FeedbackReport:
    """Sample ``samples_per_prompt`` per prompt from the config's (base) model, label them with the
    config's reward (``reward.name`` with ``reward.kwargs``; in a reward process when ``reward.server.enabled``)
    and write the JSONL. Seeded per sample by (cfg.seed, index)."""
    from diffalign.config import config_prompts
    from diffalign.rewards.server import close_reward_fn, make_reward_fn
    from diffalign.trainer.builders import build_adapter, build_policy
    from diffalign.seeding import derive_seed
    device = torch.device(device or "cpu")
    prompts = config_prompts(cfg)
    adapter = build_adapter(cfg, prompts, device)
    policy = build_policy(cfg, adapter)
    all_prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    seeds = [derive_seed(cfg.seed, "feedback", i) for i in range(len(all_prompts))]
    drawn = sample_and_decode(cfg, adapter, policy, all_prompts, seeds)
    reward_fn = make_reward_fn(cfg.reward, cfg.modality.name, adapter.rewards(), device)
    try:
        return label_samples(out_dir, drawn.decoded, all_prompts, reward_fn, threshold, pairing,
                             save=adapter.save_sample, states=drawn.states)
    finally:
        close_reward_fn(reward_fn)
