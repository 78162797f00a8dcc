"""One log line when a connection starts failing and one when it works again, not one per
attempt: a broker outage of a minute must not bury the log in tracebacks.

``OutageLog`` is the one outage logger of the code base: the broker's users (the outbox
relay, RPC replies, the gateway's listeners) use it as it is; ``kernel.db.Outage`` adds the
backoff and the wording of a database that does not answer."""
from __future__ import annotations

import logging
import threading
import time


class OutageLog:
    def __init__(self, logger: logging.Logger, what: str, clock=time.monotonic):
        self.logger = logger
        self.what = what
        self.clock = clock
        self._lock = threading.Lock()
        self.since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException | None, retrying: str = "retrying") -> None:
        with self._lock:
            self.failures += 1
            first = self.since is None
            if first:
                self.since = self.clock()
        if first:
            self.went_down(exc, retrying)
        else:
            self.logger.debug("%s: still failing (%s)", self.what, exc)

    def succeeded(self) -> None:
        if self.since is None:
            return
        with self._lock:
            since, failures = self.since, self.failures
            self.since, self.failures = None, 0
        if since is not None:
            self.came_back(self.clock() - since, failures)

    # What is logged when it goes down and when it works again (``stacklevel``: the caller
    # of ``failed`` / ``succeeded``).

    def went_down(self, exc: BaseException, retrying: str) -> None:
        self.logger.warning("%s: %s (%s); %s, quietly until it works again",
                            self.what, str(exc) or type(exc).__name__, type(exc).__name__, retrying, stacklevel=3)

    def came_back(self, lasted: float, failures: int) -> None:
        self.logger.warning("%s: working again after %.1f s (%d failed attempts)",
                            self.what, lasted, failures, stacklevel=3)
