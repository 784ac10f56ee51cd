"""The offline loop (data paths ``offline_pairs`` / ``offline_labels``): stored preferences -> optimise.

Per epoch the stored pairs (or labelled samples) are shuffled, cut into global minibatches of
``train.batch_size x processes`` items and each process takes its slice. For each item the noise and
the timestep come from a generator seeded by (seed, epoch, the item's position in the epoch), so
a pair's winner and loser share them, a resumed run redraws exactly what the uninterrupted run drew,
and 2 processes x B/2 items see what 1 process x B sees. Stored samples are encoded once by the
adapter (``adapter.encode``: VAE latents for images, the points themselves for the toy, with the
conditions of the item and the sample) and cached; a sample stored as its model state (an invalid molecule's
``.state.pt``, see diffalign.data.StoredState) gives its x0 and conditions directly.

The forward process runs on the model's whole training grid (:class:`diffalign.mdp.forward.ForwardProcess`),
the loss object (diffalign/algorithms/preference.py, reference_free.py, kto.py) runs the policy and
the frozen reference. Logged per epoch: ``loss``, ``implicit_acc``, ``reward_margin`` (means over the
epoch's steps and processes) and the algorithm's other metrics, ``grad_norm``, ``lr``, ``num_items``;
with ``data.eval_samples`` > 0 also ``eval_reward`` (reward.name on samples drawn with fixed seeds) and
``eval_implicit_acc`` / ``eval_reward_margin`` (on the first stored items with fixed noise and t), and
their ``*_initial`` values before training in epoch 0's line.
Checkpoints, resume and metrics.jsonl work as in the online loop.

Config keys as read here: ``train.batch_size`` is pairs (KTO: labelled samples) per process per
forward; ``sampling.*`` and ``reward.name`` only serve the evaluation samples; ``train.inner_epochs``
and ``train.timestep_fraction`` (rollout notions) do not apply. Prompts come from the data unless
``prompts`` is given (the toy modality's prompt vocabulary, and the synthetic sets, need it).
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Tuple

import torch

from diffalign.algorithms.base import DataPath
from diffalign.algorithms.preference import OfflineBatch
from diffalign.data import (PreferenceDataError, PreferenceDataset, StoredState, is_state_ref, load_preference_data,
                            load_state)
from diffalign.mdp.forward import ForwardProcess
from diffalign.modalities.base import cat_conditions
from diffalign.modalities.toy.synthetic import toy_preference_pairs
from diffalign.trainer.base import Trainer
from diffalign.trainer.builders import build_algorithm
from diffalign.trainer.distributed import derive_seed, generator, make_accelerator


def build_preference_data(cfg, prompts: Optional[List[str]] = None) -> PreferenceDataset:
    d = cfg.data
    if d.path.startswith("synthetic:"):
        dim = int(cfg.modality.options.get("dim", 2))
        return toy_preference_pairs(prompts, d.num_pairs, dim=dim, seed=cfg.seed)
    from diffalign.registry import modalities
    readers = modalities[cfg.modality.name].readers()  # layouts the modality reads itself (video clips)
    if d.format in readers:
        return readers[d.format](d.path, d.verify_images, d.max_records)
    return load_preference_data(d.path, d.format, d.split, d.verify_images, d.max_records, d.streaming)


class OfflineTrainer(Trainer):
    """Trains ``cfg`` (a validated TrainConfig whose algorithm has an offline data path)."""

    def __init__(self, cfg, accelerator=None):
        from diffalign.config import config_prompts
        acc = accelerator or make_accelerator(cfg.train.mixed_precision)
        algorithm = build_algorithm(cfg)
        given = None if cfg.prompts.list is None and cfg.prompts.file is None else \
            config_prompts(cfg)
        self.data = build_preference_data(cfg, given)
        if acc.is_main_process:
            print(f"diffalign: {self.data.report.summary()}", flush=True)
        self.labels = algorithm.data_path == DataPath.OFFLINE_LABELS
        self.items = self.data.as_labels() if self.labels else self.data.pairs
        if not self.items:
            raise PreferenceDataError(f"{self.data.report.source} holds binary feedback, but {algorithm.name} "
                                      "learns from pairs")
        if getattr(algorithm, "needs_rewards", False) and not self.data.has_rewards:
            raise PreferenceDataError(f"{algorithm.name} needs a reward for every pair (chosen_reward / "
                                      f"rejected_reward), which {self.data.report.source} does not have")
        self._cache: Dict[int, torch.Tensor] = {}
        # the policy serves sampling / evaluation; training is unguided
        super().__init__(cfg, acc, prompts=given if given is not None else self.data.prompts, algorithm=algorithm)
        self.forward = ForwardProcess(self.adapter.scheduler)
        if self.logger is not None:
            with open(os.path.join(cfg.output_dir, "data_report.json"), "w") as f:
                json.dump(self.data.report.to_dict(), f, indent=1)

    def build_reward_fn(self):
        if not self.cfg.data.eval_samples:
            return None
        from diffalign.rewards import bind_reward_kwargs, resolve_reward
        return bind_reward_kwargs(resolve_reward(self.cfg.reward.name, self.adapter.rewards()),
                                  self.cfg.reward.name, self.cfg.reward.kwargs)

    def progress_postfix(self, metrics: Dict[str, float]) -> Dict[str, str]:
        return {"loss": f"{metrics['loss']:.3g}", "acc": f"{metrics['implicit_acc']:.3f}"}

    # ---- data -> batches --------------------------------------------------------------------------------
    def _encoded(self, keys: List[int], samples: List, items: List) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """x0 and conditions of stored samples (``adapter.encode``: the conditions come from the item and the
        sample; a stored model state, an invalid sample's ``.state.pt``, is used as is); ``keys`` identify them in
        the cache (2 i / 2 i + 1 for pair i)."""
        cache = self.cfg.data.cache_latents
        todo = [j for j, k in enumerate(keys) if k not in self._cache] if cache else list(range(len(keys)))
        rows: Dict[int, Tuple[torch.Tensor, Dict[str, torch.Tensor]]] = {}
        loaded = {j: load_state(samples[j]) if is_state_ref(samples[j]) else self.adapter.load_sample(samples[j])
                  for j in todo}
        to_encode = [j for j in todo if not isinstance(loaded[j], StoredState)]
        if to_encode:
            x0, cond = self.adapter.encode([loaded[j] for j in to_encode], [items[j] for j in to_encode])
            for n, j in enumerate(to_encode):
                rows[j] = (x0[n].detach(), {k: v[n].detach() for k, v in cond.items()})
        for j in todo:
            if isinstance(loaded[j], StoredState):
                rows[j] = self._state_row(loaded[j], rows[to_encode[0]] if to_encode else None)
        if cache:
            for j in todo:
                self._cache[keys[j]] = rows[j]
            rows = {j: self._cache[k] for j, k in enumerate(keys)}
        ordered = [rows[j] for j in range(len(keys))]
        keys0 = set(ordered[0][1])
        for r in ordered[1:]:
            if set(r[1]) != keys0:
                raise PreferenceDataError(f"stored samples give different conditions ({sorted(keys0)} and "
                                          f"{sorted(r[1])}): a stored state from another model?")
        try:
            return torch.stack([r[0] for r in ordered]), {k: torch.stack([r[1][k] for r in ordered]) for k in keys0}
        except RuntimeError as exc:
            raise PreferenceDataError(f"stored samples do not batch (a stored state from another model?): {exc}") from None

    def _state_row(self, state: StoredState, like: Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]):
        """A stored state's (x0, conditions) on the device (and, beside encoded samples, in their dtypes)."""
        dev = self.acc.device
        if like is None:
            return state.x0.to(dev), {k: v.to(dev) for k, v in state.cond.items()}
        if tuple(state.x0.shape) != tuple(like[0].shape) or set(state.cond) != set(like[1]):
            raise PreferenceDataError(f"stored state {state.source or '(in memory)'}: x0 {tuple(state.x0.shape)} with "
                                      f"conditions {sorted(state.cond)} does not match this model's encoded samples "
                                      f"(x0 {tuple(like[0].shape)}, conditions {sorted(like[1])})")
        return (state.x0.to(like[0].device, like[0].dtype),
                {k: v.to(like[1][k].device, like[1][k].dtype) for k, v in state.cond.items()})

    def make_batch(self, epoch: int, positions: List[int], indices: List[int]) -> OfflineBatch:
        """The batch of stored items ``indices`` at global epoch positions ``positions`` (their noise and t)."""
        items = [self.items[i] for i in indices]
        prompts = [it.prompt for it in items]
        if self.labels:
            x0, cond = self._encoded(indices, [it.sample for it in items], prompts)
        else:
            x0_w, cond_w = self._encoded([2 * i for i in indices], [it.chosen for it in items], prompts)
            x0_l, cond_l = self._encoded([2 * i + 1 for i in indices], [it.rejected for it in items], prompts)
        noise, steps = [], []
        for pos in positions:
            g = generator(self.cfg.seed, epoch, pos, "offline")
            steps.append(self.forward.sample_indices(1, g))
            noise.append(torch.randn(x0.shape[1:] if self.labels else x0_w.shape[1:], generator=g))
        dev = self.acc.device
        noise, steps = torch.stack(noise).to(dev), torch.cat(steps)
        reduce = lambda t: self.acc.reduce(t, reduction="mean")  # noqa: E731
        if self.labels:
            noise = self.adapter.project_noise(noise.to(x0.dtype), cond)
            x_t = self.forward.add_noise(x0, noise, steps)
            desirable = torch.tensor([it.desirable for it in items], device=dev)
            return OfflineBatch(x_t, self.forward.model_timesteps(steps, x_t), self.forward.target(x0, noise, steps),
                                cond, desirable=desirable, all_reduce_mean=reduce,
                                mask=self.adapter.logprob_mask(cond, x_t))
        noise = noise.to(x0_w.dtype)
        x0 = torch.cat([x0_w, x0_l])
        cond = cat_conditions([cond_w, cond_l])
        # the pair shares noise and t; each side's noise is projected into its own subspace
        noise2 = self.adapter.project_noise(torch.cat([noise, noise]), cond)
        steps2 = torch.cat([steps, steps])
        x_t = self.forward.add_noise(x0, noise2, steps2)
        rewards = None
        if all(it.chosen_reward is not None and it.rejected_reward is not None for it in items):
            rewards = torch.tensor([it.chosen_reward for it in items] + [it.rejected_reward for it in items],
                                   device=dev, dtype=torch.float32)
        return OfflineBatch(x_t, self.forward.model_timesteps(steps2, x_t), self.forward.target(x0, noise2, steps2),
                            cond, rewards=rewards, all_reduce_mean=reduce, mask=self.adapter.logprob_mask(cond, x_t))

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean reward (reward.name) of data.eval_samples samples drawn with fixed seeds (same every epoch)."""
        from diffalign.rewards import call_reward
        n = self.cfg.data.eval_samples
        prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        cond = self.adapter.encode_conditions(prompts, [generator(self.cfg.seed, "eval", i, "conditions")
                                                        for i in range(n)])
        gens = [generator(self.cfg.seed, "eval", i) for i in range(n)]
        self.adapter.denoiser.eval()
        with self.acc.autocast():
            traj = self.policy.sample(cond, generator=gens)
        decoded = self.adapter.decode(traj.x0, cond)
        return float(call_reward(self.reward_fn, decoded, prompts, self.acc.device).mean())

    @torch.no_grad()
    def evaluate_preferences(self) -> Dict[str, float]:
        """The loss's metrics (implicit_acc, reward_margin) on the first data.eval_samples stored items, each
        with a noise and timestep fixed for the whole run: a low-variance, comparable-across-epochs measure."""
        n = min(len(self.items), self.cfg.data.eval_samples)
        reference = self.policy.reference() if self.algorithm.needs_reference else None
        self.adapter.denoiser.eval()
        sums: Dict[str, float] = {}
        bs = self.cfg.train.batch_size
        for start in range(0, n, bs):
            idx = list(range(start, min(n, start + bs)))
            batch = self.make_batch("eval", idx, idx)
            with self.acc.autocast():
                _, metrics = self.algorithm.loss(batch, self.policy, reference)
            for k in ("implicit_acc", "reward_margin"):
                sums[k] = sums.get(k, 0.0) + float(metrics[k]) * len(idx)
        return {f"eval_{k}": v / n for k, v in sums.items()}

    # ---- one epoch ----------------------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, t = self.cfg, self.cfg.train
        initial = {}
        if self.reward_fn is not None and epoch == 0:
            initial["eval_reward_initial"] = self.evaluate()
            initial.update({k + "_initial": v for k, v in self.evaluate_preferences().items()})
        start = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, epoch, self.rank, "torch"))
        n = len(self.items)
        global_bs = t.batch_size * self.world
        steps_per_epoch = n // global_bs
        if steps_per_epoch == 0:
            raise ValueError(f"{n} stored items are fewer than one global minibatch of {global_bs} "
                             "(train.batch_size x processes)")
        order = torch.randperm(n, generator=generator(cfg.seed, epoch, "order")).tolist()
        reference = self.policy.reference() if self.algorithm.needs_reference else None
        self.adapter.denoiser.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        count = 0
        accum = t.gradient_accumulation_steps
        for m in range(steps_per_epoch):
            lo = m * global_bs + self.rank * t.batch_size
            positions = list(range(lo, lo + t.batch_size))
            batch = self.make_batch(epoch, positions, [order[p] for p in positions])
            with self.acc.autocast():
                loss, metrics = self.algorithm.loss(batch, self.policy, reference)
            last = (m + 1) % accum == 0 or m + 1 == steps_per_epoch
            self.accumulate(loss, metrics, sums, 1.0 / accum, sync=last)
            count += 1
            if last:
                self.step_optimizer(sums, weight=accum)
                if self.out_of_time():  # train.max_minutes
                    break
        metrics = self.reduce_metrics(sums, count)
        train_s = time.perf_counter() - start
        if self.reward_fn is not None:
            initial["eval_reward"] = self.evaluate()
            initial.update(self.evaluate_preferences())
        return {"epoch": epoch, **metrics, **initial, "num_items": steps_per_epoch * global_bs, "train_s": train_s,
                **self.run_info()}
