"""The public surface and the README stay honest."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

import snapgroup
from snapgroup.domain.errors import ALL_ERRORS, SnapgroupError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_all_names_exactly_the_public_api() -> None:
    public = {
        name
        for name in dir(snapgroup)
        if not name.startswith("_") and not isinstance(getattr(snapgroup, name), types.ModuleType)
    }
    assert set(snapgroup.__all__) == public
    for name in snapgroup.__all__:
        assert getattr(snapgroup, name) is not None
    with pytest.raises(AttributeError):
        snapgroup.no_such_name  # noqa: B018


def test_every_error_is_listed_and_exported() -> None:
    exported = {
        e
        for e in (getattr(snapgroup, name) for name in dir(snapgroup))
        if isinstance(e, type) and issubclass(e, SnapgroupError) and e is not SnapgroupError
    }
    assert exported == set(ALL_ERRORS)
    codes = [e.code for e in ALL_ERRORS]
    assert len(codes) == len(set(codes)), "codes must be unique"


def test_readme_error_table_matches_the_code() -> None:
    rows = re.findall(r"^\| `([A-Z_]+\.\d+)` \| (\w+) \| (.+?) \|$", README.read_text(), re.M)
    assert sorted(rows) == sorted((e.code, e.__name__, e.description) for e in ALL_ERRORS)


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert text.index("make demo") < text.index("make test") < text.index("## Using it")
