"""An index for finding people by the start of their name (``/explore?q=``), PostgreSQL only.

``lower(username) LIKE 'su%'`` can use a btree index only if the index compares text byte
by byte: ``ix_users_username_lower`` (0001) follows the database's collation, so outside the
C locale it serves equality only. This index, on the same expression with
``text_pattern_ops``, serves the prefix as a range scan (``storage.UsersLog.newest_users``);
newest-first order without a filter comes from the primary key (ids grow with
registration). SQLite gets nothing: it is the embedded, small mode, where a scan of the
table is fine and its LIKE would not use such an index anyway.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_users_username_prefix ON users (lower(username) text_pattern_ops)")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_users_username_prefix")
