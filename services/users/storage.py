"""The users service's storage: its tables (``models``) and its event log
(``kernel.eventlog``), one recorder per database, picked when the database is set up.

Registrations and profile edits are rare, so events are appended inside the ORM
transaction (``append`` before ``commit``); no one-statement fast path is needed."""
from __future__ import annotations

from sqlalchemy import select

from kernel.db import Recorders
from kernel.eventlog import PostgresLog, SqliteLog
from services.users.models import User


class UsersLog:
    def profiles(self) -> dict[int, tuple[str, str]]:
        """{user id: (username, about_me)} of every account, as the table has them now."""
        rows = self.session.execute(select(User.id, User.username, User.about_me))
        return {row.id: (row.username, row.about_me or "") for row in rows}


class PostgresUsers(UsersLog, PostgresLog):
    pass


class SqliteUsers(UsersLog, SqliteLog):
    pass


STORAGE = Recorders(postgresql=PostgresUsers, sqlite=SqliteUsers)
