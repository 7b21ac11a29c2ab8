"""The figures of the report, each from the runs' own files: training curves and the learning-rate
schedules actually used, per study, and the speed-up and efficiency of a scaling study."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from frelon.atomic import atomic_path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, out: str | os.PathLike, tight: bool = True) -> None:
    """Write the figure to `out` atomically (never a half-written PNG) and close it."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight" if tight else None)
    pyplot().close(fig)


def _histories(runs: list[str | os.PathLike], name: str) -> list[pd.DataFrame]:
    """The runs' `name` CSV files that exist (a missing run has none)."""
    return [pd.read_csv(Path(r) / name) for r in runs if (Path(r) / name).exists()]


def _curve(ax, frames: list[pd.DataFrame], x: str, y: str, color, band: bool = True, lw: float = 1.4) -> int:
    """Mean over seeds, and their range as a band; how many runs have the column (0: nothing drawn)."""
    frames = [f[[x, y]].dropna() for f in frames if y in f]
    if not frames:
        return 0
    joined = pd.concat(frames).groupby(x)[y]
    mean, low, high = joined.mean(), joined.min(), joined.max()
    ax.plot(mean.index, mean.values, color=color, lw=lw)
    if band and len(frames) > 1:
        ax.fill_between(mean.index, low.values, high.values, color=color, alpha=0.2, lw=0)
    return len(frames)


def _plain_log():
    """matplotlib's choice of log ticks to label, written as plain numbers (0.3, not 3e-01)."""
    from matplotlib.ticker import LogFormatter

    class PlainLog(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLog()


def curves_figure(study: str, runs: dict[str, list[str | os.PathLike]]):
    """Small multiples: one row per experiment, one column per quantity (training loss and validation
    score per epoch: mean over seeds, band: their range; the learning rate of every optimizer step as the
    run used it, the first seed's), the other experiments in grey behind for comparison; axes shared by
    column, whole epochs and steps on the x axes."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    histories = {e: _histories(r, "history.csv") for e, r in runs.items()}
    iterations = {e: _histories(r[:1], "iterations.csv") for e, r in runs.items()}
    val = next((c for c in ("val_accuracy", "val_AP", "val_AP50") for hs in histories.values() for h in hs
                if c in h), None)
    panels = [("train_loss", "epoch", "training loss"), *([(val, "epoch", val.replace("_", " "))] if val else []),
              ("lr", "step", "learning rate (per step)")]
    experiments = list(runs)
    fig, axes = plt.subplots(len(experiments), len(panels), figsize=(3.6 * len(panels), 0.5 + 1.9 * len(experiments)),
                             squeeze=False, sharex="col", sharey="col")
    colors = plt.get_cmap("tab20" if len(runs) > 10 else "tab10")
    for row, experiment in enumerate(experiments):
        n = 0
        for ax, (column, x, _) in zip(axes[row], panels):
            sources = iterations if column == "lr" else histories
            for other in experiments:
                if other != experiment:
                    _curve(ax, sources[other], x, column, "0.82", band=False, lw=0.8)
            n = max(n, _curve(ax, sources[experiment], x, column, colors(row % colors.N)))
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(which="both", labelsize=8)
            if column == "train_loss":  # log scale, its ticks written as plain numbers (0.3, not 3 x 10^-1)
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(_plain_log())
                ax.yaxis.set_minor_formatter(_plain_log())
        label = f"{experiment}\n(n={n})" if n > 1 else experiment if n else f"{experiment}\n(no run)"
        axes[row][0].set_ylabel(label, fontsize=9, fontweight="bold")
    for ax, (_, x, title) in zip(axes[0], panels):
        ax.set_title(title, fontsize=10)
    for ax, (_, x, _) in zip(axes[-1], panels):
        ax.set_xlabel(x, fontsize=9)
    fig.suptitle(f"{study}: training curves")
    fig.tight_layout()
    return fig


def study_curves(study: str, runs: dict[str, list[str | os.PathLike]], out: str | os.PathLike) -> None:
    """The study's training curves (see `curves_figure`), written to `out`."""
    save_png(curves_figure(study, runs), out)


def scaling_plot(table: pd.DataFrame, study: str, out: str | os.PathLike) -> bool:
    """Speed-up and efficiency against world size, ideal line for reference; False (nothing written)
    when the table has no speed-up (no one-process run of the same work)."""
    if "speedup" not in table or table.speedup.isna().all():
        return False
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    sizes = sorted(table.world_size.unique())
    left.plot(sizes, sizes, color="grey", ls="--", lw=1, label="ideal (linear)")
    right.axhline(1.0, color="grey", ls="--", lw=1, label="ideal")
    for i, row in enumerate(table.itertuples()):
        color = plt.get_cmap("tab10")(i % 10)
        for ax, column in ((left, "speedup"), (right, "efficiency")):
            std = getattr(row, f"{column}_std", None)
            ax.errorbar(row.world_size + (i - len(table) / 2) * 0.03, getattr(row, column),
                        yerr=None if std is None or pd.isna(std) else std, fmt="o", color=color, capsize=3,
                        label=row.experiment if column == "speedup" else None)
    left.set(title="speed-up (time per epoch, 1 process / N)", xlabel="world size", ylabel="speed-up")
    right.set(title="efficiency (speed-up / N)", xlabel="world size", ylabel="efficiency")
    for ax in (left, right):
        ax.set_xticks(sizes)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"{study}: data-parallel scaling")
    save_png(fig, out)
    return True
