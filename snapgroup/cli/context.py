"""What a command needs: the engine (built lazily, from global options) and the streams.
The facade is imported when a command first asks for the engine: `--help` and usage
errors never load it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from snapgroup.api import Engine


@dataclass
class Context:
    make_engine: Callable[[], Engine]
    as_json: bool = False
    out: TextIO = field(default=sys.stdout)
    err: TextIO = field(default=sys.stderr)
    _engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.make_engine()
        return self._engine

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        connect: str | None = args.connect
        db: str | None = args.db
        wait: float = args.wait

        def make_engine() -> Engine:
            from snapgroup.api import open_engine

            return open_engine(connect=connect, db=db, lock_wait=wait)

        return cls(make_engine=make_engine, as_json=args.json)
