"""REST accounts and login sessions in the store (tables.AccountRow, SessionRow).

Only rows here: hashing, expiry and what a session means live in snapgroup.rest.auth.
Each method is one transaction (or, for `find_session`, one read outside any).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from snapgroup.domain.errors import NotFound
from snapgroup.store.db import Database
from snapgroup.store.tables import AccountRow, SessionRow

_S: Any = SessionRow.__table__.c  # type: ignore[attr-defined]
_A: Any = AccountRow.__table__.c  # type: ignore[attr-defined]
# A session and its account by the session's primary key: one indexed read.
_LIVE = (
    sa_select(_S.create_date, _S.expired_date, _A.uuid, _A.name)
    .join_from(SessionRow.__table__, AccountRow.__table__, _A.uuid == _S.account_uuid)  # type: ignore[attr-defined]
    .where(_S.uuid == bindparam("token"))
)


@dataclass(frozen=True)
class AccountRecord:
    uuid: str
    name: str
    password_hash: str


@dataclass(frozen=True)
class SessionRecord:
    """A session joined with its account."""

    uuid: str
    account_uuid: str
    account_name: str
    create_date: datetime
    expired_date: datetime


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- accounts ---------------------------------------------------------------------

    def set_password_hash(self, name: str, *, uuid: str, password_hash: str, now: datetime) -> bool:
        """Create the account (as `uuid`) or replace its hash; True when created. A
        replaced hash ends the account's sessions in the same transaction."""
        with self.db.transaction() as session:
            row = session.exec(select(AccountRow).where(AccountRow.name == name)).first()
            created = row is None
            if row is None:
                row = AccountRow(
                    uuid=uuid,
                    name=name,
                    password_hash=password_hash,
                    create_date=now,
                    last_op_date=now,
                )
            else:
                row.password_hash, row.last_op_date = password_hash, now
                session.execute(delete(SessionRow).where(col(SessionRow.account_uuid) == row.uuid))
            session.add(row)
        return created

    def delete(self, name: str) -> None:
        """The account and its sessions; NotFound when there is no such account."""
        with self.db.transaction() as session:
            row = session.exec(select(AccountRow).where(AccountRow.name == name)).first()
            if row is None:
                raise NotFound(f"no account named {name!r}")
            session.execute(delete(SessionRow).where(col(SessionRow.account_uuid) == row.uuid))
            session.delete(row)

    def names(self) -> list[str]:
        with self.db.transaction() as session:
            return list(session.exec(select(AccountRow.name).order_by(col(AccountRow.name))))

    def find(self, name: str) -> AccountRecord | None:
        with self.db.transaction() as session:
            row = session.exec(select(AccountRow).where(AccountRow.name == name)).first()
            return None if row is None else AccountRecord(row.uuid, row.name, row.password_hash)

    # -- sessions ---------------------------------------------------------------------

    def add_session(
        self, uuid: str, *, account_uuid: str, create_date: datetime, expired_date: datetime
    ) -> None:
        """Record a new session, forgetting the ones expired by `create_date` (logins
        are rare: a fine moment for it)."""
        with self.db.transaction() as session:
            session.execute(delete(SessionRow).where(col(SessionRow.expired_date) <= create_date))
            session.add(
                SessionRow(
                    uuid=uuid,
                    account_uuid=account_uuid,
                    create_date=create_date,
                    expired_date=expired_date,
                )
            )

    def find_session(self, token: str) -> SessionRecord | None:
        """The session of that uuid with its account, expired or not."""
        with self.db.read() as conn:
            # Columns, not ORM rows, in no transaction: every API call reads this.
            found = conn.execute(_LIVE, {"token": token}).first()
        if found is None:
            return None
        created, expires, account_uuid, account_name = found
        return SessionRecord(token, account_uuid, account_name, created, expires)

    def set_session_expiry(self, token: str, expired_date: datetime) -> bool:
        """False when there is no such session (any more)."""
        with self.db.transaction() as session:
            row = session.get(SessionRow, token)
            if row is None:
                return False
            row.expired_date = expired_date
            session.add(row)
        return True

    def delete_session(self, token: str) -> None:
        with self.db.transaction() as session:
            session.execute(delete(SessionRow).where(col(SessionRow.uuid) == token))
