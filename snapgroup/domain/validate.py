"""Checks on user input. Names and descriptions are stored as text, never used in paths."""

from __future__ import annotations

import re
import unicodedata

from snapgroup.domain.errors import InvalidArgument

NAME_MAX = 255
DESCRIPTION_MAX = 2048
# A short name a path or an option may carry: a policy's, a served backup repository's.
SHORT_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
SHORT_NAME_PATTERN = f"^{SHORT_NAME}$"  # as an OpenAPI pattern
_SHORT_NAME = re.compile(SHORT_NAME)
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_DASHED = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def parse_uuid(value: str, what: str = "uuid") -> str:
    """32 hex digits (ZStack style) or the dashed form; returned as 32 lowercase hex."""
    text = value.strip().lower()
    if _DASHED.match(text):
        text = text.replace("-", "")
    if not _HEX32.match(text):
        raise InvalidArgument(f"{what} {value!r} is not a UUID (32 hex digits, dashes optional)")
    return text


def is_short_name(value: str) -> bool:
    return _SHORT_NAME.fullmatch(value) is not None


def looks_like_uuid(value: str) -> bool:
    text = value.strip().lower()
    return bool(_HEX32.match(text) or _DASHED.match(text))


def _check_text(value: str, what: str, limit: int, *, allow_newlines: bool) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters long; the limit is {limit}")
    for char in value:
        if allow_newlines and char in "\n\t":
            continue
        if unicodedata.category(char) == "Cc":
            raise InvalidArgument(f"{what} contains a control character (U+{ord(char):04X})")
    return value


def validate_name(value: str) -> str:
    if not value or not value.strip():
        raise InvalidArgument("name must not be empty")
    return _check_text(value, "name", NAME_MAX, allow_newlines=False)


def validate_description(value: str | None) -> str | None:
    if value is None:
        return None
    return _check_text(value, "description", DESCRIPTION_MAX, allow_newlines=True)
