"""AWS Signature Version 4 verification (header auth), as botocore's ``SigV4Auth`` signs.

Canonical request = method, canonical URI (the wire path URI-encoded once more, non-S3
style), sorted query, the signed headers (lower-case name, trimmed value), the signed header
list, and the hex SHA-256 of the body (or ``UNSIGNED-PAYLOAD``). String to sign =
``AWS4-HMAC-SHA256``, ``X-Amz-Date``, the credential scope, SHA-256 of the canonical request;
key = HMAC chain over date, region, service, ``aws4_request``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import quote

_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})$"
)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class SignatureError(Exception):
    """Why a request's signature is refused; ``code`` is the AWS error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = sorted(tuple(p.partition("=")[::2]) for p in query.split("&"))
    return "&".join(f"{k}={v}" for k, v in pairs)


def verify(
    method: str,
    raw_path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    credentials: Mapping[str, str],
    service: str,
    now: dt.datetime | None = None,
    max_skew_s: float = 900.0,
) -> str:
    """Check the request's SigV4 signature; return the access key id, or raise
    :class:`SignatureError` (``headers`` must be case-insensitive, like Starlette's)."""
    auth = headers.get("authorization", "")
    match = _AUTH_RE.match(auth.strip())
    if match is None:
        raise SignatureError("MissingAuthenticationToken", "Missing or malformed SigV4 header")
    parts = match["cred"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SignatureError("IncompleteSignature", "Credential scope is malformed")
    access_key, date, region, scope_service, _ = parts
    if access_key not in credentials:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if scope_service != service:
        raise SignatureError(
            "InvalidSignatureException", f"Credential should be scoped to {service}"
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise SignatureError("IncompleteSignature", "X-Amz-Date is missing or bad") from None
    current = now or dt.datetime.now(dt.UTC)
    if abs((current - when).total_seconds()) > max_skew_s or not amz_date.startswith(date):
        raise SignatureError("InvalidSignatureException", "Signature expired or date mismatch")
    signed = match["signed"].split(";")
    if "host" not in signed:
        raise SignatureError("InvalidSignatureException", "host must be a signed header")
    canon_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    scope = f"{date}/{region}/{service}/aws4_request"
    key = signing_key(credentials[access_key], date, region, service)
    given = match["sig"]
    for payload_hash in (hashlib.sha256(body).hexdigest(), UNSIGNED_PAYLOAD):
        canonical = "\n".join(
            [method.upper(), quote(raw_path, safe="/~"), canonical_query(query), canon_headers,
             match["signed"], payload_hash]
        )  # fmt: skip
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, given):
            return access_key
    raise SignatureError(
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided.",
    )
