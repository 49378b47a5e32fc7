"""`make postgres`: a PostgreSQL server for the store tests, and its URL on stdout.

Debian's own cluster (the `postgresql` package makes one): started when it is down, a
test role and database created when missing. Idempotent; run as root. The role may
create databases: each pytest session makes its own and drops it at the end, so runs
side by side never see each other's rows. Loopback only (Debian's default
listen_addresses is localhost).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROLE = DATABASE = PASSWORD = "snapgroup_test"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def cluster() -> tuple[str, str, int, str]:
    """(version, name, port, status) of the first cluster; one is made when none is."""
    rows = [line.split() for line in run("pg_lsclusters", "--no-header").stdout.splitlines()]
    if not rows:
        versions = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir())
        run("pg_createcluster", versions[-1], "main")
        rows = [line.split() for line in run("pg_lsclusters", "--no-header").stdout.splitlines()]
    version, name, port, status = rows[0][:4]
    return version, name, int(port), status


def psql(sql: str) -> str:
    """As the postgres superuser, over the unix socket (peer authentication)."""
    out = run(
        "runuser", "-u", "postgres", "--", "psql", "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql
    )
    return out.stdout.strip()


def main() -> int:
    version, name, port, status = cluster()
    if status != "online":
        run("pg_ctlcluster", version, name, "start")
    for _ in range(150):
        if run("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port), check=False).returncode == 0:
            break
        time.sleep(0.2)
    else:
        print(f"PostgreSQL {version}/{name} did not answer on 127.0.0.1:{port}", file=sys.stderr)
        return 1
    if not psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'"):
        psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    if not psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):
        psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
    print(f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
