"""AlignDiff's pipeline that makes the planning demo's shipped model (scripts/train_planning_demo_model.py).

From a behaviour dataset (episodes of several controllers, scripts/collect_planning_data.py):

1. :func:`segment_windows`: every ``horizon``-step window of every episode (stride ``stride``), (N, H, S + A);
2. :func:`label_segments`: random window pairs labelled by the synthetic annotator (which segment shows more of
   an attribute, with noise; diffalign.rewards.behaviour_annotator), written in the segment-label layout;
3. :func:`train_strength_model`: AlignDiff's attribute strength model trained by the reward trainer
   (``diffalign reward train``'s RewardTrainer, model.kind trajectory, Bradley-Terry per attribute), then
   calibrated on the windows (min-max of its scores, AlignDiff's eval.py normalisation);
4. :func:`relabel` (diffalign.rewards.attribute_strength) gives every window its strengths in [0, 1];
5. :func:`train_planner`: the attribute-conditioned planner fitted to the windows with their strengths, each
   attribute masked out with probability ``drop`` (AlignDiff's masked attribute training, which
   classifier-free guidance needs);
6. :func:`fit_inverse_dynamics`: an inverse-dynamics model a_t = f(s_t, s_t+1) on the dataset's transitions
   (Decision Diffuser's way of acting on a plan of states): executed closed loop toward the planned states it
   realises the plan's behaviour, where the plan's own actions replayed open loop drift from it.

The shipped folder: the planner (planner.json, denoiser.safetensors), the inverse dynamics
(inverse_dynamics.safetensors), ``strength/`` (the strength model) and ``training.json`` (command, seed, wall time
of each stage, data and accuracy).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Sequence

import torch

ENV = "Hopper-v5"
ATTRIBUTES = ("speed", "jump_height")  # what a request can name (AlignDiff's "how fast", "how high")
HORIZON = 32                            # planner horizon = strength model segment length (0.256 s of Hopper)
STRENGTH_DIR = "strength"
TRAINING_FILE = "training.json"


def segment_windows(episodes: Sequence[Any], horizon: int = HORIZON, stride: int = 4) -> torch.Tensor:
    """(N, horizon, S + A) windows starting every ``stride`` steps inside each episode."""
    if stride < 1:
        raise ValueError(f"window stride must be >= 1, got {stride}")
    out = [torch.as_tensor(e.rows()[s:s + horizon]) for e in episodes
           for s in range(0, len(e) - horizon + 1, stride)]
    if not out:
        raise ValueError(f"no episode is as long as the horizon {horizon} "
                         f"(longest {max((len(e) for e in episodes), default=0)})")
    return torch.stack(out).float()


def label_segments(windows: torch.Tensor, directory: str, aspects: Sequence[str] = ATTRIBUTES,
                   num_pairs: int = 3000, temperature: float = 0.05, seed: int = 0) -> str:
    """Annotate ``num_pairs`` random window pairs (synthetic annotator, noisy by ``temperature`` in normalised
    attribute units) and write them as directory/labels.jsonl + segments.npz; returns the JSONL path."""
    from diffalign.data.segment_labels import write_segment_labels
    from diffalign.rewards.behaviour_annotator import annotate
    ann = annotate(windows, list(aspects), num_pairs, "hopper", temperature, seed=seed)
    pairs = [(int(a), int(b)) for a, b in ann.pairs.tolist()]
    return write_segment_labels(directory, windows, pairs, ann.attributes, ann.labels.tolist())


def train_strength_model(labels: str, windows: torch.Tensor, output_dir: str, aspects: Sequence[str] = ATTRIBUTES,
                         epochs: int = 15, seed: int = 0):
    """(calibrated model, trainer summary): the reward trainer on the labels, then min-max calibration on
    ``windows`` so that ``model.strengths`` of a dataset window is its relabelled strength."""
    from diffalign.rewards.attribute_strength import calibrate, load_attribute_strength
    from diffalign.trainer.reward_model import load_reward_train_config, train_reward_model
    cfg = load_reward_train_config(data={
        "output_dir": output_dir, "seed": seed, "epochs": epochs,
        "model": {"kind": "trajectory", "aspects": list(aspects),
                  "encoder": {"encoder": "transformer", "width": 32, "layers": 2, "heads": 2}},
        "loss": {"name": "bt", "tie_policy": "half"},
        "data": {"path": labels, "format": "segments", "eval_fraction": 0.2},
        "train": {"batch_size": 64, "learning_rate": 0.003},
        "logging": {"tensorboard": False, "progress_bar": False}})
    summary = train_reward_model(cfg)
    model = load_attribute_strength(os.path.join(output_dir, "reward"))
    return calibrate(model, windows), summary


def train_planner(windows: torch.Tensor, strengths: torch.Tensor, steps: int, seed: int = 0,
                  aspects: Sequence[str] = ATTRIBUTES, channels: Sequence[int] = (32, 64),
                  batch_size: int = 64, learning_rate: float = 2e-3, drop: float = 0.25):
    """The attribute-conditioned U-Net planner fitted to the windows and strengths; (adapter, losses)."""
    from diffalign.modalities.planning import Normalizer, PlanningAdapter, build_denoiser, fit_planner
    from diffalign.modalities.planning.adapter import tiny_denoiser_config
    d = windows.shape[-1]
    config = dict(tiny_denoiser_config("unet1d", d, len(aspects), windows.shape[1]),
                  block_out_channels=list(channels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser = build_denoiser(config)
    adapter = PlanningAdapter(denoiser, config, ENV, windows.shape[1], Normalizer.fit(windows), aspects)
    losses = fit_planner(adapter, windows, steps, batch_size, learning_rate, seed, strengths, drop)
    return adapter, losses


def fit_inverse_dynamics(episodes: Sequence[Any], steps: int = 2000, seed: int = 0, hidden: int = 128):
    """(model, held-out mean squared action error, action variance): inverse dynamics on every transition of
    ``episodes``, every tenth transition held out."""
    import numpy as np

    from diffalign.modalities.planning import train_inverse_dynamics
    states = np.concatenate([e.observations[:-1] for e in episodes if len(e) > 1])
    nexts = np.concatenate([e.observations[1:] for e in episodes if len(e) > 1])
    actions = np.concatenate([e.actions[:-1] for e in episodes if len(e) > 1])
    held = np.arange(len(states)) % 10 == 0
    model = train_inverse_dynamics(states[~held], nexts[~held], actions[~held], steps=steps, hidden=hidden, seed=seed)
    with torch.no_grad():
        pred = model(torch.as_tensor(states[held]).float(), torch.as_tensor(nexts[held]).float())
    return model, float(((pred - torch.as_tensor(actions[held]).float()) ** 2).mean()), float(actions[held].var())


def build_demo_model(dataset: str, output: str, seed: int = 0, planner_steps: int = 3000, num_pairs: int = 3000,
                     strength_epochs: int = 15, stride: int = 4, command: Optional[str] = None,
                     inverse_dynamics_steps: int = 2000) -> Dict[str, Any]:
    """Run the whole pipeline on ``dataset`` and write the shipped folder ``output``; returns training.json."""
    import json

    from diffalign.modalities.planning import read_episodes
    from diffalign.rewards.attribute_strength import relabel
    seconds: Dict[str, float] = {}
    t = time.perf_counter()
    episodes = read_episodes(dataset)
    windows = segment_windows(episodes, HORIZON, stride)
    work = os.path.join(output, "_work")
    labels = label_segments(windows, os.path.join(work, "labels"), num_pairs=num_pairs, seed=seed)
    seconds["label"] = time.perf_counter() - t
    t = time.perf_counter()
    strength, summary = train_strength_model(labels, windows, os.path.join(work, "strength"), epochs=strength_epochs,
                                             seed=seed)
    seconds["strength_model"] = time.perf_counter() - t
    t = time.perf_counter()
    strengths = relabel(windows, strength)
    adapter, losses = train_planner(windows, strengths, planner_steps, seed)
    seconds["planner"] = time.perf_counter() - t
    t = time.perf_counter()
    idm, idm_error, action_var = fit_inverse_dynamics(episodes, inverse_dynamics_steps, seed)
    seconds["inverse_dynamics"] = time.perf_counter() - t
    tail = max(1, min(50, len(losses) // 5))  # the last losses' mean (one batch's loss is noisy)
    adapter.save_pretrained(output)
    from diffalign.modalities.planning import save_inverse_dynamics
    save_inverse_dynamics(idm, output)
    strength.save(os.path.join(output, STRENGTH_DIR), extra={"training": summary})
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    meta = {"command": command, "seed": seed, "dataset": dataset, "episodes": len(episodes),
            "windows": int(windows.shape[0]), "horizon": HORIZON, "stride": stride, "attributes": list(ATTRIBUTES),
            "label_pairs": num_pairs, "strength_held_out_accuracy": summary.get("held_out_accuracy_by_aspect"),
            "planner_steps": planner_steps, "planner_loss_first_last": [losses[0], float(sum(losses[-tail:]) / tail)],
            "strength_mean_by_attribute": strengths.mean(0).tolist(),
            "inverse_dynamics": {"steps": inverse_dynamics_steps, "held_out_action_mse": idm_error,
                                 "action_variance": action_var},
            "seconds": seconds,
            "torch_threads": torch.get_num_threads()}
    with open(os.path.join(output, TRAINING_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    return meta
