"""One process of the concurrency test: create and delete groups on one VM in a loop,
through the public API, and print what happened as JSON."""

from __future__ import annotations

import argparse
import json
import random
import time

from snapgroup.api import open_engine
from snapgroup.domain.errors import SnapgroupError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--vm", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    engine = open_engine(db=args.db, lock_wait=300)
    counts = {"create": 0, "delete": 0, "already_gone": 0, "errors": 0}
    errors: list[str] = []
    started = time.monotonic()
    for n in range(args.rounds):
        try:
            engine.create(vm=args.vm, name=f"w{args.seed}-{n}")
            counts["create"] += 1
            groups = engine.list_groups(vm=args.vm)
            if groups and rng.random() < 0.7:
                report = engine.delete(rng.choice(groups).uuid)
                if report.error is not None:
                    raise report.error
                # another worker may have deleted it first: then nothing was ours to do
                counts["delete" if report.results else "already_gone"] += 1
        except SnapgroupError as exc:
            counts["errors"] += 1
            errors.append(f"{exc.code}: {exc.details}")
    print(
        json.dumps(
            {"counts": counts, "errors": errors, "seconds": round(time.monotonic() - started, 2)}
        )
    )


if __name__ == "__main__":
    main()
