"""Checkpoints that survive SIGKILL, refuse damaged or unsafe files by name, and gather sharded (FSDP2) state.

OUTPUT_DIR/checkpoints/epoch_000007/ holds the trainable weights (weights.safetensors), the optimiser, the
learning-rate scheduler, the algorithm's statistics and the weights' moving average if any (state.pt).

- Atomic: a checkpoint is written to ``epoch_000007.tmp`` (files fsync'ed), then renamed; a folder being
  replaced or pruned is first renamed away (``.old``), so a kill at any point leaves no half-written folder
  under a final name, and ``latest`` never points at one.
- Damage (a truncated or corrupted file, e.g. a disk filled up or a partial copy) raises
  :class:`CheckpointError` naming the folder and file. ``resume_from=latest`` checks the newest checkpoint first
  and falls back to the newest intact one, with a warning naming each folder it skipped and why.
- Safe: ``state.pt`` loads with ``torch.load(weights_only=True)`` (tensors and plain Python types only), so a
  checkpoint someone sent you cannot run code when you resume from it; anything else is refused with
  :class:`UnsafeCheckpointError`.
- Sharded: when the denoiser is sharded by FSDP2 (``accelerate`` with ``fsdp_version: 2``, i.e. torch's
  ``fully_shard``), every rank takes part in gathering the full weights (the adapter's trainable_state_dict,
  DTensors made whole) and the full optimiser state (``torch.distributed.checkpoint.state_dict``) and rank 0
  writes them, in the same layout as an unsharded run's. On resume the weights load into the model before it
  is sharded and each rank takes its shard of the optimiser state. A checkpoint written with or without FSDP resumes either way.
  FSDP1 and a moving average of sharded weights are refused with an error saying so.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import sys
import warnings
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^epoch_(\d{6})$")
WEIGHTS, STATE = "weights.safetensors", "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be resumed from (missing, truncated or corrupted file)."""


class UnsafeCheckpointError(CheckpointError):
    """state.pt holds objects other than tensors and plain Python types (loading it could run code)."""


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def _complete(root: str) -> List[str]:
    """Final-named checkpoint folders, oldest first (``.tmp`` / ``.old`` folders are never listed)."""
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if _NAME.match(n) and os.path.isdir(os.path.join(root, n)))


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """The newest checkpoint folder by name (not checked for damage: :func:`resolve_resume` checks)."""
    root = checkpoint_root(output_dir)
    done = _complete(root)
    return os.path.join(root, done[-1]) if done else None


# ---- writing --------------------------------------------------------------------------------------------
def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on every OS
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    """Rename ``path`` away first, so a kill during the removal leaves only a ``.old`` folder behind."""
    if not os.path.exists(path):
        return
    old = path + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(output_dir: str, epoch: int, weights: Dict[str, torch.Tensor], state: Dict[str, Any],
                    keep_last: int) -> str:
    root = checkpoint_root(output_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"epoch_{epoch:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, os.path.join(tmp, WEIGHTS))
    torch.save(state, os.path.join(tmp, STATE))
    for name in (WEIGHTS, STATE, ""):  # the data, then the folder entries, reach the disk before the rename
        _fsync(os.path.join(tmp, name))
    _remove(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in _complete(root)[:-keep_last]:
        _remove(os.path.join(root, old))
    for name in os.listdir(root):  # folders a kill left half-removed
        if name.endswith(".old") and _NAME.match(name[:-4]):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return final


# ---- reading --------------------------------------------------------------------------------------------
def _damaged(path: str, name: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"checkpoint {path!r} is damaged: {name} cannot be read ({type(exc).__name__}: {exc}); "
                           f"resume from another checkpoint folder (resume_from=latest skips damaged ones)")


def check_checkpoint(path: str) -> None:
    """Raise :class:`CheckpointError` naming the folder and file if a checkpoint cannot be loaded. Cheap: reads
    the safetensors header (which must fit the file's size) and state.pt's zip directory, not the tensors."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is not a folder")
    for name in (WEIGHTS, STATE):
        if not os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(f"checkpoint {path!r} is incomplete: {name} is missing")
    try:
        with safe_open(os.path.join(path, WEIGHTS), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, WEIGHTS, exc) from exc
    try:  # torch.save writes a zip archive; a truncated one has lost its central directory (at the end)
        with zipfile.ZipFile(os.path.join(path, STATE)) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _damaged(path, STATE, exc) from exc


def load_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(weights, state) of a checkpoint folder; :class:`CheckpointError` naming folder and file if it is damaged,
    :class:`UnsafeCheckpointError` if state.pt holds anything but tensors and plain Python types."""
    check_checkpoint(path)
    try:
        weights = load_file(os.path.join(path, WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, WEIGHTS, exc) from exc
    try:
        state = torch.load(os.path.join(path, STATE), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global (a class or function to call)
        raise UnsafeCheckpointError(
            f"checkpoint {path!r}: {STATE} holds objects other than tensors and plain Python types, which could "
            f"run code when loaded; refused (torch.load weights_only=True). Only resume from checkpoints you "
            f"trust. torch said: {str(exc).splitlines()[-1] if str(exc) else exc!r}") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise _damaged(path, STATE, exc) from exc
    return weights, state


def resolve_resume(output_dir: str, resume_from: Optional[str]) -> Optional[str]:
    """The checkpoint folder to resume from: None (fresh start), 'latest' (None if there is none) or a path.

    'latest' is the newest intact checkpoint: damaged ones are skipped with a warning naming them and why
    (an error if every checkpoint is damaged). A path is checked and refused by name if damaged."""
    if resume_from is None:
        return None
    if resume_from != "latest":
        check_checkpoint(resume_from)
        return resume_from
    root = checkpoint_root(output_dir)
    skipped = []
    for name in reversed(_complete(root)):
        path = os.path.join(root, name)
        try:
            check_checkpoint(path)
        except CheckpointError as exc:
            skipped.append(str(exc))
            _warn(f"resume_from=latest: skipping {path}: {exc}")
            continue
        if skipped:
            _warn(f"resume_from=latest: resuming from {path}, the newest intact checkpoint")
        return path
    if skipped:
        raise CheckpointError(f"resume_from=latest: every checkpoint under {root!r} is damaged: " + "; ".join(skipped))
    return None


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    logger.warning(message)
    if os.environ.get("RANK", "0") == "0":  # the warnings filter may hide repeats; a resume should say so
        print(f"diffalign: {message}", file=sys.stderr)


# ---- sharded (FSDP) models ------------------------------------------------------------------------------
def fsdp_version(module: torch.nn.Module) -> int:
    """2 if ``module`` (or a submodule) is sharded by FSDP2 (``fully_shard``), 1 if wrapped by FSDP1, else 0."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # torch built without distributed
        return 0
    for m in module.modules():
        if isinstance(m, FSDPModule):
            return 2
        if isinstance(m, FullyShardedDataParallel):
            return 1
    return 0


def _full(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Whole tensors from FSDP2's sharded DTensors (an all-gather: every rank must call, with the same keys)."""
    from torch.distributed.tensor import DTensor
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in tensors.items()}


def _require_fsdp2(version: int) -> None:
    if version == 1:
        raise NotImplementedError(
            "FSDP1 (accelerate fsdp_version: 1) is not supported by diffalign's checkpoints and final weights; "
            "set fsdp_version: 2 in your accelerate config (torch's fully_shard)")


def _full_state_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


class CheckpointedTrainer:
    """Save/load of everything exact resume needs, shared by the online and offline trainers.

    The host class provides cfg, acc (the Accelerator), adapter, optimizer, lr_scheduler, algorithm and ema.
    Under FSDP2 every rank must call :meth:`save` and :meth:`load` (they gather and scatter); only rank 0 writes.
    """

    def check_sharding(self) -> None:
        """Refuse what checkpoints cannot do with the prepared model: FSDP1, or a moving average of FSDP2 shards."""
        version = fsdp_version(self.adapter.denoiser)
        if version:
            _require_fsdp2(version)
            if self.ema is not None:
                raise NotImplementedError(
                    f"train.ema_decay = {self.cfg.train.ema_decay} with an FSDP-sharded model: the moving average "
                    f"would hold each rank's shard only; set train.ema_decay: 0 or train without FSDP")

    def load_weights(self, path: str) -> None:
        """The trainable weights only, into the adapter's (unsharded) model: call before the model is sharded."""
        weights, _ = load_checkpoint(path)
        self.adapter.load_trainable_state_dict({k: v.to(self.acc.device) for k, v in weights.items()})

    def load(self, path: str, weights: bool = True) -> None:
        """Everything but the weights (and the weights too when ``weights`` and the model is not sharded; a
        sharded model gets them from :meth:`load_weights` before it is sharded)."""
        saved, state = load_checkpoint(path)
        version = fsdp_version(self.adapter.denoiser)
        if version:  # the optimiser state is full here, keyed by parameter name; each rank takes its shard
            _require_fsdp2(version)
            from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
            set_optimizer_state_dict(self.adapter.denoiser, _torch_optimizer(self.optimizer), state["optimizer"],
                                     options=_full_state_options())
        else:
            if weights:
                self.adapter.load_trainable_state_dict({k: v.to(self.acc.device) for k, v in saved.items()})
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
        version = fsdp_version(self.adapter.denoiser)
        if version:  # collectives: every rank gathers, rank 0 writes
            _require_fsdp2(version)
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
            optimizer = get_optimizer_state_dict(self.adapter.denoiser, _torch_optimizer(self.optimizer),
                                                 options=_full_state_options())
            weights = _full(self.adapter.trainable_state_dict())
        elif not self.acc.is_main_process:
            return
        else:
            optimizer, weights = self.optimizer.state_dict(), self.adapter.trainable_state_dict()
        if not self.acc.is_main_process:
            return
        state = {"epoch": epoch, "optimizer": optimizer,
                 "lr_scheduler": self.lr_scheduler.state_dict(), "algorithm": self.algorithm.state_dict(),
                 "config": self.cfg.to_dict()}
        if self.modules:  # the algorithm's own trainable modules (generator data path)
            state["modules"] = self.module_states()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        save_checkpoint(self.cfg.output_dir, epoch, weights, state, self.cfg.checkpoint.keep_last)

    def save_final(self, directory: str) -> None:
        """The run's final weights in the adapter's export format (``save_pretrained``, rank 0). Under FSDP2 every
        rank gathers the trainable weights and rank 0 writes them as the default export, trainable.safetensors."""
        version = fsdp_version(self.adapter.denoiser)
        if not version:
            if self.acc.is_main_process:
                self.adapter.save_pretrained(directory)
            return
        _require_fsdp2(version)
        weights = _full(self.adapter.trainable_state_dict())
        if not self.acc.is_main_process:
            return
        from diffalign.modalities.base import ModalityAdapter
        if type(self.adapter).save_pretrained is not ModalityAdapter.save_pretrained:
            _warn(f"{type(self.adapter).__name__}.save_pretrained cannot read FSDP-sharded weights: the final "
                  f"weights are written as {directory}/trainable.safetensors (its trainable_state_dict) instead")
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(directory, "trainable.safetensors"))
