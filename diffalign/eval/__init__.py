"""Evaluation: preference accuracy of rewards, and sample quality / reward reports of models (survey section 5)."""
