"""The token API (the tutorial's chapter 23 style): JSON under ``/api/``, a bearer token
from ``POST /api/tokens``; no cookies, so no CSRF (README, "The API")."""
from flask import Blueprint

bp = Blueprint("api", __name__)

from gateway.api import routes  # noqa: E402,F401  (routes attach themselves to bp)
