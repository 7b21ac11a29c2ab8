"""Tasks: what the engine trains. A task supplies its model, data, loss and evaluation."""

from __future__ import annotations

from frelon.errors import FrelonError
from frelon.tasks.base import Task


def build(spec: dict) -> Task:
    """The task named by the spec."""
    from frelon.tasks.classification import ClassificationTask
    from frelon.tasks.detection.task import DetectionTask

    tasks = {"classification": ClassificationTask, "detection": DetectionTask}
    if spec["task"] not in tasks:
        raise FrelonError(f"task {spec['task']!r} is unknown: choose one of {', '.join(tasks)}")
    return tasks[spec["task"]](spec)
