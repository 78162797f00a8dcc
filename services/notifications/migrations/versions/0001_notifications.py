"""Notifications and the projection's tracking row.

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


def upgrade():
    op.create_table(
        "notifications",
        sa.Column("user_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_notifications_user_timestamp", "notifications", ["user_id", "timestamp"])
    tracking = op.create_table(
        "tracking",
        sa.Column("projection", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    )
    op.bulk_insert(tracking, [{"projection": "notifications", "position": 0}])


def downgrade():
    op.drop_table("tracking")
    op.drop_index("ix_notifications_user_timestamp", table_name="notifications")
    op.drop_table("notifications")
