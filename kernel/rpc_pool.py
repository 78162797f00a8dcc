"""A pool of started nameko RPC proxies, shared by a gateway process's request threads.

``ClusterRpcProxy`` is not thread-safe, and starting one per request costs ~6 ms and
leaves a reply queue behind, so a process keeps a few started proxies and lends each to
one caller at a time::

    pool = RpcPool({"AMQP_URI": ...}, size=8)
    pool.users.get_user(1)           # borrows a proxy, calls, gives it back
    pool.stop()

While the broker is unreachable a call fails at once with ``ServiceUnavailable`` (the
gateway's 503), not after ``timeout``: a proxy whose connection the broker dropped is
noticed before it is lent (``ClusterRpcProxy.alive``) and replaced, and starting a proxy or
publishing a request makes one connection attempt, without waiting (``kernel.rpc``). When
the broker is back, the next call connects again: nothing to restart.
"""
from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import KombuError
from nameko.exceptions import RpcTimeout, UnknownService

from kernel.rpc import ClusterRpcProxy


class ServiceUnavailable(Exception):
    """No proxy could be had, or the broker or the service did not answer in time."""


# Failures that leave a proxy's connection in doubt: the proxy is thrown away, not reused.
# (nameko's standalone proxy raises RuntimeError for a reply consumer that is disconnected
# or stopped; an error the service raised arrives as its own class or as RemoteError.)
_BROKEN = (RpcTimeout, OSError, KombuError, ConnectionError, AmqpConnectionError, RuntimeError)


class RpcPool:
    def __init__(self, config: dict, size: int = 8, timeout: float = 10.0, acquire_timeout: float = 30.0):
        if size < 1:
            raise ValueError("an RPC pool needs at least one proxy")
        self.config = config
        self.size = size
        self.timeout = timeout
        self.acquire_timeout = acquire_timeout
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._created = 0
        self._lock = threading.Lock()
        self._closed = False

    def _start_proxy(self) -> ClusterRpcProxy:
        proxy = ClusterRpcProxy(self.config, timeout=self.timeout)
        proxy.start()
        return proxy

    def _acquire(self) -> ClusterRpcProxy:
        if self._closed:
            raise ServiceUnavailable("the RPC pool is stopped")
        while True:
            try:
                idle = self._idle.get_nowait()
            except queue.Empty:
                break
            if idle.alive():
                return idle
            self._discard(idle)  # the broker dropped its connection (an outage, a restart)
        with self._lock:
            grow = self._created < self.size
            if grow:
                self._created += 1
        if grow:
            try:
                return self._start_proxy()
            except Exception as exc:
                with self._lock:
                    self._created -= 1
                raise ServiceUnavailable(f"cannot reach the message broker: {exc}") from exc
        try:
            idle = self._idle.get(timeout=self.acquire_timeout)
        except queue.Empty:
            raise ServiceUnavailable("every RPC proxy stayed busy") from None
        if idle.alive():
            return idle
        self._discard(idle)
        return self._acquire()

    def _discard(self, proxy: ClusterRpcProxy, broken: bool = True) -> None:
        with self._lock:
            self._created -= 1
        try:
            if broken:
                proxy.abandon()  # no goodbye to a broker that may not answer it
            else:
                proxy.stop()
        except Exception:  # the connection is already broken; nothing left to release
            pass

    @contextmanager
    def proxy(self) -> Iterator[Any]:
        """Borrow a started proxy: ``with pool.proxy() as rpc: rpc.users.get_user(1)``."""
        standalone = self._acquire()
        try:
            yield standalone._proxy
        except _BROKEN as exc:
            self._discard(standalone)
            raise ServiceUnavailable(str(exc) or type(exc).__name__) from exc
        except UnknownService as exc:
            # Nothing consumes that service's queue: it is down. The proxy itself is fine.
            self._release(standalone)
            raise ServiceUnavailable(str(exc)) from exc
        except BaseException:
            # An error the service raised (e.g. UserNotFound): the proxy is fine.
            self._release(standalone)
            raise
        else:
            self._release(standalone)

    def _release(self, standalone: ClusterRpcProxy) -> None:
        if self._closed:
            self._discard(standalone, broken=False)
        else:
            self._idle.put(standalone)

    def call(self, service: str, method: str, *args, **kwargs) -> Any:
        with self.proxy() as rpc:
            return getattr(rpc[service], method)(*args, **kwargs)

    def __getattr__(self, service: str) -> "_ServiceHandle":
        if service.startswith("_"):
            raise AttributeError(service)
        return _ServiceHandle(self, service)

    def stop(self) -> None:
        self._closed = True
        while True:
            try:
                self._discard(self._idle.get_nowait(), broken=False)
            except queue.Empty:
                break


class _ServiceHandle:
    def __init__(self, pool: RpcPool, service: str):
        self._pool = pool
        self._service = service

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args, **kwargs):
            return self._pool.call(self._service, method, *args, **kwargs)

        call.__name__ = f"{self._service}.{method}"
        return call
