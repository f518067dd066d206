"""Who is calling, when no inbound keys or tokens are configured: the IAM principal Lambda
verified, else ``anonymous``.

Kept apart from ``shared.callers`` (keys, JWT issuers and their settings models) so that a
deployment without inbound auth never imports those: this is the whole of its per-request
caller work.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from shared.lifecycle import Singleton
from shared.settings import setting

if TYPE_CHECKING:
    from starlette.requests import Request

#: The caller id of every request when no inbound auth is configured.
ANONYMOUS = "anonymous"
#: Caller ids are namespaced by where they come from, so no source can claim another's id:
#: ``key:<id>`` (INFER_API_KEYS), ``jwt:<issuer>:<claim>`` (INFER_JWT), ``iam:<principal>``.
KEY_PREFIX = "key:"

_ASSUMED = re.compile(r"^arn:(aws[\w-]*):sts::(\d+):assumed-role/([^/]+)/.+$")
_AUTH_SETTINGS = ("INFER_API_KEYS", "INFER_JWT")


# Set but blank still counts: shared.callers refuses that as a configuration error.
_auth_set = Singleton(lambda: any(setting(name) is not None for name in _AUTH_SETTINGS))


def inbound_auth_set() -> bool:
    """Whether INFER_API_KEYS or INFER_JWT is set at all (read once per process)."""
    return _auth_set.get()


def iam_principal(request: Request) -> str | None:
    """The IAM principal Lambda verified (Function URL ``AuthType: AWS_IAM``), if any."""
    event = request.scope.get("aws.event")
    if not isinstance(event, dict):
        return None
    iam = (event.get("requestContext") or {}).get("authorizer", {}) or {}
    iam = iam.get("iam") if isinstance(iam, dict) else None
    if not isinstance(iam, dict):
        return None
    arn = iam.get("userArn")
    if isinstance(arn, str) and arn:
        m = _ASSUMED.match(arn)
        return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}" if m else arn
    caller_id = iam.get("callerId") or iam.get("userId")
    return f"iam:{caller_id}" if isinstance(caller_id, str) and caller_id else None
