"""What a run records: per-iteration and per-epoch rows (CSV), TensorBoard events, a plot of the lr."""

from __future__ import annotations

import resource
from pathlib import Path

import pandas as pd
import torch

from frelon.atomic import write_text


def throughput(epochs: list[dict]) -> dict:
    """A run's input and training rates, the medians over its epochs: images/s (all ranks) and the share
    of the time the training waited for its loader (near 0: the loader keeps up; near 1: input-bound)."""
    def median(key: str) -> float | None:
        values = [row[key] for row in epochs if row.get(key) is not None and row[key] == row[key]]
        return round(float(pd.Series(values).median()), 4) if values else None

    return {"images_per_second": median("images_per_second"), "data_wait_fraction": median("data_wait_fraction")}


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by this process, or its peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class History:
    """Rows kept by every rank, written by rank 0 only (`enabled`)."""

    def __init__(self, out: str | Path, enabled: bool, log_every: int = 1):
        self.out, self.enabled, self.log_every = Path(out), enabled, log_every
        self.iterations: list[dict] = []
        self.epochs: list[dict] = []
        self._writer = None

    def restore(self, state: dict) -> None:
        self.iterations, self.epochs = list(state["iterations"]), list(state["epochs"])

    def state(self) -> dict:
        return {"iterations": self.iterations, "epochs": self.epochs}

    def due(self, step: int) -> bool:
        return step % self.log_every == 0

    def _tensorboard(self):
        if self._writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            resume_at = self.iterations[-1]["step"] + 1 if self.iterations else 0
            self._writer = SummaryWriter(self.out / "tensorboard", purge_step=resume_at or None)
        return self._writer

    def iteration(self, step: int, epoch: int, loss: float, lr: float, data_time: float,
                  compute_time: float, images_per_second: float) -> None:
        """`images_per_second`: the images all ranks trained on since the previous row of the epoch (or
        its start) over the time since."""
        row = {"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr, "data_seconds": data_time,
               "compute_seconds": compute_time, "images_per_second": images_per_second}
        self.iterations.append(row)
        if self.enabled:
            writer = self._tensorboard()
            for key in ("loss", "lr", "images_per_second"):
                writer.add_scalar(f"train/{key}", row[key], step)

    def epoch(self, row: dict) -> None:
        self.epochs.append(row)
        if not self.enabled:
            return
        writer = self._tensorboard()
        for key, value in row.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(f"epoch/{key}", value, row["step"])
        writer.flush()
        self.write()
        print(", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, (int, float))), flush=True)

    def write(self) -> None:
        """history.csv (epoch rows) and iterations.csv, as they stand."""
        write_text(self.out / "history.csv", pd.DataFrame(self.epochs).to_csv(index=False))
        write_text(self.out / "iterations.csv", pd.DataFrame(self.iterations).to_csv(index=False))

    def train_seconds(self) -> float:
        return float(sum(row["epoch_seconds"] for row in self.epochs))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

