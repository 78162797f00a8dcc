"""Idempotency keys on the event log: a user action appends at most one event.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable: events logged before this revision, and events no action names (InboxRead),
    # carry none. The unique index is what makes a repeated command find its first event;
    # NULLs never collide, on PostgreSQL or SQLite.
    with op.batch_alter_table("event_log") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(100), nullable=True))
    op.create_index("ux_event_log_idempotency_key", "event_log", ["idempotency_key"], unique=True)


def downgrade():
    op.drop_index("ux_event_log_idempotency_key", table_name="event_log")
    with op.batch_alter_table("event_log") as batch:
        batch.drop_column("idempotency_key")
