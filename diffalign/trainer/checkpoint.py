"""Checkpoints that survive SIGKILL: written to a temporary folder, then renamed into place.

OUTPUT_DIR/checkpoints/epoch_000007/ holds the trainable weights (safetensors), the optimiser, the
learning-rate scheduler, the algorithm's statistics and the weights' moving average if any (state.pt).
A folder only gets its final name once complete, so ``latest`` never points at a half-written checkpoint.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file

_NAME = re.compile(r"^epoch_(\d{6})$")


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def latest_checkpoint(output_dir: str) -> Optional[str]:
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return None
    done = sorted(n for n in os.listdir(root) if _NAME.match(n))
    return os.path.join(root, done[-1]) if done else None


def save_checkpoint(output_dir: str, epoch: int, weights: Dict[str, torch.Tensor], state: Dict[str, Any],
                    keep_last: int) -> str:
    root = checkpoint_root(output_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"epoch_{epoch:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, os.path.join(tmp, "weights.safetensors"))
    torch.save(state, os.path.join(tmp, "state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    done = sorted(n for n in os.listdir(root) if _NAME.match(n))
    for old in done[:-keep_last]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def load_checkpoint(path: str):
    """(weights, state) of a checkpoint folder."""
    weights = load_file(os.path.join(path, "weights.safetensors"))
    state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=False)
    return weights, state


def resolve_resume(output_dir: str, resume_from: Optional[str]) -> Optional[str]:
    """The checkpoint folder to resume from: None (fresh start), 'latest' (None if there is none) or a path."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    return resume_from


class CheckpointedTrainer:
    """Save/load of everything exact resume needs, shared by the online and offline trainers.

    The host class provides cfg, acc (the Accelerator), adapter, optimizer, lr_scheduler, algorithm and ema.
    """

    def load(self, path: str) -> None:
        weights, state = load_checkpoint(path)
        self.adapter.load_trainable_state_dict({k: v.to(self.acc.device) for k, v in weights.items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.load_module_states(state.get("modules"), path)  # the algorithm's own modules (generator path)
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError(f"checkpoint {path!r} has no moving average of the weights, but train.ema_decay is "
                                 f"{self.cfg.train.ema_decay}: resume with the config it was written with")
            self.ema.load_state_dict(state["ema"])
        self.start_epoch = state["epoch"] + 1

    def save(self, epoch: int) -> None:
        if not self.acc.is_main_process:
            return
        state = {"epoch": epoch, "optimizer": self.optimizer.state_dict(),
                 "lr_scheduler": self.lr_scheduler.state_dict(), "algorithm": self.algorithm.state_dict(),
                 "config": self.cfg.to_dict()}
        if self.modules:  # the algorithm's own trainable modules (generator data path)
            state["modules"] = self.module_states()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        save_checkpoint(self.cfg.output_dir, epoch, self.adapter.trainable_state_dict(), state,
                        self.cfg.checkpoint.keep_last)
