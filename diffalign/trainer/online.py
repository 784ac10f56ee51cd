"""The online loop (data path ``online_rollout``): rollout -> reward -> advantage -> optimise -> log/checkpoint.

Reproducibility by construction: every random draw of an epoch comes from a generator seeded by
(seed, epoch, ...) and, for anything per sample, by the sample's *global* index. So a resumed run
needs no RNG state from the checkpoint, and 2 processes x B/2 samples draw exactly what 1 process x B
draws (prompts, initial noise, step noise, trained timesteps).
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, List

import torch

from diffalign.algorithms.base import TransitionBatch
from diffalign.mdp import Trajectory
from diffalign.modalities.base import cat_conditions
from diffalign.rewards import load_prompts
from diffalign.rewards.server import RewardServer, close_reward_fn, make_reward_fn, submit_reward
from diffalign.trainer import checkpoint as ckpt
from diffalign.trainer.builders import build_adapter, build_algorithm, build_optimizer, build_policy
from diffalign.trainer.distributed import derive_seed, generator, make_accelerator
from diffalign.trainer.logging import MetricsLogger


def _cat_trajectories(parts: List[Trajectory]) -> Trajectory:
    return Trajectory(torch.cat([p.latents for p in parts]), torch.cat([p.log_probs for p in parts]),
                      cat_conditions([p.cond for p in parts]), parts[0].step_indices)


class OnlineTrainer(ckpt.CheckpointedTrainer):
    """Trains ``cfg`` (a validated TrainConfig). ``train()`` runs the remaining epochs."""

    def __init__(self, cfg, accelerator=None):
        self.cfg = cfg
        self.acc = accelerator or make_accelerator(cfg.train.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.prompts = load_prompts(cfg.prompts.list, cfg.prompts.file)
        self.adapter = build_adapter(cfg, self.prompts, self.acc.device)
        self.policy = build_policy(cfg, self.adapter)
        self.algorithm = build_algorithm(cfg)
        # in process, or a warm reward process when reward.server.enabled
        self.reward_fn = make_reward_fn(cfg.reward, cfg.modality.name, self.adapter.rewards(), self.acc.device)
        t = cfg.train
        optimizer, scheduler = build_optimizer(t, self.adapter.trainable_parameters())
        self.adapter.denoiser, self.optimizer, self.lr_scheduler = self.acc.prepare(
            self.adapter.denoiser, optimizer, scheduler)
        self.start_epoch = 0
        resume = ckpt.resolve_resume(cfg.output_dir, cfg.resume_from)
        if resume is not None:
            self.load(resume)
        self.logger = MetricsLogger(cfg.output_dir, cfg.logging.tensorboard, self.start_epoch) \
            if self.acc.is_main_process else None


    # ---- one epoch -----------------------------------------------------------------------------------
    def _batch_prompts(self, epoch: int, n: int) -> List[str]:
        """The global rollout batch's prompts (identical on every process); GRPO groups are consecutive."""
        total = self.cfg.sampling.batch_size * self.world
        k = getattr(self.algorithm.config, "group_size", 1)
        picks = torch.randint(len(self.prompts), (total // k,), generator=generator(self.cfg.seed, epoch, n, "prompts"))
        return [self.prompts[i] for i in picks.tolist() for _ in range(k)]

    def rollout(self, epoch: int):
        s = self.cfg.sampling
        local = slice(self.rank * s.batch_size, (self.rank + 1) * s.batch_size)
        trajs, pending, prompts, decoded_first = [], [], [], None
        self.adapter.denoiser.eval()
        for n in range(s.num_batches_per_epoch):
            global_prompts = self._batch_prompts(epoch, n)
            mine = global_prompts[local]
            cond = self.adapter.encode_conditions(mine)
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
        rewards = [self.acc.gather(p.result()) for p in pending]  # (global B,) in rank order = global sample order
        return _cat_trajectories(trajs), torch.cat(rewards), prompts, decoded_first

    def optimise(self, epoch: int, traj: Trajectory, advantages: torch.Tensor) -> Dict[str, float]:
        cfg, t = self.cfg, self.cfg.train
        T = traj.num_steps
        n_train = max(1, int(T * t.timestep_fraction))
        B = traj.batch_size
        s = cfg.sampling
        # global index of each local sample (batch n of this rank holds global slots n*Bg + rank*b ...)
        gidx = [n * s.batch_size * self.world + self.rank * s.batch_size + i
                for n in range(s.num_batches_per_epoch) for i in range(s.batch_size)]
        sums: Dict[str, float] = {}
        count = 0
        self.adapter.denoiser.train()
        reference = self.policy.reference() if self.algorithm.needs_reference else None
        self.optimizer.zero_grad(set_to_none=True)  # whatever built the model may have left gradients
        for inner in range(t.inner_epochs):
            order = torch.randperm(B, generator=generator(cfg.seed, epoch, inner, self.rank, "shuffle"))
            step_order = torch.stack([torch.randperm(T, generator=generator(cfg.seed, epoch, inner, g, "steps"))
                                      for g in gidx])[:, :n_train]
            minibatches = order.split(t.batch_size)
            for m, idx in enumerate(minibatches):
                sub = traj.select(idx.to(traj.latents.device))
                adv = advantages[idx].to(self.acc.device)
                for j in range(n_train):
                    steps = step_order[idx, j]
                    x_t, x_prev, old = sub.states_at(steps)
                    batch = TransitionBatch(x_t, x_prev, steps, old, adv, sub.cond, sub.x0, T)
                    last = j == n_train - 1 and (m + 1) % t.gradient_accumulation_steps == 0
                    with self.acc.autocast():
                        loss, metrics = self.algorithm.loss(batch, self.policy, reference)
                    scale = 1.0 / (n_train * t.gradient_accumulation_steps)
                    if last:
                        self.acc.backward(loss * scale)
                    else:
                        with self.acc.no_sync(self.adapter.denoiser):
                            self.acc.backward(loss * scale)
                    metrics["loss"] = loss.detach()
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                if (m + 1) % t.gradient_accumulation_steps == 0:
                    grad_norm = self.acc.clip_grad_norm_(self.adapter.trainable_parameters(), t.max_grad_norm)
                    # weighted by the loss evaluations of this step, so dividing by count gives the mean per step
                    per_step = n_train * t.gradient_accumulation_steps
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm) * per_step
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
        local = torch.tensor([sums[k] / count for k in sorted(sums)], device=self.acc.device, dtype=torch.float64)
        mean = self.acc.reduce(local, reduction="mean")
        return {k: float(v) for k, v in zip(sorted(sums), mean.tolist())}

    def run_epoch(self, epoch: int) -> Dict[str, float]:
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, self.rank, "torch"))  # e.g. RWR's re-noising
        start = time.perf_counter()
        traj, rewards, prompts, decoded = self.rollout(epoch)
        rollout_s = time.perf_counter() - start
        adv = self.algorithm.advantages(rewards.cpu(), prompts)
        b = self.cfg.sampling.batch_size
        mine = torch.cat([adv[n * b * self.world + self.rank * b:][:b] for n in range(self.cfg.sampling.num_batches_per_epoch)])
        train_start = time.perf_counter()
        metrics = self.optimise(epoch, traj, mine)
        train_s = time.perf_counter() - train_start
        out = {"epoch": epoch, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
               **metrics, "samples_per_s": len(prompts) / rollout_s, "train_s": train_s,
               "lr": float(self.lr_scheduler.get_last_lr()[0]), "num_processes": self.world}
        if isinstance(self.reward_fn, RewardServer):
            out["reward_server_restarts"] = self.reward_fn.restarts
        self._last_decoded = decoded
        return out

    def train(self) -> List[Dict[str, float]]:
        from tqdm.auto import tqdm
        cfg = self.cfg
        history = []
        bar = tqdm(range(self.start_epoch, cfg.epochs), initial=self.start_epoch, total=cfg.epochs, desc="epochs",
                   disable=not (cfg.logging.progress_bar and self.acc.is_main_process))
        for epoch in bar:
            metrics = self.run_epoch(epoch)
            history.append(metrics)
            if self.logger is not None:
                image = None
                if cfg.logging.tensorboard and epoch % cfg.logging.image_every == 0:
                    image = self.adapter.sample_grid(self._last_decoded)
                self.logger.log(metrics, image)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4g}", loss=f"{metrics['loss']:.3g}")
            if (epoch + 1) % cfg.checkpoint.every == 0 or epoch + 1 == cfg.epochs:
                self.save(epoch)
            self.acc.wait_for_everyone()
        close_reward_fn(self.reward_fn)
        if self.logger is not None:
            self.logger.close()
            self.adapter.save_pretrained(os.path.join(cfg.output_dir, "final"))
        return history
