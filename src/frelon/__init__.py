"""frelon: the deep-learning course as a reproducible, measured pipeline."""

__version__ = "0.1.0"
