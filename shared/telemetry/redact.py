"""Redaction of captured content: API keys, bearer tokens, e-mail addresses, and patterns
from ``INFER_REDACT_PATTERNS`` (a JSON list of regular expressions, or one expression)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from shared.errors import ConfigError

EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"
SECRETS = (
    r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*",  # Authorization: Bearer ...
    r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",  # a JWT
    r"\bsk-[A-Za-z0-9_\-]{16,}",  # OpenAI-style keys (sk-..., sk-proj-...)
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub tokens
    r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack tokens
    r"\b[a-f0-9]{32}\b",  # Azure OpenAI / Cognitive Services keys (32 hex digits)
    r"(?i)\b(?:api[_-]?key|secret|password|passwd|token|access[_-]?key)\b[\"']?\s*[:=]\s*"
    r"[\"']?[^\s\"',;]{6,}",  # key=value pairs
)
MASK = "[REDACTED]"
EMAIL_MASK = "[EMAIL]"


class Redactor:
    def __init__(self, extra: Sequence[str] = ()) -> None:
        self._secrets = [re.compile(p) for p in (*SECRETS, *extra)]
        self._email = re.compile(EMAIL)

    def __call__(self, text: str) -> str:
        for pattern in self._secrets:
            text = pattern.sub(MASK, text)
        return self._email.sub(EMAIL_MASK, text)


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
