"""Root conftest: every module in tests/fixtures/ is a pytest plugin (servers, events, fakes)."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem not in ("__init__", "procs")
)
