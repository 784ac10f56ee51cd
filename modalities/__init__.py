"""Modality adapters, installed as ``diffalign.modalities`` (a top-level ``modalities`` package
already exists on PyPI). Everything modality-specific lives here; see base.py for the contract."""
