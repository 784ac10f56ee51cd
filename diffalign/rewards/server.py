"""A reward server: the reward runs in its own process, loaded once and kept warm across calls.

Why: a slow or fragile reward model (a large scorer, a VLM judge, a buggy user reward) should
neither block the trainer nor take it down. ``RewardServer(name, kwargs)`` spawns one worker
process (``multiprocessing`` spawn, so CUDA works in it; it talks to the trainer over a private
pipe, no network socket) that resolves and loads the reward once, on its own device, and scores
batches sent to it. The client is itself a reward callable ``(samples, prompts) -> Tensor[B]``, so
it drops in wherever a reward function is called; ``submit`` returns at once, so the caller can
sample the next batch while this one is scored.

Faults, each logged with the batch it hit:
- the worker dies (segfault, OOM kill, ``os._exit``) or a batch takes longer than ``timeout_s``:
  the worker is killed and restarted (reloading the reward) and the unanswered batches are sent
  again, up to ``retries`` times per batch; then ``RewardServerError`` is raised.
- the reward raises a Python exception: raised at once as ``RewardServerError`` with the worker's
  traceback (re-running the same inputs would raise it again).
No failed sample is ever scored 0 or dropped: a call returns one finite score per sample, or raises.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import sys
import traceback
import weakref
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence

import torch

logger = logging.getLogger(__name__)


class RewardServerError(RuntimeError):
    """The reward server could not score a batch (after its retries), or the reward itself failed."""


# ---- the worker process ----------------------------------------------------------------------------
def load_reward_fn(name: str, kwargs: Optional[Mapping[str, Any]] = None, modality: Optional[str] = None,
                   device: Any = None):
    """The reward callable ``name`` with ``kwargs`` bound, as the trainer resolves it (the modality's
    rewards first). Model rewards (registered types, reward directories) are loaded now, on ``device``."""
    from diffalign.rewards.registry import bind_reward_kwargs, resolve_reward
    kwargs = dict(kwargs or {})
    try:
        from diffalign.rewards.loading import is_model_reward, load_reward
    except ImportError:  # an older tree without model rewards
        is_model_reward = None
    if is_model_reward is not None and is_model_reward(name):
        dtype = kwargs.pop("dtype", None)
        return load_reward(name, device=device, dtype=dtype, **kwargs)
    extra = None
    if modality is not None:
        from diffalign.registry import modalities
        extra = modalities[modality].rewards()
    return bind_reward_kwargs(resolve_reward(name, extra), name, kwargs)


def _serve(conn, name, kwargs, modality, device) -> None:
    """Worker main loop: load once, then answer ("score", batch_id, samples, prompts) until "stop" or EOF."""
    try:
        device = torch.device(device)
        fn = load_reward_fn(name, kwargs, modality, device)
    except BaseException:  # report any load failure to the client rather than dying silently
        conn.send(("load_error", None, traceback.format_exc()))
        return
    conn.send(("ready", None, os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the trainer is gone
            return
        if msg[0] == "stop":
            return
        _, batch_id, samples, prompts = msg
        try:
            if isinstance(samples, torch.Tensor):
                samples = samples.to(device)
            with torch.no_grad():
                r = fn(samples, list(prompts))
            r = torch.as_tensor(r).detach().to("cpu", torch.float32)
            conn.send(("ok", batch_id, r))
        except Exception:
            conn.send(("error", batch_id, traceback.format_exc()))


@contextlib.contextmanager
def _main_not_reimported():
    """Spawn re-imports the caller's ``__main__`` script in the child, which re-runs a training script
    that lacks an ``if __name__ == "__main__"`` guard (or fails at once). The worker needs nothing from it
    (the reward is found by name), so hide the script from multiprocessing while the child starts."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__spec__", "__file__") if main is not None and hasattr(main, k)}
    try:
        if main is not None:
            main.__spec__ = None
            if "__file__" in saved:
                del main.__file__
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


# ---- the client --------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Request:
    batch_id: int
    samples: Any
    prompts: List[str]
    attempts: int = 0


class PendingScores:
    """Scores of a submitted call: ``result()`` waits for them (Tensor[B], float32, CPU)."""

    def __init__(self, server: "RewardServer", batch_ids: List[int], n: int):
        self._server, self._ids, self._n = server, batch_ids, n
        self._value: Optional[torch.Tensor] = None

    def result(self) -> torch.Tensor:
        if self._value is None:
            parts = [self._server._wait(i) for i in self._ids]
            self._value = torch.cat(parts) if parts else torch.zeros(0)
        return self._value


class RewardServer:
    """Client of one reward worker process. Use as a reward function, or ``submit(...).result()``.

    name / kwargs / modality: as ``reward.name`` / ``reward.kwargs`` / ``modality.name`` of a config.
    device: where the worker puts the reward model and the samples. timeout_s: the most one batch may
    take (per attempt); retries: restarts allowed per batch after a crash or timeout; batch_size:
    samples per request (0: each call is one request); startup_timeout_s: the most loading may take.
    """

    def __init__(self, name: str, kwargs: Optional[Mapping[str, Any]] = None, modality: Optional[str] = None,
                 device: Any = "cpu", timeout_s: float = 60.0, retries: int = 2, batch_size: int = 0,
                 startup_timeout_s: float = 600.0, start: bool = True):
        if timeout_s <= 0 or startup_timeout_s <= 0:
            raise ValueError(f"reward server timeouts must be > 0, got timeout_s={timeout_s}, "
                             f"startup_timeout_s={startup_timeout_s}")
        if retries < 0 or batch_size < 0:
            raise ValueError(f"reward server retries and batch_size must be >= 0, got {retries} and {batch_size}")
        self.name, self.kwargs, self.modality = name, dict(kwargs or {}), modality
        self.device = str(device)
        self.timeout_s, self.retries, self.batch_size = float(timeout_s), int(retries), int(batch_size)
        self.startup_timeout_s = float(startup_timeout_s)
        self.restarts = 0          # worker restarts after faults, over the server's life
        self.faults: List[str] = []  # one line per fault, in order
        self.__name__ = f"reward_server[{name}]"
        self._proc = None
        self._conn = None
        self._ids = itertools.count()
        self._outstanding: Deque[_Request] = collections.deque()  # sent, not yet answered, in send order
        self._done: Dict[int, torch.Tensor] = {}
        self._finalizer = None
        if start:
            self.start()

    # ---- process management ------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the worker and wait until the reward is loaded (raises RewardServerError if it cannot)."""
        import torch.multiprocessing as mp
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_serve, args=(child, self.name, self.kwargs, self.modality, self.device),
                           daemon=True, name=f"diffalign-reward-{self.name}")
        with _main_not_reimported():
            proc.start()
        child.close()  # so the parent sees EOF when the worker dies
        self._proc, self._conn = proc, parent
        if not parent.poll(self.startup_timeout_s):
            self._kill()
            raise RewardServerError(f"reward server {self.name!r}: the reward did not load within "
                                    f"{self.startup_timeout_s:g} s (reward.server.startup_timeout_s)")
        try:
            kind, _, info = parent.recv()
        except (EOFError, OSError):
            code = self._kill()
            raise RewardServerError(f"reward server {self.name!r}: the worker process died while loading the "
                                    f"reward (exit code {code})") from None
        if kind == "load_error":
            self._kill()
            raise RewardServerError(f"reward server {self.name!r}: loading the reward failed in the worker:\n{info}")
        self._finalizer = weakref.finalize(self, RewardServer._shutdown, proc, parent)
        logger.info("reward server %r ready (pid %s, device %s)", self.name, info, self.device)

    @staticmethod
    def _shutdown(proc, conn) -> None:
        try:
            conn.send(("stop",))
        except Exception:
            pass
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        conn.close()

    def _kill(self) -> Optional[int]:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        proc, self._proc = self._proc, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if proc is None:
            return None
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        return proc.exitcode

    def close(self) -> None:
        """Stop the worker (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._proc = self._conn = None
        self._outstanding.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    # ---- scoring ------------------------------------------------------------------------------------
    def _send(self, req: _Request) -> None:
        try:
            self._conn.send(("score", req.batch_id, req.samples, req.prompts))
        except (OSError, ValueError):  # a dead worker: _wait notices and restarts it
            pass

    def submit(self, samples, prompts: Sequence[str]) -> PendingScores:
        """Send the samples for scoring and return at once; ``.result()`` waits for the scores."""
        if self._conn is None:
            self.start()
        prompts = [str(p) for p in prompts]
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu()  # shared memory, not CUDA IPC: the worker may sit on another device
        n = len(prompts)
        step = self.batch_size or max(n, 1)
        ids = []
        for start in range(0, n, step):
            req = _Request(next(self._ids), samples[start:start + step], prompts[start:start + step])
            self._outstanding.append(req)
            self._send(req)
            ids.append(req.batch_id)
        return PendingScores(self, ids, n)

    def __call__(self, samples, prompts: Sequence[str]) -> torch.Tensor:
        return self.submit(samples, prompts).result()

    def _fault(self, req: _Request, what: str) -> None:
        """Log a crash/timeout of ``req``, then restart the worker and resend what it had not answered."""
        req.attempts += 1
        line = (f"reward server {self.name!r}: batch {req.batch_id} ({len(req.prompts)} samples) {what} "
                f"(attempt {req.attempts} of {self.retries + 1})")
        self.faults.append(line)
        code = self._kill()
        if req.attempts > self.retries:
            logger.error("%s; giving up", line)
            self._outstanding.clear()
            raise RewardServerError(f"{line}; giving up after {req.attempts} attempts "
                                    f"(reward.server.retries = {self.retries}, worker exit code {code}). "
                                    "No score was substituted for the failed samples.")
        logger.warning("%s; restarting the reward process", line)
        self.restarts += 1
        self.start()
        for pending in self._outstanding:
            self._send(pending)

    def _wait(self, batch_id: int) -> torch.Tensor:
        while batch_id not in self._done:
            if not self._outstanding:
                raise RewardServerError(f"reward server {self.name!r}: batch {batch_id} was lost "
                                        "(an earlier failure dropped it)")
            head = self._outstanding[0]  # the worker answers in send order
            try:
                ready = self._conn.poll(self.timeout_s)
                msg = self._conn.recv() if ready else None
            except (EOFError, OSError):
                code = None
                if self._proc is not None:
                    self._proc.join(timeout=5)
                    code = self._proc.exitcode
                self._fault(head, f"crashed the reward process (exit code {code})")
                continue
            if msg is None:
                self._fault(head, f"timed out after {self.timeout_s:g} s (reward.server.timeout_s)")
                continue
            kind, got, payload = msg
            if got != head.batch_id:  # cannot happen with one in-order worker; never mis-assign scores
                raise RewardServerError(f"reward server {self.name!r}: answer for batch {got}, expected {head.batch_id}")
            self._outstanding.popleft()
            if kind == "error":
                self._outstanding.clear()
                self.faults.append(f"reward server {self.name!r}: batch {got} raised in the reward")
                logger.error("reward server %r: batch %s raised in the reward:\n%s", self.name, got, payload)
                raise RewardServerError(f"reward server {self.name!r}: the reward raised on batch {got} "
                                        f"({len(head.prompts)} samples):\n{payload}")
            if payload.shape != (len(head.prompts),) or not torch.isfinite(payload).all():
                self._outstanding.clear()
                line = (f"reward server {self.name!r}: batch {got} got scores of shape {tuple(payload.shape)} "
                        f"({payload.tolist()}), expected {len(head.prompts)} finite values")
                self.faults.append(line)
                logger.error("%s", line)
                raise RewardServerError(line)
            self._done[got] = payload
        return self._done.pop(batch_id)


# ---- what the trainer uses ------------------------------------------------------------------------------
def make_reward_fn(reward_cfg, modality: Optional[str], rewards: Optional[Mapping[str, Any]] = None,
                   device: Any = "cpu"):
    """The reward callable of a config's ``reward`` section: in process, or a ``RewardServer`` when
    ``reward.server.enabled`` (then on ``reward.server.device``, default ``device``)."""
    server = getattr(reward_cfg, "server", None)
    if server is not None and server.enabled:
        return RewardServer(reward_cfg.name, reward_cfg.kwargs, modality, server.device or str(device),
                            timeout_s=server.timeout_s, retries=server.retries, batch_size=server.batch_size,
                            startup_timeout_s=server.startup_timeout_s)
    from diffalign.rewards.registry import bind_reward_kwargs, resolve_reward
    return bind_reward_kwargs(resolve_reward(reward_cfg.name, rewards), reward_cfg.name, reward_cfg.kwargs)


class _Ready:
    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def submit_reward(fn, samples, prompts: Sequence[str], device):
    """Start scoring: on a ``RewardServer`` this returns at once (the worker scores in the background);
    any other reward is called now. ``.result()`` gives the checked scores (``call_reward``'s checks) on ``device``."""
    from diffalign.rewards.registry import call_reward
    pending = fn.submit(samples, prompts) if isinstance(fn, RewardServer) else None
    if pending is None:
        return _Ready(call_reward(fn, samples, prompts, device))
    return _Checked(pending, prompts, device)


class _Checked:
    def __init__(self, pending: PendingScores, prompts, device):
        self._pending, self._prompts, self._device = pending, list(prompts), device

    def result(self) -> torch.Tensor:
        from diffalign.rewards.registry import call_reward
        return call_reward(lambda _s, _p: self._pending.result(), None, self._prompts, self._device)


def close_reward_fn(fn) -> None:
    """Stop ``fn``'s worker if it is a ``RewardServer``; nothing otherwise."""
    if isinstance(fn, RewardServer):
        fn.close()
