"""One log line when a connection starts failing and one when it works again, not one per
attempt: a broker outage of a minute must not bury the log in tracebacks."""
from __future__ import annotations

import logging
import threading
import time


class OutageLog:
    def __init__(self, logger: logging.Logger, what: str):
        self.logger = logger
        self.what = what
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, retrying: str = "retrying") -> None:
        with self._lock:
            self._failures += 1
            first = self._since is None
            if first:
                self._since = time.monotonic()
        if first:
            self.logger.warning("%s: %s (%s); %s, quietly until it works again",
                                self.what, str(exc) or type(exc).__name__, type(exc).__name__, retrying,
                                stacklevel=2)
        else:
            self.logger.debug("%s: still failing (%s)", self.what, exc)

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            since, failures = self._since, self._failures
            self._since, self._failures = None, 0
        if since is not None:
            self.logger.warning("%s: working again after %.1f s (%d failed attempts)",
                                self.what, time.monotonic() - since, failures, stacklevel=2)
