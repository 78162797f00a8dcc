"""Event log, counters and the inbox read model.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "event_log",
        sa.Column("position", Position, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("position", Position, nullable=False),
    )
    op.bulk_insert(counters, [{"name": "log_head", "position": 0}, {"name": "published", "position": 0}])
    op.create_table(
        "inbox_messages",
        sa.Column("id", Position, primary_key=True, autoincrement=False),
        sa.Column("sender_id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("body", sa.String(140), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_inbox_messages_recipient", "inbox_messages", ["recipient_id", "id"])
    op.create_table(
        "inbox_state",
        sa.Column("user_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_read_position", Position, nullable=False),
    )


def downgrade():
    op.drop_table("inbox_state")
    op.drop_index("ix_inbox_messages_recipient", table_name="inbox_messages")
    op.drop_table("inbox_messages")
    op.drop_table("counters")
    op.drop_table("event_log")
