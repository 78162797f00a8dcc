"""Users service: accounts, sign-in and profiles."""
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
