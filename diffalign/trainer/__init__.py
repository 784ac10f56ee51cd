"""The trainer: picks the loop for the algorithm's data path and owns devices, logging, checkpoints."""
from diffalign.algorithms.base import DataPath
from diffalign.trainer.differentiable import DifferentiableTrainer
from diffalign.trainer.generator import GeneratorTrainer
from diffalign.trainer.offline import OfflineTrainer
from diffalign.trainer.online import OnlineTrainer
from diffalign.trainer.step_pairs import StepPairTrainer

LOOPS = {DataPath.ONLINE_ROLLOUT: OnlineTrainer, DataPath.OFFLINE_PAIRS: OfflineTrainer,
         DataPath.OFFLINE_LABELS: OfflineTrainer, DataPath.DIFFERENTIABLE_SAMPLING: DifferentiableTrainer,
         DataPath.STEP_PAIRS: StepPairTrainer, DataPath.GENERATOR: GeneratorTrainer}


def make_trainer(cfg, accelerator=None):
    """The trainer for ``cfg``'s algorithm, chosen by the algorithm's declared data path."""
    from diffalign.algorithms import ALGORITHMS
    path = ALGORITHMS[cfg.algorithm["name"]].data_path
    return LOOPS[path](cfg, accelerator)


__all__ = ["OnlineTrainer", "OfflineTrainer", "DifferentiableTrainer", "StepPairTrainer", "GeneratorTrainer", "make_trainer", "LOOPS"]
