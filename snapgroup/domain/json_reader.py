"""Typed reading of JSON a file on disk holds (a backup's manifest): every missing key or
wrong type is an InvalidArgument naming the file and the key, never a KeyError or a
TypeError deep in the caller. Pure: the caller reads the file."""

from __future__ import annotations

import re

from snapgroup.domain.errors import InvalidArgument

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms of a command's start-up
if TYPE_CHECKING:
    from typing import Any

_UUID = re.compile(r"[0-9a-f]{32}")


def as_str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: expected a string, got {type(value).__name__}")
    return value


class JsonReader:
    """Typed access to one JSON object; every miss is an InvalidArgument naming the key."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{where}: expected an object")
        self.doc: dict[str, Any] = doc
        self.where = where

    def _get(self, key: str) -> object:
        if key not in self.doc:
            raise InvalidArgument(f"{self.where}: missing {key!r}")
        return self.doc[key]

    def str_(self, key: str) -> str:
        return as_str(self._get(key), f"{self.where}: {key}")

    def opt_str(self, key: str) -> str | None:
        value = self.doc.get(key)
        return None if value is None else as_str(value, f"{self.where}: {key}")

    def uuid(self, key: str) -> str:
        value = self.str_(key)
        if not _UUID.fullmatch(value):
            raise InvalidArgument(f"{self.where}: {key} {value!r} is not a 32-hex UUID")
        return value

    def int_(self, key: str) -> int:
        value = self._get(key)
        # bool is an int in Python; JSON true is no size.
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"{self.where}: {key} must be an integer")
        return value

    def opt_bool(self, key: str) -> bool:
        value = self.doc.get(key, False)
        if not isinstance(value, bool):
            raise InvalidArgument(f"{self.where}: {key} must be true or false")
        return value

    def opt_int(self, key: str) -> int | None:
        return None if self.doc.get(key) is None else self.int_(key)

    def obj(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise InvalidArgument(f"{self.where}: {key} must be an object")
        return value

    def list_(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise InvalidArgument(f"{self.where}: {key} must be a list")
        return value
