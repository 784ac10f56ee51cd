"""The trainer: picks the loop for the algorithm's data path and owns devices, logging, checkpoints."""
from diffalign.algorithms.base import DataPath
from diffalign.trainer.online import OnlineTrainer

LOOPS = {DataPath.ONLINE_ROLLOUT: OnlineTrainer}


def make_trainer(cfg, accelerator=None):
    """The trainer for ``cfg``'s algorithm, chosen by the algorithm's declared data path."""
    from diffalign.algorithms import ALGORITHMS
    path = ALGORITHMS[cfg.algorithm["name"]].data_path
    return LOOPS[path](cfg, accelerator)


__all__ = ["OnlineTrainer", "make_trainer", "LOOPS"]
