"""Process-wide objects: built on first use, reused warm, reset once for tests.

Settings, SDK clients, credentials, token sources, thread pools and the service itself are
each built once per process, the first time something asks for them, and then reused by
every warm invocation. Nothing is built at import (cold start), and a configuration error
surfaces on the first call that needs the object, where it can be answered.

- ``Singleton(build)``: one object. ``.get()`` builds it on first use (thread-safe,
  double-checked: the lock is taken only while nothing is built), later calls return it.
- ``Keyed(build)``: one object per key (a boto3 client per region and timeout, a token
  source per identity and scope). ``.get(key)`` builds ``build(key)`` on first use.

Either may take ``close``, called with the object when it is reset (a thread pool shut
down, telemetry flushed). A ``Singleton`` may take ``stale``, which marks a built object as
unusable so the next ``get`` builds another (an event loop that was closed); ``Keyed.drop``
forgets the entries whose key went stale. Objects tied to an event loop (httpx clients) are
keyed by the loop, so one loop never sees another's, and are forgotten rather than closed:
their loop may be gone by the time of a reset, so ``close`` is synchronous.

``reset_all()`` forgets every one of them, closing what has a ``close``: tests call it
between cases, after changing the environment, and the next call builds afresh from it.
Each object's own ``.reset()`` is there for the few places that need just one. Create
them at module level only: each registers itself for ``reset_all`` and stays registered.
(``functools.cache`` would not do: it may run the builder twice in a race, knows no
``reset_all`` and closes nothing.)

Standard library only (``threading``, ``typing``, ``collections.abc``): importing this
costs nothing on a cold start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Resettable(Protocol):
    def reset(self) -> None: ...


_UNSET = object()
_registry: list[_Resettable] = []


def _register(item: _Resettable) -> None:
    _registry.append(item)


class Singleton(Generic[T]):
    """One object per process, built by ``build()`` on first use and reused."""

    def __init__(
        self,
        build: Callable[[], T],
        *,
        close: Callable[[T], object] | None = None,
        stale: Callable[[T], bool] | None = None,
    ) -> None:
        self._build = build
        self._close = close
        self._stale = stale
        self._lock = threading.Lock()
        self._value: T = _UNSET  # type: ignore[assignment]
        _register(self)

    def get(self) -> T:
        """The object, built now if this is the first use (or the last one went stale)."""
        value = self._value
        if value is _UNSET or (self._stale is not None and self._stale(value)):
            with self._lock:
                value = self._value
                if value is _UNSET or (self._stale is not None and self._stale(value)):
                    value = self._value = self._build()
        return value

    def peek(self) -> T | None:
        """The object if it has been built, else None (never builds)."""
        value = self._value
        return None if value is _UNSET else value

    def reset(self) -> None:
        """Forget the object (closing it if there is a ``close``); the next ``get`` rebuilds."""
        with self._lock:
            value, self._value = self._value, _UNSET  # type: ignore[assignment]
        if value is not _UNSET and self._close is not None:
            self._close(value)


class Keyed(Generic[K, V]):
    """One object per key, built by ``build(key)`` on first use and reused."""

    def __init__(
        self,
        build: Callable[[K], V],
        *,
        close: Callable[[V], object] | None = None,
    ) -> None:
        self._build = build
        self._close = close
        self._lock = threading.RLock()  # ``build`` may ``drop`` stale entries
        self._values: dict[K, V] = {}
        _register(self)

    def get(self, key: K) -> V:
        """The object for ``key``, built now if this is the key's first use."""
        try:
            return self._values[key]  # a dict read needs no lock
        except KeyError:
            pass
        with self._lock:
            if key not in self._values:
                self._values[key] = self._build(key)
            return self._values[key]

    def values(self) -> list[V]:
        """The objects built so far."""
        with self._lock:
            return list(self._values.values())

    def drop(self, stale: Callable[[K], bool]) -> None:
        """Forget (and close) the objects whose key is ``stale`` (a loop that has closed)."""
        with self._lock:
            gone = [k for k in self._values if stale(k)]
            values = [self._values.pop(k) for k in gone]
        self._closing(values)

    def reset(self) -> None:
        """Forget every object (closing each if there is a ``close``)."""
        with self._lock:
            values = list(self._values.values())
            self._values.clear()
        self._closing(values)

    def _closing(self, values: list[V]) -> None:
        if self._close is not None:
            for value in values:
                self._close(value)


class _OnReset:
    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn

    def reset(self) -> None:
        self._fn()


def on_reset(fn: Callable[[], object]) -> None:
    """Call ``fn`` in ``reset_all`` too (module-level counters that live beside a singleton)."""
    _register(_OnReset(fn))


def reset_all() -> None:
    """Forget every process-wide object, newest first, closing those with a ``close``.

    For tests (and a host that changes the environment between runs): what is asked for
    next is built again from the environment as it is then. A ``close`` that raises does
    not stop the others; the first such error is raised at the end.
    """
    first: BaseException | None = None
    for item in reversed(_registry):
        try:
            item.reset()
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first
