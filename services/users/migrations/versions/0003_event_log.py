"""The users service's event log (``event_log``, ``counters``: the shape of the messages
log, see ``kernel.eventlog``), backfilled so that it covers every account.

Each user already registered gets one ``UserRegistered`` (version 1): positions 1..N in id
order, ``occurred_at`` = the account's ``created_at``, and its username and about_me as
they are now (renames made before this revision were never logged and are not invented).
Folding the log thus gives exactly the users table, from the first day of the log on
(``microblog verify`` checks it). ``published`` starts at 0: the relay publishes the
backfilled events too, so a consumer learns every account from the broker or the feed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""
import json
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    event_log = op.create_table(
        "event_log",
        sa.Column("position", Position, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(100), nullable=True),
    )
    op.create_index("ux_event_log_idempotency_key", "event_log", ["idempotency_key"], unique=True)
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("position", Position, nullable=False),
    )
    users = sa.table("users", sa.column("id", sa.Integer()), sa.column("username", sa.String()),
                     sa.column("about_me", sa.String()), sa.column("created_at", sa.DateTime(timezone=True)))
    rows = op.get_bind().execute(
        sa.select(users.c.id, users.c.username, users.c.about_me, users.c.created_at).order_by(users.c.id))
    events = [
        {"position": position, "event_id": str(uuid.uuid4()), "event_type": "UserRegistered", "version": 1,
         "occurred_at": user.created_at, "idempotency_key": None,
         "data": json.dumps({"user_id": user.id, "username": user.username, "about_me": user.about_me or ""})}
        for position, user in enumerate(rows, start=1)
    ]
    if events:
        op.bulk_insert(event_log, events)
    op.bulk_insert(counters, [{"name": "log_head", "position": len(events)}, {"name": "published", "position": 0}])


def downgrade():
    op.drop_table("counters")
    op.drop_index("ux_event_log_idempotency_key", table_name="event_log")
    op.drop_table("event_log")
