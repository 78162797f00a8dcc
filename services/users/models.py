"""The users service's tables."""
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, func
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
        # PostgreSQL also has ix_users_username_prefix, lower(username) text_pattern_ops,
        # for prefix searches (migration 0004).
        Index("ix_users_email", email, unique=True),
    )


class UserSession(Base):
    """One sign-in: the gateway's session and remember-me cookies carry its token, and the
    session counts only while this row exists and has not expired. Signing out deletes it,
    so a copy of the cookies made before stops working. Only a hash of the token is kept."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    # SHA-256 of the token, hex: a stolen table gives no usable cookie.
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        Index("ix_sessions_token_hash", token_hash, unique=True),
        Index("ix_sessions_user_id", user_id),
    )
