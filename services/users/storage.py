"""The users service's storage: its tables (``models``) and its event log
(``kernel.eventlog``), one recorder per database, picked when the database is set up.

Registrations and profile edits are rare, so events are appended inside the ORM
transaction (``append`` before ``commit``); no one-statement fast path is needed."""
from __future__ import annotations

from sqlalchemy import func, select

from kernel.db import Recorders
from kernel.eventlog import PostgresLog, SqliteLog
from services.users.models import User


class UsersLog:
    def profiles(self) -> dict[int, tuple[str, str]]:
        """{user id: (username, about_me)} of every account, as the table has them now."""
        rows = self.session.execute(select(User.id, User.username, User.about_me))
        return {row.id: (row.username, row.about_me or "") for row in rows}

    def newest_users(self, prefix: str, offset: int, limit: int) -> list[User]:
        """Up to ``limit`` accounts after the first ``offset``, newest first (ids grow with
        registration), whose username starts with ``prefix`` ignoring case ("" = all).

        The prefix is matched literally: LIKE's ``%`` and ``_`` in it are escaped (``_`` is
        a legal username character). PostgreSQL answers the filter from the index on
        ``lower(username) text_pattern_ops`` (migration 0004) and the order from the
        primary key, whichever its planner finds cheaper for the prefix."""
        query = select(User).order_by(User.id.desc()).offset(offset).limit(limit)
        if prefix:
            escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(func.lower(User.username).like(escaped + "%", escape="\\"))
        return list(self.session.scalars(query))


class PostgresUsers(UsersLog, PostgresLog):
    pass


class SqliteUsers(UsersLog, SqliteLog):
    pass


STORAGE = Recorders(postgresql=PostgresUsers, sqlite=SqliteUsers)
