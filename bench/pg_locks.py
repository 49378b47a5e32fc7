"""What a VM lock costs on PostgreSQL (store/locks.py): the median time of one
lock + unlock of a VM's operation lock (`AdvisoryLocks.vm`), and of a free/busy look
(`try_vm`, what a REST job's turn polls), over ROUNDS rounds on the store at
SNAPGROUP_TEST_PG_URL (or argv[1]). Not part of `make bench`: a before/after check.

    python -m bench.pg_locks [URL]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

from snapgroup.store.db import Database
from snapgroup.store.locks import AdvisoryLocks

ROUNDS = 200


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ["SNAPGROUP_TEST_PG_URL"]
    db = Database(url)
    locks = AdvisoryLocks(db)
    vm = uuid.uuid4().hex
    with locks.vm(vm):  # the first connection, and the engine made, outside the figures
        pass
    for name, block in (
        ("vm lock + unlock", lambda: locks.vm(vm)),
        ("try_vm", lambda: locks.try_vm(vm)),
    ):
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            with block():
                pass
            times.append(time.perf_counter() - start)
        print(
            f"{name}: median {statistics.median(times) * 1000:.2f} ms, "
            f"min {min(times) * 1000:.2f}, max {max(times) * 1000:.2f} ({ROUNDS} rounds)"
        )
    db.dispose()


if __name__ == "__main__":
    main()
