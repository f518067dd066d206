"""Function keys, checked as the Functions host checks them for HTTP triggers.

A trigger's ``authLevel`` decides: ``anonymous`` needs nothing; ``function`` needs a
function key or the master key; ``admin`` needs the master key. The key comes in the
``x-functions-key`` header or, failing that, the ``code`` query parameter; a missing or
wrong key is a 401 with an empty body. (Core Tools' ``func start`` skips this check; the
deployed host does not, and devhost behaves as deployed.)

Keys come from the settings ``DEVHOST_FUNCTION_KEYS`` (comma-separated; each one works
for every function, like a host key) and ``DEVHOST_MASTER_KEY``, read from the environment
or local.settings.json. When a route needs a key and none is set, devhost makes one up at
start and prints it, as the host generates its ``default`` key.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

KEY_HEADER = b"x-functions-key"
KEY_QUERY = "code"
FUNCTION_KEYS_SETTING = "DEVHOST_FUNCTION_KEYS"
MASTER_KEY_SETTING = "DEVHOST_MASTER_KEY"


@dataclass(frozen=True)
class HostKeys:
    function_keys: tuple[str, ...]
    master_key: str
    generated: bool = False  # the function key was made up at start (print it)

    @classmethod
    def from_settings(cls, environ: Mapping[str, str]) -> HostKeys:
        raw = environ.get(FUNCTION_KEYS_SETTING, "")
        keys = tuple(k.strip() for k in raw.split(",") if k.strip())
        generated = not keys
        if generated:
            keys = (secrets.token_urlsafe(30),)
        master = environ.get(MASTER_KEY_SETTING, "").strip() or secrets.token_urlsafe(30)
        return cls(keys, master, generated)

    @staticmethod
    def presented(headers: list[tuple[bytes, bytes]], query_string: bytes) -> str | None:
        for name, value in headers:
            if name.lower() == KEY_HEADER and value:
                return value.decode("latin-1")
        query = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        for param, text in query:
            if param == KEY_QUERY and text:
                return text
        return None

    def allows(self, auth_level: str, given: str | None) -> bool:
        level = auth_level.lower()
        if level == "anonymous":
            return True
        if not given:
            return False
        if _same(given, self.master_key):
            return True
        return level == "function" and any(_same(given, k) for k in self.function_keys)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def auth_level_of(trigger: Mapping[str, object]) -> str:
    """The trigger's level; the host's default is ``function``."""
    return str(trigger.get("authLevel") or "function").lower()
