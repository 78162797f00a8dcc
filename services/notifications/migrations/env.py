"""Alembic environment of the notifications service."""
from alembic import context

from kernel.migrations import run_env
from services.notifications.models import Base

run_env(context, Base.metadata)
