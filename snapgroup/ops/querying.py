"""ZStack's query over the groups (snapgroup.domain.zquery), run in the store: the
page is selected and counted in SQL (store/group_query.py), and only the page's groups
are loaded with their refs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snapgroup.domain.inventory import Group, date_memo
from snapgroup.domain.zquery import Query
from snapgroup.ops.group_views import groups_of_views
from snapgroup.store import group_query
from snapgroup.store.db import Database
from snapgroup.store.repo import Repo


@dataclass(frozen=True)
class GroupPage:
    groups: list[Group]
    total: int | None  # how many matched, when count or replyWithCount asked

    def reply(self, query: Query) -> dict[str, Any]:
        """The REST reply document: {"inventories": [...]} (+ "total"), or {"total"}."""
        date = date_memo()  # the page's dates formatted once each
        return query.reply([g.to_inventory(date) for g in self.groups], self.total)


def query_groups(db: Database, query: Query) -> GroupPage:
    with db.transaction() as session:
        views = group_query.page_views(session, query)
        total = group_query.total(session, query)
        return GroupPage(groups_of_views(Repo(session), views), total)
