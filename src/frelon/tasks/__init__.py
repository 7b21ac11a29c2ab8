"""Tasks: what the engine trains. A task supplies its model, data, loss and evaluation."""

from __future__ import annotations

from frelon.errors import FrelonError
from frelon.tasks.base import Task


def build(spec: dict) -> Task:
    """The task named by the spec."""
    if spec["task"] == "classification":
        from frelon.tasks.classification import ClassificationTask

        return ClassificationTask(spec)
    if spec["task"] == "detection":  # imported only here: torchvision.ops costs a classification run 2 s
        from frelon.tasks.detection.task import DetectionTask

        return DetectionTask(spec)
    raise FrelonError(f"task {spec['task']!r} is unknown: choose one of classification, detection")
