"""The test suite (a regular package: torch-fidelity installs a top-level package named tests that would shadow it)."""
