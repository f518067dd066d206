"""The Functions host's key check for the HTTP routes (Azure): ``INFER_AUTH_LEVEL``.

- ``FUNCTION``: the host answers 401 unless the request carries a function or host key
  (``x-functions-key`` header or ``code`` query parameter);
- ``ANONYMOUS``: the host checks nothing; the app's own check (``INFER_API_KEYS``, a JWT)
  is then the only one;
- ``ADMIN``: the master key only.

Unset, it is ``ANONYMOUS`` when the app checks callers itself (``INFER_API_KEYS`` or
``INFER_JWT`` set) and ``FUNCTION`` otherwise, so that no deployment is open by default.
Read when the module is indexed (app settings are in the environment then), as the host
reads every binding once. ``/healthz`` and ``/readyz`` stay anonymous: platform probes send
no key (``/readyz`` shows details only to an authenticated caller).
"""

from __future__ import annotations

import os

import azure.functions as func

SETTING = "INFER_AUTH_LEVEL"
CALLER_CHECK_SETTINGS = ("INFER_API_KEYS", "INFER_JWT")


def http_auth_level(environ: dict[str, str] | None = None) -> func.AuthLevel:
    env = os.environ if environ is None else environ
    raw = env.get(SETTING, "").strip()
    if raw:
        try:
            return func.AuthLevel[raw.upper()]
        except KeyError:
            raise ValueError(f"{SETTING}={raw!r}: expected ANONYMOUS, FUNCTION or ADMIN") from None
    checked = any(env.get(name, "").strip() not in ("", "[]") for name in CALLER_CHECK_SETTINGS)
    return func.AuthLevel.ANONYMOUS if checked else func.AuthLevel.FUNCTION


#: The level every model/jobs route uses, read once at indexing.
AUTH_LEVEL = http_auth_level()
