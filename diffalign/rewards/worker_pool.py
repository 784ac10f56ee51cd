"""Run a function over many inputs in worker processes, each call under its own wall-clock timeout.

Rewards that call external engines (AutoDock Vina docking) can hang or crash on odd inputs; training must not
stall on one of them. :class:`TimeoutPool` keeps ``workers`` spawned processes; each runs one call at a time.
A call that runs past ``timeout`` seconds gets its worker killed (SIGKILL: native code ignores Python signals)
and a fresh worker started for the next call; a worker that dies mid-call (a segfault) is replaced the same
way. Every input gets a :class:`TaskResult` with a status, never a silent default:

- ``ok``: ``value`` is what the function returned;
- ``error``: the function raised; ``message`` is ``"ExceptionType: text"``;
- ``timeout``: it ran past ``timeout`` seconds;
- ``crashed``: its worker exited without answering (``message`` has the exit code).

Workers are started with the ``spawn`` method (no inherited torch threads or locks; safe with CUDA) and kept
across calls, so per-process caches (prepared receptors, imported engines) survive. ``initializer`` runs once
in each new worker before it takes a call, so imports do not eat into the first call's timeout; a worker that
fails to start raises :class:`WorkerStartError` in the caller.
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import runpy
import time
import weakref
from typing import Any, Callable, List, Optional, Sequence

__all__ = ["TaskResult", "TimeoutPool", "WorkerStartError", "STATUSES"]

STATUSES = ("ok", "error", "timeout", "crashed")
_WORKER_RUN_NAME = "__diffalign_pool_worker__"


class WorkerStartError(RuntimeError):
    """A worker process did not start (its initializer raised, or it did not report ready in time)."""


@dataclasses.dataclass
class TaskResult:
    status: str            # one of STATUSES
    value: Any = None      # the function's return value when status == "ok"
    message: str = ""      # what went wrong otherwise
    seconds: float = 0.0   # wall time of the call in its worker (up to the kill, for a timeout)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _worker_main(conn, initializer) -> None:
    """A worker's loop: run the initializer, say ready, then answer (index, fn, args) messages until None."""
    try:
        if initializer is not None:
            initializer()
    except BaseException as exc:  # reported to the parent, which raises WorkerStartError
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", ""))
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent went away
            return
        if msg is None:
            return
        index, fn, args = msg
        try:
            reply = (index, "ok", fn(*args), "")
        except BaseException as exc:
            reply = (index, "error", None, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable return value is the function's error, not a crash
            conn.send((index, "error", None, f"result not picklable: {type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx, initializer):
        self.conn, child = ctx.Pipe()
        # the worker runs this file as a script (runpy), not `diffalign.rewards.worker_pool`: importing the package
        # would import torch (seconds and ~300 MB per worker) where the called functions may not need it
        self.proc = ctx.Process(target=runpy.run_path, args=(os.path.abspath(__file__),), daemon=True,
                                kwargs={"run_name": _WORKER_RUN_NAME,
                                        "init_globals": {"_CONN": child, "_INITIALIZER": initializer}})
        self.proc.start()
        child.close()
        self.index: Optional[int] = None  # the input it is working on
        self.started = 0.0

    def wait_ready(self, start_timeout: float) -> None:
        if not self.conn.poll(start_timeout):
            self.kill()
            raise WorkerStartError(f"a worker process did not start within {start_timeout:g} s")
        try:
            kind, message = self.conn.recv()
        except EOFError:
            self.kill()
            raise WorkerStartError(f"a worker process exited while starting (exit code {self.proc.exitcode}; spawned "
                                   "workers re-import the caller's __main__, so run from a file, not stdin)") from None
        if kind != "ready":
            self.kill()
            raise WorkerStartError(f"a worker process failed to start: {message}")

    def submit(self, index: int, fn, args) -> None:
        self.index, self.started = index, time.monotonic()
        self.conn.send((index, fn, tuple(args)))

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(2)
        self.kill()


class TimeoutPool:
    """``workers`` spawned processes; ``map(fn, args_list)`` -> one :class:`TaskResult` per input, in order.

    ``fn`` must be importable by the workers (a module-level function, or a builtin). ``timeout``: seconds one
    call may run. ``start_timeout``: seconds a new worker may take to import and run ``initializer``.
    """

    def __init__(self, workers: int = 1, timeout: float = 60.0, initializer: Optional[Callable[[], None]] = None,
                 start_timeout: float = 120.0):
        if int(workers) < 1:
            raise ValueError(f"TimeoutPool: workers must be >= 1, got {workers!r}")
        if not float(timeout) > 0:
            raise ValueError(f"TimeoutPool: timeout must be > 0 seconds, got {timeout!r}")
        self.workers, self.timeout = int(workers), float(timeout)
        self.initializer, self.start_timeout = initializer, float(start_timeout)
        self._ctx = multiprocessing.get_context("spawn")
        self._live: List[_Worker] = []
        self.restarts = 0  # workers killed for a timeout or replaced after a crash, over the pool's life
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().close())

    def _start_workers(self, wanted: int) -> None:
        """Start workers up to ``min(wanted, workers)`` live ones, all at once (imports run in parallel)."""
        new = [_Worker(self._ctx, self.initializer) for _ in range(min(wanted, self.workers) - len(self._live))]
        try:
            for w in new:
                w.wait_ready(self.start_timeout)
        except WorkerStartError:
            for w in new:
                w.kill()
            raise
        self._live.extend(new)

    def _retire(self, w: _Worker) -> None:
        w.kill()
        self._live.remove(w)
        self.restarts += 1

    def map(self, fn: Callable, args_list: Sequence[Sequence[Any]]) -> List[TaskResult]:
        results: List[Optional[TaskResult]] = [None] * len(args_list)
        pending = collections.deque(enumerate(args_list))
        while pending or any(w.index is not None for w in self._live):
            busy_now = sum(w.index is not None for w in self._live)
            self._start_workers(busy_now + len(pending))
            for w in self._live:
                if w.index is None and pending:
                    index, args = pending.popleft()
                    w.submit(index, fn, args)
            busy = [w for w in self._live if w.index is not None]
            now = time.monotonic()
            wait_s = max(0.0, min(w.started + self.timeout - now for w in busy))
            multiprocessing.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], wait_s)
            for w in busy:
                elapsed = time.monotonic() - w.started
                if w.conn.poll():
                    try:
                        index, status, value, message = w.conn.recv()
                    except (EOFError, OSError):
                        results[w.index] = TaskResult("crashed", message=f"worker exited with code "
                                                      f"{w.proc.exitcode} while answering", seconds=elapsed)
                        self._retire(w)
                        continue
                    results[index] = TaskResult(status, value, message, elapsed)
                    w.index = None
                elif not w.proc.is_alive():
                    results[w.index] = TaskResult("crashed", message=f"worker exited with code {w.proc.exitcode}",
                                                  seconds=elapsed)
                    self._retire(w)
                elif elapsed > self.timeout:
                    results[w.index] = TaskResult("timeout", message=f"ran past the {self.timeout:g} s timeout",
                                                  seconds=elapsed)
                    self._retire(w)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop every worker (idempotent); the pool starts new ones if used again."""
        for w in list(self._live):
            w.stop()
        self._live = []

    def __enter__(self) -> "TimeoutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == _WORKER_RUN_NAME:  # a spawned worker (see _Worker): serve calls until the pool stops it
    _worker_main(globals()["_CONN"], globals()["_INITIALIZER"])
