"""Home, profiles and profile editing."""
from flask import Blueprint

bp = Blueprint("main", __name__)

from gateway.main import routes  # noqa: E402,F401  (routes attach themselves to bp)
