"""The users service's tables."""
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

USERNAME_MAX = 64
EMAIL_MAX = 120
ABOUT_ME_MAX = 140


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), nullable=False)
    # Stored normalised (lower case), so uniqueness is case-insensitive.
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False)
    about_me: Mapped[str] = mapped_column(String(ABOUT_ME_MAX), nullable=False, default="")
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        # "Susan" and "susan" are the same person to a reader: one account only.
        Index("ix_users_username_lower", func.lower(username), unique=True),
        Index("ix_users_email", email, unique=True),
    )
