"""The embedded demo: procedural shapes data, a tiny text-to-image model, ``diffalign demo``."""
