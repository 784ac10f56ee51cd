"""Preference data: readers for the public feedback layouts, synthetic sets, and AI feedback."""
from diffalign.data.readers import FORMATS, load_preference_data
from diffalign.data.types import (LabelledSample, LoadReport, PreferenceDataError, PreferenceDataset, PreferencePair,
                                  StoredState, is_state_ref, load_sample, load_samples, load_state, save_sample,
                                  save_state)

__all__ = ["FORMATS", "load_preference_data", "LabelledSample", "LoadReport", "PreferenceDataError",
           "PreferenceDataset", "PreferencePair", "load_sample", "load_samples", "save_sample", "StoredState", "is_state_ref", "load_state", "save_state"]
