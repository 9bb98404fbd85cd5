"""Cursor pagination shared by every list endpoint: newest first, `after=<id>` continues past it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select

from tunehouse.errors import NotFound
from tunehouse.store.db import session

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def page_newest_first(
    query: Select[Any], table: Any, after: str | None, limit: int, *, ascending: bool = False
) -> Page[Any]:
    """Rows of `query` ordered by insertion (`seq`), newest first unless `ascending`."""
    with session() as s:
        if after:
            lookup = select(table.seq).where(table.id == after)
            if query.whereclause is not None:  # an id outside the list (another project's) is no cursor
                lookup = lookup.where(query.whereclause)
            cursor = s.scalar(lookup)
            if cursor is None:
                raise NotFound(f"No such object for cursor 'after': {after}", param="after")
            query = query.where(table.seq > cursor if ascending else table.seq < cursor)
        query = query.order_by(table.seq.asc() if ascending else table.seq.desc()).limit(limit + 1)
        rows = list(s.scalars(query).all())
    return Page(items=rows[:limit], has_more=len(rows) > limit)
