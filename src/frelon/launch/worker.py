"""The program torchrun starts on every rank: `python -m frelon.launch.worker {train,evaluate} SPEC`;
`train SPEC --out METRICS` trains, then scores the test split as `evaluate` does.

On a GPU the rank holds its GPU's lock from `distributed.init` until it exits (see
`frelon.launch.launcher`), so the GPU stays taken while the rank lives, even if the launcher and
torchrun were killed."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from frelon import tasks
from frelon import atomic
from frelon.atomic import write_json
from frelon.errors import FrelonError
from frelon.parallel import distributed, parentage, preemption
from frelon.train import engine
from frelon.train.history import throughput
from frelon.parallel.preemption import EXIT_PREEMPTED, PREEMPTED_MARKER, Preempted, StopRequested


def evaluate(spec: dict, checkpoint: str, out: str, world: distributed.World) -> None:
    """Score a trained model.pt on the test split with the preprocessing it was trained with."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("preprocessing") != spec["data"]["preprocessing"]:
        raise FrelonError(f"{checkpoint} was trained with preprocessing {state.get('preprocessing')} but "
                          f"{spec['output']}/spec.json says {spec['data']['preprocessing']}; retrain it")
    task = tasks.build(spec)
    model = None
    if not state.get("diverged"):
        model = engine.with_weights(task, state["model"])
        left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if left:
            raise FrelonError(f"{checkpoint} has no values for {left}; retrain it")
    score(task, spec, model, state, out, world)


def score(task, spec: dict, model: torch.nn.Module | None, state: dict, out: str, world: distributed.World) -> None:
    """Every rank scores its shard of the test split; rank 0 writes the metrics JSON (and the task's files
    beside it). `state`: what model.pt records (diverged, train_seconds, precision), and after training the
    run's `throughput` (images/s, the share of time spent waiting for input). A diverged run is
    reported as such, with no scores (`model` None)."""
    if state.get("diverged"):
        if world.is_main:
            print(f"{spec['experiment']}: diverged at iteration {state['diverged']['step']}; not scored")
            task.write_outputs({"detections": []}, Path(out).parent)
            write_json(out, {"experiment": spec["experiment"], "split": "test", "diverged": state["diverged"],
                             "train_seconds": state["train_seconds"], "precision": state.get("precision")})
        return
    result = task.evaluate(model.to(world.device), "test", world)
    if world.is_main:
        task.write_outputs(result, Path(out).parent)
        print(f"{spec['experiment']}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                                                   if isinstance(v, float)), flush=True)
        write_json(out, {"experiment": spec["experiment"], "split": "test",
                         "train_seconds": state["train_seconds"], "precision": state.get("precision"),
                         **state.get("throughput", {}), **result})


def train(spec: dict, out: str | None, world: distributed.World) -> None:
    """Train to the end, then (with `out`) score the test split with the model in memory, on the ranks
    that trained it: no rank reads a file another wrote, and no second start-up per run. The run's
    resumable state goes only once its metrics are written."""
    task = tasks.build(spec)
    with engine.run_lock(Path(spec["output"]), world), preemption.handling():
        trained = engine.fit(task, spec, world)
        if out:
            # the weights as `evaluate` would load them from model.pt: the same network, the same numbers
            model = None if trained.diverged else engine.with_weights(task, trained.model.state_dict())
            score(task, spec, model, {"diverged": trained.diverged, "train_seconds": trained.train_seconds,
                                      "precision": trained.precision, "throughput": throughput(trained.epochs)},
                  out, world)
        engine.finish(spec, world)


def _stopped(world: distributed.World) -> None:
    """Before any rank exits on a stop request: the main rank marks the stop as a request (the launcher then
    exits 75, where torchrun says 1), and every rank waits for it here, so also until it has saved. A rank
    that exits early ends its node's torchrun, and under SLURM the whole step (srun --kill-on-bad-exit),
    the main rank mid-save."""
    if world.is_main and os.environ.get(PREEMPTED_MARKER):
        open(os.environ[PREEMPTED_MARKER], "w").close()
    distributed.barrier(world)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frelon.launch.worker")
    parser.add_argument("mode", choices=["train", "evaluate"])
    parser.add_argument("spec")
    parser.add_argument("--checkpoint")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    parentage.die_with_parent()  # torchrun starts ranks in sessions of their own: no rank trains on as an orphan
    with open(args.spec) as f:
        spec = json.load(f)
    try:
        world = distributed.init(spec["device"], spec["train"].get("collective_timeout_minutes",
                                                                   distributed.DEFAULT_TIMEOUT_MINUTES))
    except FrelonError as exc:  # e.g. its launch is gone and its GPU may be another job's
        print(f"[rank {os.environ.get('RANK', 0)}] {exc}", file=sys.stderr, flush=True)
        return 1
    atomic.set_guard(parentage.check_output(engine.state_dir(spec)))  # no output once the launcher is gone
    try:
        if world.world_size != spec["train"]["world_size"]:  # e.g. SLURM spread the GPUs unevenly over nodes
            raise FrelonError(f"{spec['experiment']}: {world.world_size} processes started but train.world_size "
                              f"is {spec['train']['world_size']}; SLURM spread the GPUs unevenly over the nodes: append "
                              f"--gpus-per-node=<GPUs per node> to slurm_extra in profiles/slurm/profile.yaml")
        if args.mode == "train":
            train(spec, args.out, world)
        else:
            with preemption.handling():
                evaluate(spec, args.checkpoint, args.out, world)
    except parentage.LaunchGone as exc:  # the others stop on their launcher's SIGTERM, or fail in a collective
        print(f"[rank {world.rank}] {exc}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except (Preempted, StopRequested) as exc:
        if world.is_main:
            print(f"{exc}; rerun to resume", file=sys.stderr, flush=True)
        _stopped(world)
        return EXIT_PREEMPTED
    except Exception as exc:
        print(f"[rank {world.rank}] {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
