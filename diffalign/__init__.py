"""diffalign: align diffusion models with human preferences and rewards (see README.md)."""
__version__ = "0.1.0"
