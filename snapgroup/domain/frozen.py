"""Frozen value classes without the dataclasses module: what `@dataclass(frozen=True)`
gives (keyword or positional construction, ==, hash, repr, no assignment, a copy with
some fields changed) for the types `snapgroup backups` builds from every manifest it
reads. Importing dataclasses imports inspect (ast, dis, tokenize): ~14 ms, more than
the rest of a listing's start-up (issue 20). Standard library only.

A subclass names its fields in __slots__, annotates them for mypy, and ends its
__init__ with `self._init(locals())`: each field is set from the parameter of its name."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~3 ms of start-up
if TYPE_CHECKING:
    from typing import Any, Self


class Frozen:
    __slots__: tuple[str, ...] = ()

    def _init(self, values: dict[str, Any]) -> None:
        """Set every field from __init__'s locals (its parameters, by name)."""
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def _as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (as dataclasses.replace: __init__ runs again)."""
        unknown = changes.keys() - set(self.__slots__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        return type(self)(**{**self._as_dict(), **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frozen) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in self._as_dict().items())
        return f"{type(self).__name__}({shown})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[object, ...]:
        """copy, deepcopy and pickle: made again through __init__, by the fields' names."""
        return _rebuild, (type(self), self._as_dict())


def _rebuild(cls: type[Frozen], values: dict[str, Any]) -> Frozen:
    return cls(**values)
