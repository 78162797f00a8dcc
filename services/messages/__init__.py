"""Messages service: the event-sourced private messages (MessageSent, InboxRead)."""
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
