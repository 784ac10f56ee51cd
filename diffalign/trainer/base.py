"""What every training loop shares: set-up, gradient accumulation, metric reduction and the epoch loop.

A loop (online.py, offline.py, differentiable.py, step_pairs.py) subclasses :class:`Trainer` and
implements ``run_epoch(epoch) -> metrics``; it may override ``build_reward_fn`` (which reward table,
in process or served), ``progress_postfix`` (what the progress bar shows) and ``close``.

Set-up order: accelerate (which picks its CPU backend itself on GPU-less machines), the algorithm, the
prompts, the adapter and policy, the reward, AdamW with linear warm-up prepared by accelerate, then a
resume from ``resume_from`` and the metrics logger (main process only). With ``train.ema_decay`` > 0 it also
keeps a moving average of the trainable weights, which the run's ``final`` weights are.

The generator data path (trainer/generator.py) trains modules the algorithm owns instead of the denoiser
(``Algorithm.trainable_modules``, e.g. SDS's generator): they are what accelerate prepares, the optimiser, the
gradient clipping and the moving average see, what checkpoints carry besides the (frozen) adapter weights, and
what ``final`` holds (one ``<name>.safetensors`` per module). The denoiser is frozen there: it is the critic.

``train.max_minutes`` bounds ``train()``'s wall time: the loops ask :meth:`Trainer.out_of_time` between their
units of work (a rollout batch, an optimiser step), finish the unit they are in, and end the epoch early; the
run then checkpoints and saves its final weights as after its last epoch. An epoch's wall time is no unit: on a
slow machine (bf16 autocast without bf16 hardware took 8 minutes an epoch of the demo) the budget still holds.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from diffalign.algorithms.base import DataPath
from diffalign.modalities.base import unwrap

from diffalign.config import config_prompts
from diffalign.trainer import checkpoint as ckpt
from diffalign.trainer.builders import build_adapter, build_algorithm, build_ema, build_optimizer, build_policy
from diffalign.trainer.distributed import make_accelerator
from diffalign.trainer.logging import MetricsLogger

__all__ = ["Trainer"]


class Trainer(ckpt.CheckpointedTrainer):
    """Shared set-up and epoch loop; ``train()`` runs the remaining epochs and returns their metrics."""

    def __init__(self, cfg, accelerator=None, *, prompts: Optional[Sequence[str]] = None, algorithm=None):
        self.cfg = cfg
        self.acc = accelerator or make_accelerator(cfg.train.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.algorithm = algorithm if algorithm is not None else build_algorithm(cfg)
        self.prompts = list(prompts) if prompts is not None else config_prompts(cfg)
        self.adapter = build_adapter(cfg, self.prompts, self.acc.device)
        self.policy = build_policy(cfg, self.adapter)
        self.modules = self._build_modules()  # algorithm-owned trainables (generator data path), else {}
        self.reward_fn = self.build_reward_fn()
        resume = ckpt.resolve_resume(cfg.output_dir, cfg.resume_from)
        if resume is not None:  # the weights before accelerate may shard the model (FSDP), the rest after
            self.load_weights(resume)
        optimizer, scheduler = build_optimizer(cfg.train, self.trainable_parameters())
        if self.modules:
            *prepared, self.optimizer, self.lr_scheduler = self.acc.prepare(*self.modules.values(), optimizer, scheduler)
            self.modules = dict(zip(self.modules, prepared))
        else:
            self.adapter.denoiser, self.optimizer, self.lr_scheduler = self.acc.prepare(
                self.adapter.denoiser, optimizer, scheduler)
        self.ema = build_ema(cfg.train, self.trainable_parameters())
        self.check_sharding()
        self.start_epoch = 0
        if resume is not None:
            self.load(resume, weights=False)
        self.logger = MetricsLogger(cfg.output_dir, cfg.logging.tensorboard, self.start_epoch) \
            if self.acc.is_main_process else None
        self._last_decoded = None  # samples of the last epoch, for the tensorboard image grid
        self._deadline: Optional[float] = None  # time.monotonic() at which train.max_minutes runs out
        self._out_of_time = False

    # ---- what is trained --------------------------------------------------------------------------------
    def _build_modules(self) -> Dict[str, nn.Module]:
        """The algorithm's own trainable modules on the generator data path (the denoiser is then frozen)."""
        if self.algorithm.data_path != DataPath.GENERATOR:
            return {}
        cond = self.adapter.encode_conditions(self.prompts[:1])
        shape = tuple(self.adapter.initial_noise(cond, torch.Generator(device=self.acc.device).manual_seed(0)).shape[1:])
        modules = self.algorithm.trainable_modules(self.adapter, shape)
        if not modules or not any(p.requires_grad for m in modules.values() for p in m.parameters()):
            raise ValueError(f"algorithm {self.algorithm.name!r} is on the generator data path but its "
                             f"trainable_modules() gave no trainable parameters")
        self.adapter.denoiser.requires_grad_(False)  # the diffusion model is a frozen critic on this path
        return {name: m.to(self.acc.device) for name, m in modules.items()}

    def trainable_parameters(self) -> List[torch.Tensor]:
        """What the optimiser trains: the algorithm's modules if it owns any, else the adapter's parameters."""
        if self.modules:
            return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        return list(self.adapter.trainable_parameters())

    def module_states(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """The algorithm-owned modules' weights by module name ({} when there are none), for checkpoints."""
        return {name: {k: v.detach().cpu().clone() for k, v in unwrap(m).state_dict().items()}
                for name, m in self.modules.items()}

    def load_module_states(self, states: Optional[Dict[str, Dict[str, torch.Tensor]]], path: str) -> None:
        """Restore ``module_states()`` from checkpoint ``path`` (states None: it has none)."""
        states = states or {}
        if sorted(states) != sorted(self.modules):
            raise ValueError(f"checkpoint {path!r} holds trainable modules {sorted(states)} but algorithm "
                             f"{self.algorithm.name!r} trains {sorted(self.modules)}: resume with the config it was "
                             f"written with")
        for name, m in self.modules.items():
            unwrap(m).load_state_dict({k: v.to(self.acc.device) for k, v in states[name].items()})

    def save_final(self, directory: str) -> None:
        """The run's final weights: the algorithm's modules (``<name>.safetensors``, rank 0) if it owns any (the
        denoiser is unchanged then), else the adapter's export (checkpoint.CheckpointedTrainer.save_final)."""
        if not self.modules:
            super().save_final(directory)
            return
        if not self.acc.is_main_process:
            return
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        for name, state in self.module_states().items():
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(directory, f"{name}.safetensors"))

    # ---- hooks ----------------------------------------------------------------------------------------
    def build_reward_fn(self):
        """The reward callable of this loop (None: the loop scores nothing)."""
        return None

    def run_epoch(self, epoch: int) -> Dict[str, float]:
        raise NotImplementedError

    def progress_postfix(self, metrics: Dict[str, float]) -> Dict[str, str]:
        return {"loss": f"{metrics['loss']:.3g}"}

    def close(self) -> None:
        """Release what the loop holds (e.g. a reward server) once training ends."""

    # ---- gradient accumulation -----------------------------------------------------------------------
    def accumulate(self, loss: torch.Tensor, metrics: Dict[str, torch.Tensor], sums: Dict[str, float],
                   scale: float, sync: bool) -> None:
        """Backward of ``loss * scale``; gradients are all-reduced only when ``sync`` (the micro-batch that
        completes an optimiser step), and the loss and metrics are added to ``sums``."""
        if sync:
            self.acc.backward(loss * scale)
        else:
            with contextlib.ExitStack() as stack:
                for model in (self.modules.values() if self.modules else [self.adapter.denoiser]):
                    stack.enter_context(self.acc.no_sync(model))
                self.acc.backward(loss * scale)
        metrics["loss"] = loss.detach()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)

    def step_optimizer(self, sums: Optional[Dict[str, float]] = None, weight: float = 1.0) -> float:
        """Clip, step, advance the schedule, clear the gradients; adds grad_norm * weight to ``sums`` (weight:
        the loss evaluations of this step, so that sums / count is the mean per step)."""
        grad_norm = float(self.acc.clip_grad_norm_(self.trainable_parameters(), self.cfg.train.max_grad_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.trainable_parameters())
        if sums is not None:
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm * weight
        return grad_norm

    def reduce_metrics(self, sums: Dict[str, float], count: int) -> Dict[str, float]:
        """Per-evaluation means of ``sums``, averaged over the processes."""
        keys = sorted(sums)
        local = torch.tensor([sums[k] / max(count, 1) for k in keys], device=self.acc.device, dtype=torch.float64)
        mean = self.acc.reduce(local, reduction="mean")
        return {k: float(v) for k, v in zip(keys, mean.tolist())}

    def run_info(self) -> Dict[str, float]:
        """What every epoch's metrics line carries besides the loop's own: learning rate, processes, threads and
        the precision the run trains in (``train.mixed_precision`` resolved for this machine)."""
        return {"lr": float(self.lr_scheduler.get_last_lr()[0]), "num_processes": self.world,
                "threads": torch.get_num_threads(), "precision": str(self.acc.mixed_precision)}

    def adapter_metrics(self) -> Dict[str, float]:
        """The adapter's own numbers since the last call (``ModalityAdapter.metrics``: decode validity, ...),
        averaged over the processes like every metric (a key one process lacks counts as 0 there)."""
        hook = getattr(self.adapter, "metrics", None)  # an adapter written before the hook existed has none
        local = hook() if hook is not None else {}
        if not isinstance(local, dict):
            raise ValueError(f"{type(self.adapter).__name__}.metrics() must return a dict, got {type(local).__name__}")
        bad = {k: v for k, v in local.items() if not isinstance(k, str) or isinstance(v, bool)
               or not isinstance(v, (int, float))}
        if bad:
            raise ValueError(f"{type(self.adapter).__name__}.metrics() must map names to numbers; got {bad!r}")
        parts = [{k: float(v) for k, v in local.items()}]
        if self.world > 1:  # processes may count different keys (an invalid-sample reason only one of them met)
            from accelerate.utils import gather_object
            parts = gather_object(parts)
        keys = sorted(set().union(*parts))
        return {k: sum(p.get(k, 0.0) for p in parts) / len(parts) for k in keys}

    # ---- the time budget (train.max_minutes) ----------------------------------------------------------
    def start_budget(self) -> None:
        """Start ``train.max_minutes``' clock (``train()`` does; a caller running epochs itself may too)."""
        minutes = self.cfg.train.max_minutes
        self._deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        self._out_of_time = False

    def out_of_time(self) -> bool:
        """True once the budget has run out; every process gets the same answer (a rank that stopped alone
        would leave the others waiting in a collective), and once True it stays True."""
        if self._deadline is None or self._out_of_time:
            return self._out_of_time
        late = time.monotonic() > self._deadline
        if self.world > 1:
            flag = torch.tensor([1.0 if late else 0.0], device=self.acc.device)
            late = bool(self.acc.reduce(flag, reduction="sum").item() > 0)
        self._out_of_time = late
        return late

    def use_average(self) -> None:
        """Replace the trainable weights by their moving average (``train.ema_decay`` > 0; else nothing), for
        the weights a run ends with. Training on afterwards would go on from the average."""
        if self.ema is not None:
            self.ema.copy_to(self.trainable_parameters())

    # ---- the epoch loop --------------------------------------------------------------------------------
    def train(self) -> List[Dict[str, float]]:
        """Run the remaining epochs (or until ``train.max_minutes``), log and checkpoint each, save ``final``;
        returns the epochs' metrics, with the adapter's own (``adapter.metrics()``, counted during the epoch).
        Each line has ``elapsed_s`` (seconds since train() began); the line of an
        epoch that the budget ended has ``stopped_by_budget`` = 1; the first line also has ``hardware``."""
        from tqdm.auto import tqdm
        from diffalign.trainer.precision import cpu_info
        cfg = self.cfg
        history = []
        self.start_budget()
        self.adapter_metrics()  # the adapter's counts start afresh: what it did before training is no epoch's
        start = time.perf_counter()
        bar = tqdm(range(self.start_epoch, cfg.epochs), initial=self.start_epoch, total=cfg.epochs, desc="epochs",
                   disable=not (cfg.logging.progress_bar and self.acc.is_main_process))
        for epoch in bar:
            metrics = self.run_epoch(epoch)
            for key, value in self.adapter_metrics().items():
                if key in metrics:
                    raise ValueError(f"{type(self.adapter).__name__}.metrics() key {key!r} collides with the "
                                     "trainer's metric of that name")
                metrics[key] = value
            stopped = self.out_of_time()
            metrics["elapsed_s"] = time.perf_counter() - start
            if stopped:
                metrics["stopped_by_budget"] = 1
            if not history:
                metrics["hardware"] = cpu_info()
            history.append(metrics)
            if self.logger is not None:
                image = None
                if cfg.logging.tensorboard and epoch % cfg.logging.image_every == 0 and self._last_decoded is not None:
                    image = self.adapter.sample_grid(self._last_decoded)
                self.logger.log(metrics, image)
            bar.set_postfix(**self.progress_postfix(metrics))
            if (epoch + 1) % cfg.checkpoint.every == 0 or epoch + 1 == cfg.epochs or stopped:
                self.save(epoch)
            self.acc.wait_for_everyone()
            if stopped:
                if self.acc.is_main_process:
                    bar.write(f"diffalign: train.max_minutes = {cfg.train.max_minutes:g} reached during epoch {epoch}; "
                              f"stopped after {metrics['elapsed_s']:.0f} s")
                break
        self.close()
        self.use_average()
        if self.logger is not None:
            self.logger.close()
        self.save_final(os.path.join(cfg.output_dir, "final"))  # every rank: FSDP gathers; rank 0 writes
        return history
