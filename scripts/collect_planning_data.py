#!/usr/bin/env python
"""Collect a dataset of diverse behaviours in a MuJoCo environment on this machine (no download).

Controllers are central pattern generators: each joint's torque is a sine (amplitude, frequency, phase, bias) plus
a proportional-derivative term that holds the torso upright. A short random search draws ``--candidates`` of them,
scores each on one seeded episode (mean forward velocity, steps survived), and, among the half that survive
longest, keeps the longest survivor in each of ``--bins`` forward-velocity bins, so the kept controllers span slow
to fast, low to high gaits. Each kept controller is then refined for ``--refine`` hill-climbing steps (a perturbed
copy replaces it when it survives longer on the scoring episode with its velocity still in the bin). Every kept
controller then runs ``--episodes-per-controller`` seeded episodes, half of them with Gaussian action noise
(``--noise``). With ``--switch-every N`` those episodes hand control every N steps to another kept controller
(drawn at random, the episode's clock running on), so that the same mid-gait states are followed by several
behaviours: a planner conditioned on a requested behaviour can only learn to use the request where the data shows
more than one future from a state (with one controller per episode, the state alone tells the gait). Output: a
D4RL-style compressed .npz (observations, actions, rewards, terminals, timeouts, and ``controller``, the index of
the kept controller acting at each row) and a .json beside it with the command, seed, controller
parameters and per-controller statistics. Same command and seed, same file.

    python scripts/collect_planning_data.py --env Hopper-v5 --seed 0 --out runs/planning_data/hopper_behaviours.npz
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def cpg_action(params: dict, t: int, obs: np.ndarray, dt: float, action_dim: int) -> np.ndarray:
    """Sine torques per joint plus a PD term on the torso angle (obs[1]) and its rate (the second qvel entry
    after x_dot: obs[S_pos + 2] for Hopper-style layouts), added to the first (hip/thigh) joint of each leg."""
    phase = 2 * np.pi * params["frequency"] * t * dt + np.asarray(params["phase"])
    a = np.asarray(params["amplitude"]) * np.sin(phase) + np.asarray(params["bias"])
    a[0] += params["kp"] * obs[1] + params["kd"] * obs[params["angle_rate_index"]]
    return a[:action_dim]


def random_controller(rng: np.random.Generator, action_dim: int, angle_rate_index: int) -> dict:
    return {"amplitude": rng.uniform(0.0, 1.0, action_dim).tolist(), "frequency": float(rng.uniform(0.5, 4.0)),
            "phase": rng.uniform(0, 2 * np.pi, action_dim).tolist(),
            "bias": rng.uniform(-0.3, 0.3, action_dim).tolist(), "kp": float(rng.uniform(-3.0, 3.0)),
            "kd": float(rng.uniform(-0.5, 0.5)), "angle_rate_index": angle_rate_index}


def perturb(params: dict, rng: np.random.Generator) -> dict:
    """A nearby controller (every parameter moved by a small Gaussian step, kept in its drawing range)."""
    n = len(params["amplitude"])
    return dict(params,
                amplitude=np.clip(np.asarray(params["amplitude"]) + 0.1 * rng.standard_normal(n), 0, 1).tolist(),
                frequency=float(np.clip(params["frequency"] + 0.2 * rng.standard_normal(), 0.5, 4.0)),
                phase=(np.asarray(params["phase"]) + 0.3 * rng.standard_normal(n)).tolist(),
                bias=np.clip(np.asarray(params["bias"]) + 0.05 * rng.standard_normal(n), -0.3, 0.3).tolist(),
                kp=float(np.clip(params["kp"] + 0.3 * rng.standard_normal(), -3, 3)),
                kd=float(np.clip(params["kd"] + 0.05 * rng.standard_normal(), -0.5, 0.5)))


def run_episode(env, params, seed, max_steps, dt, noise, rng, switch=None, index=0):
    """One seeded episode of controller ``params`` (number ``index``); returns (observations, actions, rewards,
    terminated, forward velocity, controller number per step). ``switch``: (every, controllers): every ``every``
    steps a controller drawn from ``controllers`` by ``rng`` takes over (None: ``params`` throughout)."""
    obs, _ = env.reset(seed=int(seed))
    active, which = params, index
    x0 = float(env.unwrapped.data.qpos[0])
    low, high = env.action_space.low, env.action_space.high
    rows_o, rows_a, rows_r, terminated = [], [], [], False
    used = []
    for t in range(max_steps):
        if switch and t and t % switch[0] == 0:
            which = int(rng.integers(len(switch[1])))
            active = switch[1][which]
        used.append(which)
        a = cpg_action(active, t, obs, dt, len(low))
        if noise:
            a = a + noise * rng.standard_normal(len(low))
        a = np.clip(a, low, high)
        rows_o.append(obs)
        rows_a.append(a)
        obs, r, terminated, truncated, _ = env.step(a)
        rows_r.append(r)
        if terminated or truncated:
            break
    velocity = (float(env.unwrapped.data.qpos[0]) - x0) / (len(rows_a) * dt)
    return (np.asarray(rows_o, np.float32), np.asarray(rows_a, np.float32), np.asarray(rows_r, np.float32),
            bool(terminated), velocity, np.asarray(used, np.int16))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", type=int, default=1000, help="controllers drawn by the random search")
    p.add_argument("--bins", type=int, default=8, help="forward-velocity bins (one kept controller each)")
    p.add_argument("--refine", type=int, default=20, help="hill-climbing steps per kept controller")
    p.add_argument("--episodes-per-controller", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=300, help="episode length cap (env steps)")
    p.add_argument("--noise", type=float, default=0.1, help="std of the Gaussian action noise on half the episodes")
    p.add_argument("--switch-every", type=int, default=0,
                   help="hand control to a random kept controller every this many steps (0: one controller per "
                        "episode)")
    p.add_argument("--out", default="runs/planning_data/hopper_behaviours.npz")
    args = p.parse_args(argv)
    if args.switch_every < 0:
        raise SystemExit(f"--switch-every must be >= 0, got {args.switch_every}")
    if args.candidates < args.bins or args.bins < 1:
        raise SystemExit(f"--candidates ({args.candidates}) must be >= --bins ({args.bins}) >= 1")

    from diffalign.modalities.planning.data import Episode, write_episodes
    from diffalign.modalities.planning.env import env_spec, make_env

    start = time.time()
    spec = env_spec(args.env)
    n_pos = (spec.state_dim - 1) // 2  # observation = qpos[1:] (nq - 1) + qvel (nv = nq)
    angle_rate_index = n_pos + 2       # qvel = (x_dot, z_dot, torso angle rate, ...)
    env = make_env(args.env)
    rng = np.random.default_rng(args.seed)
    scored = []
    for c in range(args.candidates):
        params = random_controller(rng, spec.action_dim, angle_rate_index)
        _, acts, _, _, vel, _ = run_episode(env, params, 10_000, args.max_steps, spec.dt, 0.0, rng)
        scored.append((vel, len(acts), params))
    # bin the better-surviving half only: a controller that falls at once has a "velocity" that is its fall
    min_steps = np.median([s[1] for s in scored])
    scored = [s for s in scored if s[1] >= min_steps]
    velocities = np.array([s[0] for s in scored])
    edges = np.quantile(velocities, np.linspace(0, 1, args.bins + 1))
    kept = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        members = [s for s in scored if lo <= s[0] <= hi]
        if members:
            best = max(members, key=lambda s: (s[1], s[0]))  # the longest survivor of the bin
            for _ in range(args.refine):
                trial = perturb(best[2], rng)
                _, acts, _, _, vel, _ = run_episode(env, trial, 10_000, args.max_steps, spec.dt, 0.0, rng)
                if len(acts) > best[1] and lo <= vel <= hi:
                    best = (vel, len(acts), trial)
            kept.append(best)
    episodes, controller_ids, stats = [], [], []
    for k, (_, _, params) in enumerate(kept):
        vels, lengths = [], []
        for e in range(args.episodes_per_controller):
            noise = args.noise if e % 2 else 0.0
            switch = (args.switch_every, [c[2] for c in kept]) if args.switch_every else None
            o, a, r, term, vel, used = run_episode(env, params, args.seed * 1_000_000 + k * 1000 + e,
                                                   args.max_steps, spec.dt, noise, rng, switch, k)
            episodes.append(Episode(o, a, r, term))
            controller_ids.append(used)
            vels.append(vel)
            lengths.append(len(a))
        stats.append({"controller": k, "mean_forward_velocity": float(np.mean(vels)),
                      "mean_episode_steps": float(np.mean(lengths)), "params": params})
    env.close()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_episodes(args.out, episodes, controller=np.concatenate(controller_ids))
    meta = {"command": "python scripts/collect_planning_data.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "env": args.env, "seed": args.seed, "switch_every": args.switch_every, "episodes": len(episodes),
            "rows": int(sum(len(e) for e in episodes)),
            "seconds": round(time.time() - start, 1), "controllers": stats}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{args.out}: {meta['episodes']} episodes, {meta['rows']} rows, {len(kept)} controllers, "
          f"forward velocity {min(s['mean_forward_velocity'] for s in stats):.2f}.."
          f"{max(s['mean_forward_velocity'] for s in stats):.2f} m/s, {meta['seconds']} s")
    return meta


if __name__ == "__main__":
    main()
