"""The messages service's read model (the inbox), derived from its event log (the source
of truth: ``kernel.eventlog``, tables ``event_log`` and ``counters``)."""
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


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
