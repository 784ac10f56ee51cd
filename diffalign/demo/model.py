"""The shipped tiny model moved to :mod:`diffalign.modalities.image.demo_model` (the image modality loads it, and
sits below the demo); this name stays the same module object for code written against it."""
import sys

from diffalign.modalities.image import demo_model as _demo_model

sys.modules[__name__] = _demo_model
