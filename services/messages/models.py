"""The messages service's tables: the event log (source of truth), the outbox progress,
and the inbox read model derived from the log."""
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class LoggedEvent(Base):
    """One row per event, append-only. ``position`` is gap-free and strictly increasing."""

    __tablename__ = "event_log"

    position: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False, unique=True)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    data: Mapped[str] = mapped_column(Text, nullable=False)  # JSON of the event's own fields
    # "<actor id>:<key>" of the action that caused the event (unique; see migration 0002).
    idempotency_key: Mapped[str | None] = mapped_column(String(100), nullable=True, unique=True)


class Counter(Base):
    """Named positions: ``log_head`` (last appended) and ``published`` (last relayed).

    Appends lock the ``log_head`` row until they commit, which serialises them: the next
    position is only handed out once the previous one is committed, so commit order
    equals position order and positions have no gaps (a rollback gives its number back).
    """

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)


class InboxMessage(Base):
    """Read model: a received message. ``id`` is the position of its MessageSent."""

    __tablename__ = "inbox_messages"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    sender_id: Mapped[int] = mapped_column(Integer, nullable=False)
    recipient_id: Mapped[int] = mapped_column(Integer, nullable=False)
    body: Mapped[str] = mapped_column(String(140), nullable=False)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ix_inbox_messages_recipient", "recipient_id", "id"),)


class InboxState(Base):
    """Read model: where each user last read their inbox (position of their latest InboxRead)."""

    __tablename__ = "inbox_state"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_read_position: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
