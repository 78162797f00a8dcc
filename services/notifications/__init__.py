"""Notifications service: projects the messages events into per-user notification rows."""
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
