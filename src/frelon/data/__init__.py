"""Data stages: sources (download + verify), folder datasets, demo generators."""
