"""The ``health`` RPC every service answers: proof that it consumes its queue on the
broker and reaches its database. ``microblog health <service>`` (the containers'
healthcheck) calls it."""
from sqlalchemy import text

from kernel.rpc import rpc


class HealthCheck:
    """Mixin for a nameko service class with a ``db`` (``kernel.db.Database`` with a
    storage: it injects a recorder) dependency."""

    @rpc
    def health(self):
        self.db.session.execute(text("SELECT 1"))
        return {"service": self.name, "database": "ok"}
