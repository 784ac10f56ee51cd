#!/usr/bin/env python
"""Make the planning demo's shipped model (diffalign/assets/planning_demo_model): collect a Hopper-v5 behaviour
dataset with scripts/collect_planning_data.py, then AlignDiff's pipeline (diffalign/demo/planning_model.py:
annotate window pairs, train the attribute strength model with the reward trainer, relabel, train the
attribute-conditioned planner and the inverse dynamics that executes its plans). Records the command, seed, CPU
and wall time in the folder's training.json.

    OMP_NUM_THREADS=1 python scripts/train_planning_demo_model.py --seed 0 --out diffalign/assets/planning_demo_model
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="diffalign/assets/planning_demo_model")
    p.add_argument("--dataset", default=None, help="an existing dataset (.npz/.hdf5) instead of collecting one")
    p.add_argument("--candidates", type=int, default=1000, help="collect_planning_data.py --candidates")
    p.add_argument("--episodes-per-controller", type=int, default=8,
                   help="collect_planning_data.py --episodes-per-controller")
    p.add_argument("--switch-every", type=int, default=0, help="collect_planning_data.py --switch-every")
    p.add_argument("--planner-steps", type=int, default=3000)
    p.add_argument("--pairs", type=int, default=3000, help="annotated window pairs")
    p.add_argument("--strength-epochs", type=int, default=15)
    p.add_argument("--stride", type=int, default=4, help="steps between the starts of consecutive training windows")
    p.add_argument("--inverse-dynamics-steps", type=int, default=2000)
    args = p.parse_args(argv)
    import torch

    from diffalign.demo.planning_model import TRAINING_FILE, build_demo_model
    from diffalign.trainer.precision import cpu_info
    torch.manual_seed(args.seed)
    start = time.time()
    dataset = args.dataset
    collect_seconds = 0.0
    if dataset is None:
        dataset = os.path.join("runs", "planning_demo_data", f"hopper_seed{args.seed}.npz")
        collect = os.path.join(os.path.dirname(os.path.abspath(__file__)), "collect_planning_data.py")
        saved = sys.argv
        sys.argv = [collect, "--seed", str(args.seed), "--candidates", str(args.candidates), "--episodes-per-controller",
                    str(args.episodes_per_controller), "--switch-every", str(args.switch_every), "--out", dataset]
        try:
            runpy.run_path(collect, run_name="__main__")
        finally:
            sys.argv = saved
        collect_seconds = time.time() - start
    command = "python scripts/train_planning_demo_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = build_demo_model(dataset, args.out, args.seed, args.planner_steps, args.pairs, args.strength_epochs,
                            args.stride, command=command, inverse_dynamics_steps=args.inverse_dynamics_steps)
    meta["seconds"]["collect"] = collect_seconds
    meta["seconds"]["total"] = time.time() - start
    meta["hardware"] = cpu_info()
    with open(os.path.join(args.out, TRAINING_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps({k: meta[k] for k in ("seconds", "strength_held_out_accuracy", "planner_loss_first_last")}))
    return meta


if __name__ == "__main__":
    main()
