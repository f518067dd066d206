"""Redaction of captured content: API keys, bearer tokens, e-mail addresses, and patterns
from ``INFER_REDACT_PATTERNS`` (a JSON list of regular expressions, or one expression)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from shared.errors import ConfigError

# Every repetition is bounded: on text with no match a pattern does at most (length x
# bound) work, never quadratic; captured text is truncated before it is redacted.
EMAIL = r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,24}"
SECRETS = (
    r"(?i)\bbearer\s{1,8}[A-Za-z0-9\-._~+/]{1,4096}=*",  # Authorization: Bearer ...
    r"\beyJ[A-Za-z0-9_\-]{1,4096}\.[A-Za-z0-9_\-]{1,4096}\.[A-Za-z0-9_\-]{0,4096}",  # a JWT
    r"\bsk-[A-Za-z0-9_\-]{16,512}",  # OpenAI-style keys (sk-..., sk-proj-...)
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,255}\b",  # GitHub tokens
    r"\bxox[abprs]-[A-Za-z0-9\-]{10,255}",  # Slack tokens
    r"\b[a-f0-9]{32}\b",  # Azure OpenAI / Cognitive Services keys (32 hex digits)
    r"(?i)\b(?:api[_-]?key|secret|password|passwd|token|access[_-]?key)\b[\"']?\s{0,8}[:=]"
    r"\s{0,8}[\"']?[^\s\"',;]{6,512}",  # key=value pairs
)
#: Text kept past a truncation point while redacting, so a secret cut by it is still seen.
MARGIN = 4096
MASK = "[REDACTED]"
EMAIL_MASK = "[EMAIL]"


class Redactor:
    def __init__(self, extra: Sequence[str] = ()) -> None:
        self._secrets = [re.compile(p) for p in (*SECRETS, *extra)]
        self._email = re.compile(EMAIL)

    def __call__(self, text: str, limit: int | None = None) -> str:
        """``text`` redacted; with ``limit``, truncated to it first (plus ``MARGIN``, so a
        secret straddling the cut is still found) and after."""
        if limit is not None:
            text = text[: limit + MARGIN]
        for pattern in self._secrets:
            text = pattern.sub(MASK, text)
        text = self._email.sub(EMAIL_MASK, text)
        return text if limit is None else text[:limit]


def parse_patterns(raw: str | None) -> list[str]:
    """``INFER_REDACT_PATTERNS``: a JSON list of regular expressions, or a single one."""
    text = (raw or "").strip()
    if not text:
        return []
    patterns: list[str] = []
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            raise ConfigError("INFER_REDACT_PATTERNS: not a valid JSON list") from None
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ConfigError("INFER_REDACT_PATTERNS: expected a JSON list of strings")
        patterns = value
    else:
        patterns = [text]
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ConfigError(f"INFER_REDACT_PATTERNS: {p!r} is not a valid regex: {exc}") from None
    return patterns
