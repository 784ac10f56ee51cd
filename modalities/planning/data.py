"""Offline trajectory data: the D4RL / Minari layouts, and horizon-length windows for training planners.

Accepted files (``read_episodes``):

- D4RL-style flat arrays, in ``.npz`` or ``.hdf5``/``.h5``: ``observations`` (N, S), ``actions`` (N, A),
  ``rewards`` (N,), ``terminals`` (or ``terminations``) (N,) and ``timeouts`` (or ``truncations``) (N,); an
  episode ends at a row whose terminal or timeout is set (and at the end of the file).
- Minari-style ``.hdf5``: one group per episode (``episode_0``, ...) holding ``observations`` (T + 1, S),
  ``actions`` (T, A), ``rewards``, ``terminations``, ``truncations`` (T,); the final observation is dropped so
  that rows pair a state with the action taken in it.

Errors name the file, the key and, for non-finite values, the first bad row.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["Episode", "read_episodes", "write_episodes", "SegmentSampler", "episode_rows"]

_ALIASES = {"terminals": ("terminals", "terminations"), "timeouts": ("timeouts", "truncations")}


@dataclasses.dataclass
class Episode:
    """observations (T, S), actions (T, A), rewards (T,); terminated: whether it ended by termination."""
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool = False

    def __len__(self) -> int:
        return self.observations.shape[0]

    def rows(self) -> np.ndarray:
        """(T, S + A): the planner's layout."""
        return np.concatenate([self.observations, self.actions], axis=1)


def _pick(arrays: Dict[str, np.ndarray], key: str, path: str, required: bool = True) -> Optional[np.ndarray]:
    for name in _ALIASES.get(key, (key,)):
        if name in arrays:
            return np.asarray(arrays[name])
    if required:
        raise ValueError(f"{path}: missing key {'/'.join(_ALIASES.get(key, (key,)))} (keys present: {sorted(arrays)})")
    return None


def _check_finite(path: str, key: str, values: np.ndarray, offset: int = 0) -> None:
    bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: {key} row {int(np.argmax(bad)) + offset} is not finite ({int(bad.sum())} bad rows)")


def _split_flat(path: str, arrays: Dict[str, np.ndarray]) -> List[Episode]:
    obs, act, rew = _pick(arrays, "observations", path), _pick(arrays, "actions", path), _pick(arrays, "rewards", path)
    term = _pick(arrays, "terminals", path)
    timeouts = _pick(arrays, "timeouts", path, required=False)
    if obs.ndim != 2 or act.ndim != 2:
        raise ValueError(f"{path}: observations and actions must be 2-D, got {obs.shape} and {act.shape}")
    n = obs.shape[0]
    for key, v in (("actions", act), ("rewards", rew), ("terminals", term)) + \
            ((("timeouts", timeouts),) if timeouts is not None else ()):
        if v.shape[0] != n:
            raise ValueError(f"{path}: {key} has {v.shape[0]} rows, observations {n}")
    for key, v in (("observations", obs), ("actions", act), ("rewards", rew)):
        _check_finite(path, key, v)
    ends = term.astype(bool) | (timeouts.astype(bool) if timeouts is not None else False)
    episodes, start = [], 0
    for i in np.flatnonzero(ends).tolist() + ([n - 1] if n and not ends[-1] else []):
        episodes.append(Episode(obs[start:i + 1].astype(np.float32), act[start:i + 1].astype(np.float32),
                                rew[start:i + 1].astype(np.float32), bool(term[i])))
        start = i + 1
    return episodes


def _minari_episodes(path: str, f) -> List[Episode]:
    episodes = []
    for name in sorted((k for k in f.keys() if k.startswith("episode_")), key=lambda k: int(k.split("_")[1])):
        g = f[name]
        where = f"{path}:{name}"
        arrays = {k: np.asarray(g[k]) for k in g.keys() if hasattr(g[k], "shape")}
        obs, act = _pick(arrays, "observations", where), _pick(arrays, "actions", where)
        rew, term = _pick(arrays, "rewards", where), _pick(arrays, "terminals", where)
        if obs.shape[0] != act.shape[0] + 1:
            raise ValueError(f"{where}: a Minari episode has one observation more than actions; got "
                             f"{obs.shape[0]} and {act.shape[0]}")
        for key, v in (("observations", obs), ("actions", act), ("rewards", rew)):
            _check_finite(where, key, v)
        episodes.append(Episode(obs[:-1].astype(np.float32), act.astype(np.float32), rew.astype(np.float32),
                                bool(term[-1]) if len(term) else False))
    return episodes


def read_episodes(path: str, state_dim: Optional[int] = None, action_dim: Optional[int] = None) -> List[Episode]:
    """Episodes from a D4RL-style (.npz / .hdf5) or Minari-style (.hdf5) file; dims checked when given."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"planning dataset {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            episodes = _split_flat(path, {k: z[k] for k in z.files})
    elif ext in (".hdf5", ".h5"):
        try:
            import h5py
        except ImportError as e:
            raise ImportError(f"reading {path} needs h5py: pip install 'diffalign[planning]'") from e
        with h5py.File(path, "r") as f:
            if any(k.startswith("episode_") for k in f.keys()):
                episodes = _minari_episodes(path, f)
            else:
                episodes = _split_flat(path, {k: np.asarray(f[k]) for k in f.keys() if hasattr(f[k], "shape")})
    else:
        raise ValueError(f"planning dataset {path}: unknown extension {ext!r} (use .npz, .hdf5 or .h5)")
    if not episodes:
        raise ValueError(f"planning dataset {path} holds no episodes")
    for key, dim, got in (("observations", state_dim, episodes[0].observations.shape[1]),
                          ("actions", action_dim, episodes[0].actions.shape[1])):
        if dim is not None and got != dim:
            raise ValueError(f"{path}: {key} have {got} dims, the environment needs {dim}")
    return episodes


def write_episodes(path: str, episodes: Sequence[Episode], **extra: np.ndarray) -> str:
    """Episodes -> a compressed D4RL-style .npz (timeouts set on episodes that did not terminate);
    ``extra`` adds per-row arrays (e.g. which controller produced a row)."""
    if not episodes:
        raise ValueError("write_episodes needs at least one episode")
    terminals = [np.zeros(len(e), bool) for e in episodes]
    timeouts = [np.zeros(len(e), bool) for e in episodes]
    for e, te, to in zip(episodes, terminals, timeouts):
        (te if e.terminated else to)[-1] = True
    np.savez_compressed(path, observations=np.concatenate([e.observations for e in episodes]),
                        actions=np.concatenate([e.actions for e in episodes]),
                        rewards=np.concatenate([e.rewards for e in episodes]),
                        terminals=np.concatenate(terminals), timeouts=np.concatenate(timeouts), **extra)
    return path


def episode_rows(episodes: Sequence[Episode]) -> torch.Tensor:
    """Every (state, action) row of the episodes, (N, S + A) (what a normaliser is fitted to)."""
    return torch.as_tensor(np.concatenate([e.rows() for e in episodes]))


class SegmentSampler:
    """Every horizon-length window that lies inside one episode, as (horizon, S + A) rows."""

    def __init__(self, episodes: Sequence[Episode], horizon: int):
        if int(horizon) < 1:
            raise ValueError(f"segment horizon must be >= 1, got {horizon}")
        self.horizon = int(horizon)
        self._rows = [torch.as_tensor(e.rows()) for e in episodes]
        self._index = [(i, s) for i, r in enumerate(self._rows) for s in range(r.shape[0] - self.horizon + 1)]
        if not self._index:
            raise ValueError(f"no episode is as long as the horizon {horizon} "
                             f"(longest: {max((r.shape[0] for r in self._rows), default=0)})")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, k: int) -> torch.Tensor:
        i, s = self._index[k]
        return self._rows[i][s:s + self.horizon]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(n, horizon, S + A) windows drawn uniformly with replacement."""
        picks = torch.randint(len(self), (int(n),), generator=generator).tolist()
        return torch.stack([self[k] for k in picks])
