"""Offline planning data: the D4RL / Minari readers (bad input named), segment windows, the collection script."""
import json

import h5py
import numpy as np
import pytest
import torch

from diffalign.modalities.planning import Episode, SegmentSampler, episode_rows, read_episodes, write_episodes


def flat_arrays(lengths=(5, 3, 4), terminal_last=(True, False, False)):
    """D4RL-style rows; row values encode (episode, step) so splits can be checked exactly."""
    obs, act, rew, term, tout = [], [], [], [], []
    for e, (n, t) in enumerate(zip(lengths, terminal_last)):
        for s in range(n):
            obs.append(np.full(11, 100 * e + s, np.float32))
            act.append(np.full(3, -(100 * e + s), np.float32))
            rew.append(float(s))
            term.append(t and s == n - 1)
            tout.append((not t) and s == n - 1)
    return {"observations": np.array(obs), "actions": np.array(act), "rewards": np.array(rew, np.float32),
            "terminals": np.array(term), "timeouts": np.array(tout)}


def check_split(episodes):
    assert [len(e) for e in episodes] == [5, 3, 4]
    assert [e.terminated for e in episodes] == [True, False, False]
    assert episodes[1].observations[2, 0] == 102 and episodes[2].actions[0, 0] == -200


def test_d4rl_npz_and_hdf5_split_into_episodes(tmp_path):
    arrays = flat_arrays()
    np.savez(tmp_path / "d.npz", **arrays)
    check_split(read_episodes(str(tmp_path / "d.npz"), state_dim=11, action_dim=3))
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        for k, v in arrays.items():
            f[k] = v
    check_split(read_episodes(str(tmp_path / "d.hdf5")))


def test_minari_hdf5_pairs_states_with_actions(tmp_path):
    with h5py.File(tmp_path / "m.hdf5", "w") as f:
        for e, n in enumerate([4, 2]):
            g = f.create_group(f"episode_{e}")
            g["observations"] = np.arange((n + 1) * 11, dtype=np.float32).reshape(n + 1, 11) + 1000 * e
            g["actions"] = np.ones((n, 3), np.float32)
            g["rewards"] = np.zeros(n, np.float32)
            g["terminations"] = np.array([False] * (n - 1) + [e == 0])
            g["truncations"] = np.array([False] * (n - 1) + [e == 1])
    eps = read_episodes(str(tmp_path / "m.hdf5"))
    assert [len(e) for e in eps] == [4, 2] and [e.terminated for e in eps] == [True, False]
    assert eps[1].observations[0, 0] == 1000  # the final observation (no action) is dropped


def test_bad_files_are_named(tmp_path):
    arrays = flat_arrays()
    arrays["observations"][6, 4] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ValueError, match=r"nan.npz: observations row 6 is not finite"):
        read_episodes(str(tmp_path / "nan.npz"))
    arrays = flat_arrays()
    del arrays["actions"]
    np.savez(tmp_path / "noact.npz", **arrays)
    with pytest.raises(ValueError, match=r"noact.npz: missing key actions"):
        read_episodes(str(tmp_path / "noact.npz"))
    arrays = flat_arrays()
    arrays["rewards"] = arrays["rewards"][:-2]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(ValueError, match=r"short.npz: rewards has 10 rows, observations 12"):
        read_episodes(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "ok.npz", **flat_arrays())
    with pytest.raises(ValueError, match=r"observations have 11 dims, the environment needs 17"):
        read_episodes(str(tmp_path / "ok.npz"), state_dim=17)
    with pytest.raises(ValueError, match="unknown extension '.csv'"):
        (tmp_path / "x.csv").write_text("1,2")
        read_episodes(str(tmp_path / "x.csv"))
    with h5py.File(tmp_path / "m.hdf5", "w") as f:
        g = f.create_group("episode_0")
        g["observations"], g["actions"] = np.zeros((3, 11)), np.zeros((3, 3))
        g["rewards"], g["terminations"] = np.zeros(3), np.zeros(3, bool)
    with pytest.raises(ValueError, match=r"m.hdf5:episode_0: a Minari episode has one observation more"):
        read_episodes(str(tmp_path / "m.hdf5"))


def test_write_then_read_round_trips(tmp_path):
    eps = [Episode(np.random.rand(n, 11).astype(np.float32), np.random.rand(n, 3).astype(np.float32),
                   np.random.rand(n).astype(np.float32), t) for n, t in ((6, True), (4, False))]
    back = read_episodes(write_episodes(str(tmp_path / "w.npz"), eps))
    for a, b in zip(eps, back):
        assert np.array_equal(a.rows(), b.rows()) and np.array_equal(a.rewards, b.rewards) and a.terminated == b.terminated
    assert episode_rows(back).shape == (10, 14)


def test_segments_stay_inside_episodes(tmp_path):
    np.savez(tmp_path / "d.npz", **flat_arrays())
    sampler = SegmentSampler(read_episodes(str(tmp_path / "d.npz")), horizon=3)
    assert len(sampler) == (5 - 2) + (3 - 2) + (4 - 2)
    for k in range(len(sampler)):
        w = sampler[k]
        assert w.shape == (3, 14)
        assert len({int(v) // 100 for v in w[:, 0]}) == 1  # one episode per window
        assert torch.equal(w[1:, 0] - w[:-1, 0], torch.ones(2))  # consecutive steps
    batch = sampler.sample(7, torch.Generator().manual_seed(0))
    assert batch.shape == (7, 3, 14) and torch.equal(batch, sampler.sample(7, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="no episode is as long as the horizon 6"):
        SegmentSampler(read_episodes(str(tmp_path / "d.npz")), horizon=6)


def test_collection_is_reproducible_by_seed(tmp_path):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "collect", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "collect_planning_data.py"))
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    args = ["--candidates", "12", "--bins", "3", "--refine", "3", "--episodes-per-controller", "2", "--max-steps", "40"]
    a = collect.main(args + ["--out", str(tmp_path / "a.npz")])
    collect.main(args + ["--out", str(tmp_path / "b.npz")])
    za, zb = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(za[k], zb[k]) for k in za.files)
    eps = read_episodes(str(tmp_path / "a.npz"), state_dim=11, action_dim=3)
    assert len(eps) == a["episodes"] == 2 * len(a["controllers"]) and len(set(za["controller"].tolist())) == len(a["controllers"])
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["seed"] == 0 and "--candidates 12" in meta["command"]
    # --switch-every: control changes hands only at multiples of it, so one episode shows several controllers
    collect.main(args + ["--episodes-per-controller", "6", "--switch-every", "5", "--out", str(tmp_path / "s.npz")])
    zs = np.load(tmp_path / "s.npz")
    ends = np.flatnonzero(zs["terminals"] | zs["timeouts"]) + 1
    switched = 0
    for lo, hi in zip(np.r_[0, ends[:-1]], ends):
        c = zs["controller"][lo:hi]
        changes = np.flatnonzero(np.diff(c)) + 1
        assert all(t % 5 == 0 for t in changes)
        switched += len(changes) > 0
    assert switched > 0
