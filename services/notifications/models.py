"""The notifications service's tables: the projection's rows and its tracking row."""
from sqlalchemy import BigInteger, Float, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PROJECTION = "notifications"


class Base(DeclarativeBase):
    pass


class Notification(Base):
    """The current value of one notification of one user (e.g. unread_message_count = 3).

    ``timestamp`` strictly increases for a user across changes, so a client that passes
    back the last one it saw as ``since`` never misses a change.
    """

    __tablename__ = "notifications"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    payload_json: Mapped[str] = mapped_column(Text, nullable=False)
    timestamp: Mapped[float] = mapped_column(Float(precision=53), nullable=False)

    __table_args__ = (Index("ix_notifications_user_timestamp", "user_id", "timestamp"),)


class Tracking(Base):
    """The last log position applied to a projection, committed with the rows it changed."""

    __tablename__ = "tracking"

    projection: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)


# Where a replay builds the projection beside the live table before swapping it in. Not
# part of the schema proper (no index: only the replay writes it, only the swap reads it).
REBUILD = "notifications_rebuild"
rebuild_table = Table(REBUILD, MetaData(), *(column._copy() for column in Notification.__table__.columns))
