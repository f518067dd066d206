"""Route templates of HTTP triggers (``v1/jobs/{id}``, ``{id?}``, ``{*rest}``, ``{n:int}``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAM = re.compile(r"\{([^{}]+)\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?i:true|false)",
    "guid": r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}",
}


class RouteError(ValueError):
    """A route template devhost cannot compile."""


def _param(spec: str, template: str) -> tuple[str, str]:
    name, _, constraint = spec.partition(":")
    name = name.strip()
    if not name.isidentifier():
        raise RouteError(f"route {template!r}: bad parameter {{{spec}}}")
    pattern = _CONSTRAINTS.get(constraint.split("(")[0].strip().lower(), r"[^/]+")
    return name, pattern


@dataclass(frozen=True)
class RouteTemplate:
    """A compiled template; ``match`` returns the route parameters or None."""

    template: str
    regex: re.Pattern[str]
    literal_segments: int
    has_catch_all: bool

    @classmethod
    def compile(cls, prefix: str, route: str) -> RouteTemplate:
        segments = [s for s in f"{prefix.strip('/')}/{route.strip('/')}".split("/") if s]
        parts: list[str] = []
        literals = 0
        catch_all = False
        for i, seg in enumerate(segments):
            whole = _PARAM.fullmatch(seg)
            if whole and whole[1].startswith("*"):
                if i != len(segments) - 1:
                    raise RouteError(f"route {route!r}: a catch-all must be the last segment")
                name, _ = _param(whole[1].lstrip("*").rstrip("?"), route)
                parts.append(f"(?:/(?P<{name}>.*))?")
                catch_all = True
                continue
            if whole and whole[1].endswith("?"):
                name, pattern = _param(whole[1][:-1], route)
                parts.append(f"(?:/(?P<{name}>{pattern}))?")
                continue
            pieces: list[str] = []
            pos = 0
            for m in _PARAM.finditer(seg):
                pieces.append(re.escape(seg[pos : m.start()]))
                name, pattern = _param(m[1], route)
                pieces.append(f"(?P<{name}>{pattern})")
                pos = m.end()
            pieces.append(re.escape(seg[pos:]))
            if not _PARAM.search(seg):
                literals += 1
            parts.append("/" + "".join(pieces))
        try:
            regex = re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE)
        except re.error as exc:
            raise RouteError(f"route {route!r}: {exc}") from exc
        return cls(route, regex, literals, catch_all)

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        return {k: v for k, v in m.groupdict().items() if v is not None}

    @property
    def sort_key(self) -> tuple[int, int]:
        """More literal segments first, catch-alls last (as ASP.NET route precedence)."""
        return (int(self.has_catch_all), -self.literal_segments)
