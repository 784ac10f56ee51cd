"""Editing modality: instruction-based image editors (InstructPix2Pix UNets), a tiny random preset, the ``demo``
preset (the shipped shapes editor) and the ``editing_jsonl`` preference layout."""
from diffalign.modalities.editing.adapter import EditingAdapter
from diffalign.modalities.editing.options import EditingOptions
from diffalign.modalities.editing.preferences import load_editing_preferences

__all__ = ["EditingAdapter", "EditingOptions", "load_editing_preferences"]
