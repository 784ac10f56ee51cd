"""The VP and EDM noise schedules, re-exported: they live in diffalign/schedules.py, below the modalities in the
layer order, so that a modality may build its schedule from them (this module keeps the old import path)."""
from diffalign.schedules import EDM_MODEL_TIMES, EDM_PREDICTION_TYPES, VP_PREDICTION_TYPES, EDMSchedule, VPSchedule

__all__ = ["VPSchedule", "EDMSchedule", "VP_PREDICTION_TYPES", "EDM_PREDICTION_TYPES", "EDM_MODEL_TIMES"]
