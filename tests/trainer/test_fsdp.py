"""FSDP2 (sharded weights and optimiser state) through the real trainer on 2 CPU gloo processes: checkpoints
hold the gathered full state, and a resumed run reproduces the uninterrupted one exactly."""
import json
import os
import subprocess
import sys

import torch

from diffalign.trainer.checkpoint import latest_checkpoint, load_checkpoint
from diffalign.trainer.distributed import derive_seed
from tests.trainer.conftest import TIMING, write_yaml

WORKER = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(tmp_path, path, *overrides, port_salt=""):
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU (gloo) path, also on a GPU machine
    port = 20000 + derive_seed(str(tmp_path), "fsdp", port_salt) % 20000
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           WORKER, path, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("HISTORY "))
    return [{k: v for k, v in m.items() if k not in TIMING} for m in json.loads(line[len("HISTORY "):])]


# three 2-process runs: about 30 s on 2 quiet CPU cores
def test_fsdp2_checkpoints_are_full_and_resume_exactly(tiny_config, tmp_path):
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    full = launch(tmp_path, path, f"output_dir={tmp_path / 'full'}", port_salt="full")
    assert [m["epoch"] for m in full] == [0, 1, 2, 3] and full[0]["num_processes"] == 2
    launch(tmp_path, path, f"output_dir={tmp_path / 'part'}", "epochs=2", port_salt="part")
    resumed = launch(tmp_path, path, f"output_dir={tmp_path / 'part'}", "resume_from=latest", port_salt="resume")
    assert [m["epoch"] for m in resumed] == [2, 3]
    assert resumed == full[2:]  # the same losses, rewards, KL, grad norms: optimiser state came back exactly
    a, state = load_checkpoint(latest_checkpoint(str(tmp_path / "full")))
    b = load_checkpoint(latest_checkpoint(str(tmp_path / "part")))[0]
    from diffalign.modalities.toy import ToyAdapter
    o = tiny_config["modality"]["options"]
    shapes = {k: v.shape for k, v in ToyAdapter(["a"], dim=o["dim"], hidden=o["hidden"], pretrain_steps=0)
              .trainable_state_dict().items() if not k.startswith("prompt")}
    # whole tensors (not rank 0's shard) under the unsharded model's names, and the same after resume
    assert all(a[k].shape == s for k, s in shapes.items()), {k: (a[k].shape, s) for k, s in shapes.items()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    moments = state["optimizer"]["state"]
    assert moments and set(moments) <= set(a)
    for name, m in moments.items():
        assert m["exp_avg"].shape == a[name].shape, name  # the full Adam moments, keyed by parameter name
    final = os.path.join(tmp_path / "part", "final")
    assert os.listdir(final)
