"""The shapes scenes moved to :mod:`diffalign.data.shapes` (rewards and modalities use them, and sit below the
demo); this name stays the same module object for code written against it."""
import sys

from diffalign.data import shapes as _shapes

sys.modules[__name__] = _shapes
