"""One small loss object per alignment method, and the registry the config names them by."""
from diffalign.algorithms.base import Algorithm, DataPath, TransitionBatch
from diffalign.algorithms.ddpo import DDPO, DDPOConfig
from diffalign.algorithms.dpok import DPOK, DPOKConfig
from diffalign.algorithms.grpo import GRPO, GRPOConfig
from diffalign.algorithms.rwr import RWR, RWRConfig

ALGORITHMS = {cls.name: cls for cls in (RWR, DDPO, DPOK, GRPO)}

__all__ = ["Algorithm", "DataPath", "TransitionBatch", "ALGORITHMS", "RWR", "RWRConfig", "DDPO", "DDPOConfig",
           "DPOK", "DPOKConfig", "GRPO", "GRPOConfig"]
