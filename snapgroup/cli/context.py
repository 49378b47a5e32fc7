"""What a command needs: the engine (built lazily, from global options) and the streams."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from snapgroup.api import Engine, open_engine


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
        return cls(
            make_engine=lambda: open_engine(connect=connect, db=db, lock_wait=wait),
            as_json=args.json,
        )
