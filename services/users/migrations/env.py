"""Alembic environment of the users service."""
from alembic import context

from kernel.migrations import run_env
from services.users.models import Base

run_env(context, Base.metadata)
