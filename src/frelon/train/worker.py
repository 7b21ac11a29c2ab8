"""The program torchrun starts on every rank: `python -m frelon.train.worker {train,evaluate} SPEC`."""

from __future__ import annotations

import argparse
import json
import sys

from frelon.train import distributed, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frelon.train.worker")
    parser.add_argument("mode", choices=["train", "evaluate"])
    parser.add_argument("spec")
    parser.add_argument("--checkpoint")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    world = distributed.init(spec["device"])
    try:
        if args.mode == "train":
            loop.train(spec, world)
        else:
            loop.evaluate(spec, args.checkpoint, args.out, world)
    except Exception as exc:
        print(f"[rank {world.rank}] {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
