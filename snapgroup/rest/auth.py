"""Accounts and login sessions of the REST API (their rows: store/accounts.py).

ZStack clients log in with the SHA-512 hex digest of the password, never the password.
The store keeps only a salted scrypt hash of that digest: a stolen database yields
neither the password nor anything a client could send. A session is a random UUID with
an expiry; `Authorization: OAuth <uuid>` carries it on every call.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from snapgroup.domain.errors import AuthenticationError, InvalidArgument, InvalidSession
from snapgroup.domain.inventory import zstack_date
from snapgroup.store.accounts import AccountStore, SessionRecord
from snapgroup.store.db import Database

DEFAULT_SESSION_TIMEOUT = 7200.0  # seconds; ZStack's default session timeout
# scrypt: memory-hard, in the standard library; ~0.1 s per login. The cost is stored
# with each hash, so raising it later leaves the old hashes valid.
SCRYPT_COST = 1 << 14
_R, _P = 8, 1
_SCHEME = "scrypt"


def sha512_hex(password: str) -> str:
    """What a ZStack client sends for `password`."""
    return hashlib.sha512(password.encode()).hexdigest()


def hash_digest(digest: str, *, salt: bytes | None = None, cost: int = SCRYPT_COST) -> str:
    salt = salt if salt is not None else os.urandom(16)
    key = hashlib.scrypt(digest.lower().encode(), salt=salt, n=cost, r=_R, p=_P, dklen=32)
    return f"{_SCHEME}${cost}${_R}${_P}${salt.hex()}${key.hex()}"


def digest_matches(digest: str, stored: str) -> bool:
    scheme, n, r, p, salt, key = stored.split("$")
    if scheme != _SCHEME:
        return False
    candidate = hashlib.scrypt(
        digest.lower().encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(candidate.hex(), key)


# Compared against when the account does not exist, so that a wrong name takes as long
# as a wrong password (no account names learned from timing).
_DUMMY = hash_digest("0" * 128, salt=b"\0" * 16)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Session(SessionRecord):
    def to_inventory(self) -> dict[str, Any]:
        """ZStack's SessionInventory (an account is its own user here)."""
        return {
            "uuid": self.uuid,
            "accountUuid": self.account_uuid,
            "userUuid": self.account_uuid,
            "expiredDate": zstack_date(self.expired_date),
            "createDate": zstack_date(self.create_date),
        }


class Accounts:
    def __init__(
        self,
        db: Database,
        *,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        clock: Callable[[], datetime] = _utcnow,
        cost: int = SCRYPT_COST,
    ) -> None:
        """`cost`: scrypt's N for the passwords set here (tests choose a cheap one)."""
        self.db = db
        self.store = AccountStore(db)
        self.session_timeout = session_timeout
        self.clock = clock
        self.cost = cost

    # -- administration (the `snapgroup account` command) -----------------------------

    def set_password(self, name: str, password: str) -> bool:
        """Create the account or change its password; True when created. Changing a
        password ends the account's sessions."""
        if not name or len(name) > 255 or not name.isprintable():
            raise InvalidArgument("an account name is 1 to 255 printable characters")
        if not password:
            raise InvalidArgument("the password must not be empty")
        stored = hash_digest(sha512_hex(password), cost=self.cost)
        return self.store.set_password_hash(
            name, uuid=uuidlib.uuid4().hex, password_hash=stored, now=self.clock()
        )

    def delete(self, name: str) -> None:
        self.store.delete(name)

    def names(self) -> list[str]:
        return self.store.names()

    # -- the API --------------------------------------------------------------------

    def login(self, name: str, digest: str) -> Session:
        account = self.store.find(name)
        stored = account.password_hash if account is not None else _DUMMY
        if not digest_matches(digest, stored) or account is None:
            raise AuthenticationError("wrong account name or password")
        now = self.clock()
        new = Session(
            uuid=uuidlib.uuid4().hex,
            account_uuid=account.uuid,
            account_name=account.name,
            create_date=now,
            expired_date=now + timedelta(seconds=self.session_timeout),
        )
        self.store.add_session(
            new.uuid,
            account_uuid=new.account_uuid,
            create_date=new.create_date,
            expired_date=new.expired_date,
        )
        return new

    def validate(self, session_uuid: str) -> Session:
        """The live session, or InvalidSession (unknown, malformed or expired)."""
        token = session_uuid.strip().lower().replace("-", "")
        if len(token) != 32:
            raise InvalidSession("the session is not a UUID")
        found = self.store.find_session(token)
        if found is None:
            raise InvalidSession("no such session (log in again)")
        if found.expired_date <= self.clock():
            raise InvalidSession("the session has expired (log in again)")
        return Session(
            token, found.account_uuid, found.account_name, found.create_date, found.expired_date
        )

    def renew(self, session_uuid: str, duration: float | None = None) -> Session:
        """RenewSession: a live session now expires `duration` seconds from now (default
        the session timeout); InvalidSession when it is not live."""
        current = self.validate(session_uuid)
        expires = self.clock() + timedelta(seconds=duration or self.session_timeout)
        if not self.store.set_session_expiry(current.uuid, expires):  # logged out in between
            raise InvalidSession("no such session (log in again)")
        return replace(current, expired_date=expires)

    def logout(self, session_uuid: str) -> None:
        """Idempotent: an unknown session is already logged out."""
        self.store.delete_session(session_uuid.strip().lower().replace("-", ""))


def session_from_header(value: str | None) -> str:
    """The session uuid of an `Authorization: OAuth <uuid>` header."""
    if value is None:
        raise InvalidSession("missing header 'Authorization' (OAuth <session uuid>)")
    scheme, _, token = value.strip().partition(" ")
    if scheme != "OAuth" or not token.strip():
        raise InvalidSession("Authorization type must be 'OAuth <session uuid>'")
    return token.strip()
