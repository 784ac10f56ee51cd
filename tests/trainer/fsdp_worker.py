"""One rank of an FSDP2 training run on CPU (gloo), for test_fsdp.py:
    python -m torch.distributed.run --nproc_per_node 2 tests/trainer/fsdp_worker.py CONFIG.yaml [overrides...]

accelerate shards a model with FSDP2 only on GPU-like devices (on a CPU it falls back to DDP), so this worker
hands the trainer an Accelerator whose prepare() does what accelerate's FSDP2 prepare does to the model and the
optimiser: fully_shard the denoiser over all ranks and point the optimiser at the sharded parameters.
Everything else (the loop, checkpoints, resume, final weights) is the real trainer."""
import json
import sys

import torch
from accelerate import Accelerator


class FSDP2OnCPU(Accelerator):
    def prepare(self, model, optimizer, scheduler):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        fully_shard(model, mesh=init_device_mesh("cpu", (self.num_processes,)))
        sharded = dict(model.named_parameters())
        for g, ns in zip(optimizer.param_groups, groups):
            g["params"] = [sharded[n] for n in ns]
        return model, optimizer, scheduler


def main(path, *overrides):
    from torch.distributed.tensor import DTensor

    from diffalign.config import load_config
    from diffalign.trainer import make_trainer
    from diffalign.trainer.checkpoint import fsdp_version
    acc = FSDP2OnCPU(cpu=True, mixed_precision="no")
    assert acc.num_processes == 2, acc.num_processes
    trainer = make_trainer(load_config(path, list(overrides)), acc)
    params = list(trainer.adapter.denoiser.parameters())
    assert fsdp_version(trainer.adapter.denoiser) == 2 and all(isinstance(p, DTensor) for p in params)
    # really sharded: this rank holds part of the first weight's rows
    assert params[0].to_local().shape[0] < params[0].shape[0], (params[0].to_local().shape, params[0].shape)
    history = trainer.train()
    if acc.is_main_process:
        print("HISTORY " + json.dumps([{k: v for k, v in m.items() if k != "hardware"} for m in history]))
    # as the CLI does: the ranks leave together, close the process group and free what held it (diffalign/cli/train.py)
    acc.wait_for_everyone()
    acc.end_training()
    del trainer, params
    import gc
    gc.collect()


if __name__ == "__main__":
    main(*sys.argv[1:])
