"""One small loss object per alignment method, and the registry the config names them by."""
from diffalign.algorithms.base import Algorithm, DataPath, TransitionBatch
from diffalign.algorithms.ddpo import DDPO, DDPOConfig
from diffalign.algorithms.dpok import DPOK, DPOKConfig
from diffalign.algorithms.direct_reward import AlignProp, AlignPropConfig, DRaFT, DRaFTConfig, ReFL, ReFLConfig
from diffalign.algorithms.grpo import GRPO, GRPOConfig
from diffalign.algorithms.kto import KTO, KTOConfig
from diffalign.algorithms.preference import DPO, E2PO, IPO, DPOConfig, E2POConfig, IPOConfig, OfflineBatch
from diffalign.algorithms.reference_free import ORPO, ORPOConfig, SimPO, SimPOConfig
from diffalign.algorithms.rwr import RWR, RWRConfig
from diffalign.algorithms.score_distillation import (SDS, DreamDPO, DreamDPOConfig, GeneratorAlgorithm, GeneratorBatch,
                                                     SDSConfig)
from diffalign.algorithms.step_preference import D3PO, SPO, D3POConfig, SPOConfig

ALGORITHMS = {cls.name: cls for cls in (RWR, DDPO, DPOK, GRPO, DPO, IPO, E2PO, ORPO, SimPO, KTO, ReFL, DRaFT,
                                         AlignProp, D3PO, SPO, SDS, DreamDPO)}

__all__ = ["Algorithm", "DataPath", "TransitionBatch", "ALGORITHMS", "RWR", "RWRConfig", "DDPO", "DDPOConfig",
           "DPOK", "DPOKConfig", "GRPO", "GRPOConfig", "DPO", "DPOConfig", "IPO", "IPOConfig", "E2PO", "E2POConfig",
           "ORPO", "ORPOConfig", "SimPO", "SimPOConfig", "KTO", "KTOConfig", "OfflineBatch",
           "ReFL", "ReFLConfig", "DRaFT", "DRaFTConfig", "AlignProp", "AlignPropConfig",
           "D3PO", "D3POConfig", "SPO", "SPOConfig", "SDS", "SDSConfig", "DreamDPO", "DreamDPOConfig", "GeneratorAlgorithm", "GeneratorBatch"]
