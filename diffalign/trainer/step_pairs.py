"""The per-step preference loop (data path ``step_pairs``: D3PO, SPO).

Each epoch: ``eval_reward`` of fixed-seed samples, then sampling.num_batches_per_epoch batches of
sampling.batch_size prompts per process; each batch is collected without gradient by the current policy
(D3PO: two trajectories per prompt sharing a prefix, a preference from the reward or a label file; SPO: best
and worst of several children at every step) into B pairs x S steps. Training then goes as in the online
loop: minibatches of train.batch_size pairs, for each a random timestep_fraction of the S steps (one loss per
step, accumulated), an optimiser step every train.gradient_accumulation_steps minibatches.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List

import torch

from diffalign.algorithms.step_preference import (D3PO, SPO, PairSet, StepPairBatch, collect_d3po, collect_spo,
                                                  load_labels, pairs_from_preference)
from diffalign.modalities.base import index_conditions
from diffalign.rewards import call_reward
from diffalign.trainer.common import SampledTrainer, draw_noise
from diffalign.trainer.distributed import derive_seed, generator

__all__ = ["StepPairTrainer"]


class StepPairTrainer(SampledTrainer):
    def __init__(self, cfg, accelerator=None):
        super().__init__(cfg, accelerator)
        if not isinstance(self.algorithm, (D3PO, SPO)):
            raise ValueError(f"the step-pair loop runs d3po or spo, got {self.algorithm.name!r}")

    # ---- collection -------------------------------------------------------------------------------------
    def _rewards(self, x0, cond, prompts):
        return call_reward(self.reward_fn, self.adapter.decode(x0, cond), prompts, self.acc.device)

    def collect(self, epoch: int, n: int, prompts: List[str], first: int):
        """PairSet of this process's prompts (global sample indices first, first + 1, ...), their conditions,
        and metrics."""
        cfg, c = self.cfg, self.algorithm.config
        cond = self.adapter.encode_conditions(
            prompts, [generator(cfg.seed, epoch, n, g, "conditions") for g in range(first, first + len(prompts))])
        gens = [generator(cfg.seed, epoch, n, g, "noise") for g in range(first, first + len(prompts))]
        x_T, _ = draw_noise(self.adapter, cond, gens, 0)
        self.adapter.denoiser.eval()
        with self.acc.autocast():
            if isinstance(self.algorithm, SPO):
                def score(x0, cond_k):
                    rep = [prompts[i // c.num_children] for i in range(x0.shape[0])]
                    return self._rewards(x0, cond_k, rep)
                pairs = collect_spo(self.policy, cond, x_T, gens, c.num_children, score)
                return pairs, cond, {"reward_mean": float(self._rewards(pairs.x0, cond, prompts).mean())}
            a, b, steps = collect_d3po(self.policy, cond, x_T, gens, c.branch_step)
        r_a, r_b = self._rewards(a[:, -1], cond, prompts), self._rewards(b[:, -1], cond, prompts)
        metrics = {"reward_mean": float(torch.cat([r_a, r_b]).mean())}
        if c.preference == "reward":
            a_wins, valid = r_a > r_b, r_a != r_b
        else:
            labels = load_labels(c.label_file)  # re-read every epoch: a person may label as the run goes
            got = [labels.get((epoch, n * len(prompts) * self.world + first + i)) for i in range(len(prompts))]
            known = [(epoch, n * len(prompts) * self.world + first + i) in labels for i in range(len(prompts))]
            a_wins = torch.tensor([w == 0 for w in got])
            valid = torch.tensor([k and w is not None for k, w in zip(known, got)])
            metrics["labelled_pairs"] = float(valid.sum())
            self._write_pairs(epoch, n * len(prompts) * self.world + first, a[:, -1], b[:, -1], cond)
        return pairs_from_preference(a, b, steps, a_wins, valid), cond, metrics

    def _write_pairs(self, epoch, first, xa, xb, cond):
        """Decoded pairs for a person to label: OUTPUT_DIR/pairs/epoch_NNNNNN/pair_NNNNN_{0,1}.png (or .pt)."""
        folder = os.path.join(self.cfg.output_dir, "pairs", f"epoch_{epoch:06d}")
        os.makedirs(folder, exist_ok=True)
        for side, x in ((0, xa), (1, xb)):
            decoded = self.adapter.decode(x, cond)
            for i in range(x.shape[0]):
                stem = os.path.join(folder, f"pair_{first + i:05d}_{side}")
                item = decoded[i]
                if torch.is_tensor(item) and item.ndim == 3 and item.shape[0] in (1, 3):
                    from torchvision.utils import save_image
                    save_image(item.float().cpu(), stem + ".png")
                else:
                    torch.save(item, stem + ".pt")

    # ---- one epoch -------------------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, s, t = self.cfg, self.cfg.sampling, self.cfg.train
        torch.manual_seed(derive_seed(cfg.seed, epoch, self.rank, "torch"))
        eval_reward, self._last_decoded = self.evaluate(1.0)
        start = time.perf_counter()
        sets: List[PairSet] = []
        conds, extra = [], {}
        for n in range(s.num_batches_per_epoch):
            prompts = self.batch_prompts(epoch, n, s.batch_size * self.world)
            first = self.rank * s.batch_size
            mine = prompts[first:first + s.batch_size]
            pairs, cond, metrics = self.collect(epoch, n, mine, first)
            sets.append(pairs)
            conds.append(cond)
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + v
            if self.out_of_time():  # train.max_minutes: train on the batches collected so far
                break
        extra = {k: v / len(sets) for k, v in extra.items()}
        collect_s = time.perf_counter() - start
        metrics = self.optimise(epoch, sets, conds)
        return {"epoch": epoch, "eval_reward": eval_reward, **extra, **metrics, "collect_s": collect_s,
                "train_s": time.perf_counter() - start - collect_s, **self.run_info()}

    def optimise(self, epoch: int, sets: List[PairSet], conds) -> Dict[str, float]:
        cfg, t = self.cfg, self.cfg.train
        self.adapter.denoiser.train()
        reference = self.policy.reference()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        count, minibatch = 0, 0
        for inner in range(t.inner_epochs):
            for n, (pairs, cond) in enumerate(zip(sets, conds)):
                B, S = pairs.valid.shape
                n_train = max(1, int(S * t.timestep_fraction))
                order = torch.randperm(B, generator=generator(cfg.seed, epoch, inner, n, self.rank, "shuffle"))
                step_order = torch.stack([torch.randperm(S, generator=generator(cfg.seed, epoch, inner, n, self.rank,
                                                                                 b, "steps")) for b in range(B)])
                for idx in order.split(t.batch_size):
                    minibatch += 1
                    last_mb = minibatch % t.gradient_accumulation_steps == 0
                    sub_cond = index_conditions(cond, idx.to(next(iter(cond.values())).device))
                    for j in range(n_train):
                        col = step_order[idx, j]
                        dev = pairs.x_t_w.device
                        rows, cols = idx.to(dev), col.to(dev)
                        batch = StepPairBatch(pairs.x_t_w[rows, cols], pairs.x_prev_w[rows, cols],
                                              pairs.x_t_l[rows, cols], pairs.x_prev_l[rows, cols],
                                              pairs.steps[col], sub_cond, pairs.valid[rows, cols])
                        with self.acc.autocast():
                            loss, metrics = self.algorithm.loss(batch, self.policy, reference)
                        self.accumulate(loss, metrics, sums, 1.0 / (n_train * t.gradient_accumulation_steps),
                                        sync=last_mb and j == n_train - 1)
                        count += 1
                    if last_mb:
                        self.step_optimizer(sums, weight=n_train * t.gradient_accumulation_steps)
                        if self.out_of_time():
                            return self.reduce_metrics(sums, count)
        return self.reduce_metrics(sums, count)
