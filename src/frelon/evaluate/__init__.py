"""Evaluation: classification metrics (and, later, detection and robustness)."""
