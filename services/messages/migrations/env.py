"""Alembic environment of the messages service."""
from alembic import context

from kernel.migrations import run_env
from services.messages.models import Base

run_env(context, Base.metadata)
