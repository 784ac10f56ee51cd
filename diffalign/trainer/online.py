"""The online loop (data path ``online_rollout``): rollout -> reward -> advantage -> optimise -> log/checkpoint.

Reproducibility by construction: every random draw of an epoch comes from a generator seeded by
(seed, epoch, ...) and, for anything per sample, by the sample's *global* index. So a resumed run
needs no RNG state from the checkpoint, and 2 processes x B/2 samples draw exactly what 1 process x B
draws (prompts, initial noise, step noise, trained timesteps).
"""
from __future__ import annotations

import time
from typing import Dict, List

import torch

from diffalign.algorithms.base import TransitionBatch
from diffalign.algorithms.reward_condition import level_items
from diffalign.mdp import Trajectory
from diffalign.modalities.base import cat_conditions
from diffalign.rewards.prompts import group_key
from diffalign.rewards.server import RewardServer, close_reward_fn, make_reward_fn, submit_reward
from diffalign.trainer.base import Trainer
from diffalign.trainer.distributed import derive_seed, generator


def _cat_trajectories(parts: List[Trajectory]) -> Trajectory:
    return Trajectory(torch.cat([p.latents for p in parts]), torch.cat([p.log_probs for p in parts]),
                      cat_conditions([p.cond for p in parts]), parts[0].step_indices)


class OnlineTrainer(Trainer):
    """Trains ``cfg`` (a validated TrainConfig). ``train()`` runs the remaining epochs."""

    def build_reward_fn(self):
        # in process, or a warm reward process when reward.server.enabled
        return make_reward_fn(self.cfg.reward, self.cfg.modality.name, self.adapter.rewards(), self.acc.device)

    def progress_postfix(self, metrics: Dict[str, float]) -> Dict[str, str]:
        return {"reward": f"{metrics['reward_mean']:.4g}", "loss": f"{metrics['loss']:.3g}"}

    def close(self) -> None:
        close_reward_fn(self.reward_fn)

    # ---- one epoch -----------------------------------------------------------------------------------
    def _batch_prompts(self, epoch: int, n: int) -> list:
        """The global rollout batch's prompts (identical on every process); GRPO groups are consecutive. A group is
        one item k times, or, for items with a ``"group"`` entry (rewards.prompts.group_key), k items of one group
        (distinct while the group has k), so a group can compare different requests from one state."""
        total = self.cfg.sampling.batch_size * self.world
        k = getattr(self.algorithm.config, "group_size", 1)
        gen = generator(self.cfg.seed, epoch, n, "prompts")
        if not any(isinstance(p, dict) and "group" in p for p in self.prompts):
            picks = torch.randint(len(self.prompts), (total // k,), generator=gen)
            return [self.prompts[i] for i in picks.tolist() for _ in range(k)]
        members: Dict[str, List[int]] = {}
        for i, p in enumerate(self.prompts):
            members.setdefault(group_key(p), []).append(i)
        groups = list(members.values())
        out = []
        for g in torch.randint(len(groups), (total // k,), generator=gen).tolist():
            idx = groups[g]
            draw = torch.randperm(len(idx), generator=gen)[:k] if len(idx) >= k else \
                torch.randint(len(idx), (k,), generator=gen)
            out.extend(self.prompts[idx[j]] for j in draw.tolist())
        return out

    def rollout(self, epoch: int):
        s = self.cfg.sampling
        local = slice(self.rank * s.batch_size, (self.rank + 1) * s.batch_size)
        trajs, pending, prompts, decoded_first = [], [], [], None
        self.adapter.denoiser.eval()
        for n in range(s.num_batches_per_epoch):
            global_prompts = self._batch_prompts(epoch, n)
            mine = global_prompts[local]
            # conditions a modality draws (an atom count, a start state) come from per-sample generators too
            cond = self.adapter.encode_conditions(
                mine, [generator(self.cfg.seed, epoch, n, g, "conditions") for g in range(local.start, local.stop)])
            gens = [generator(self.cfg.seed, epoch, n, g, "noise") for g in range(local.start, local.stop)]
            with self.acc.autocast():
                traj = self.policy.sample(cond, generator=gens)
            decoded = self.adapter.decode(traj.x0, cond)
            if decoded_first is None:
                decoded_first = decoded
            # a reward server scores this batch while the next one samples; in process it is scored now
            pending.append(submit_reward(self.reward_fn, decoded, mine, self.acc.device))
            trajs.append(traj)
            prompts.extend(global_prompts)
            if self.out_of_time():  # train.max_minutes: the epoch trains on the batches it has
                break
        rewards = [self.acc.gather(p.result()) for p in pending]  # (global B,) in rank order = global sample order
        return _cat_trajectories(trajs), torch.cat(rewards), prompts, decoded_first

    def optimise(self, epoch: int, traj: Trajectory, advantages: torch.Tensor) -> Dict[str, float]:
        cfg, t = self.cfg, self.cfg.train
        T = traj.num_steps
        n_train = max(1, int(T * t.timestep_fraction))
        B = traj.batch_size
        s = cfg.sampling
        # global index of each local sample (batch n of this rank holds global slots n*Bg + rank*b ...); fewer
        # than num_batches_per_epoch batches when train.max_minutes ended the rollout
        gidx = [n * s.batch_size * self.world + self.rank * s.batch_size + i
                for n in range(B // s.batch_size) for i in range(s.batch_size)]
        sums: Dict[str, float] = {}
        count = 0
        self.adapter.denoiser.train()
        reference = self.policy.reference() if self.algorithm.needs_reference else None
        self.optimizer.zero_grad(set_to_none=True)  # whatever built the model may have left gradients
        # k > 1: minibatches of whole prompt groups (k consecutive samples), each group at the same steps
        k = self.algorithm.minibatch_group_size
        for inner in range(t.inner_epochs):
            groups = torch.randperm(B // k, generator=generator(cfg.seed, epoch, inner, self.rank, "shuffle"))
            order = (groups[:, None] * k + torch.arange(k)).reshape(-1)
            step_order = torch.stack([torch.randperm(T, generator=generator(cfg.seed, epoch, inner, g, "steps"))
                                      for g in gidx[::k]])[:, :n_train].repeat_interleave(k, dim=0)
            minibatches = order.split(t.batch_size)
            for m, idx in enumerate(minibatches):
                sub = traj.select(idx.to(traj.latents.device))
                adv = advantages[idx].to(self.acc.device)
                # the optimiser steps every gradient_accumulation_steps minibatches, and after the last one
                # (a rollout shortened by the time budget may not fill the last accumulation)
                steps_now = (m + 1) % t.gradient_accumulation_steps == 0 or m + 1 == len(minibatches)
                for j in range(n_train):
                    steps = step_order[idx, j]
                    x_t, x_prev, old = sub.states_at(steps)
                    batch = TransitionBatch(x_t, x_prev, steps, old, adv, sub.cond, sub.x0, T)
                    last = j == n_train - 1 and steps_now
                    with self.acc.autocast():
                        loss, metrics = self.algorithm.loss(batch, self.policy, reference)
                    self.accumulate(loss, metrics, sums, 1.0 / (n_train * t.gradient_accumulation_steps), sync=last)
                    count += 1
                if steps_now:
                    self.step_optimizer(sums, weight=n_train * t.gradient_accumulation_steps)
                    if self.out_of_time():
                        return self.reduce_metrics(sums, count)
        return self.reduce_metrics(sums, count)

    @property
    def _reward_condition(self):
        return getattr(self.algorithm.config, "reward_condition", None)

    def condition_on_rewards(self, epoch: int, traj: Trajectory, rewards: torch.Tensor, prompts: list) -> None:
        """Reward conditioning (HIVE): the rollouts sampled the plain items (HIVE's data are the editor's own
        edits of the plain instruction); re-encode each local sample's condition at the level its reward
        reached in the global batch (the same levels on every process; the conditions' own draws as in the
        rollout), so the loss teaches level k -> samples of reward level k."""
        leveled = level_items(prompts, rewards, self._reward_condition)
        b = self.cfg.sampling.batch_size
        conds = []
        for n in range(traj.batch_size // b):
            start = n * b * self.world + self.rank * b
            mine = range(self.rank * b, (self.rank + 1) * b)
            gens = [generator(self.cfg.seed, epoch, n, g, "conditions") for g in mine]
            conds.append(self.adapter.encode_conditions(leveled[start:start + b], gens))
        traj.cond = cat_conditions(conds)

    def run_epoch(self, epoch: int) -> Dict[str, float]:
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, self.rank, "torch"))  # e.g. RWR's re-noising
        start = time.perf_counter()
        traj, rewards, prompts, decoded = self.rollout(epoch)
        if self._reward_condition is not None:
            self.condition_on_rewards(epoch, traj, rewards.cpu(), prompts)
        rollout_s = time.perf_counter() - start
        # groups (GRPO) and per-prompt statistics (DDPO) are keyed by a stable text of each prompt item
        adv = self.algorithm.advantages(rewards.cpu(), [group_key(p) for p in prompts])
        b = self.cfg.sampling.batch_size
        mine = torch.cat([adv[n * b * self.world + self.rank * b:][:b] for n in range(traj.batch_size // b)])
        train_start = time.perf_counter()
        metrics = self.optimise(epoch, traj, mine)
        train_s = time.perf_counter() - train_start
        out = {"epoch": epoch, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
               **metrics, "samples_per_s": len(prompts) / rollout_s, "train_s": train_s, **self.run_info()}
        if isinstance(self.reward_fn, RewardServer):
            out["reward_server_restarts"] = self.reward_fn.restarts
        self._last_decoded = decoded
        return out
