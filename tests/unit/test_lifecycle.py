"""shared.lifecycle: process-wide objects built once on first use, reset once for tests."""

from __future__ import annotations

import ast
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import lifecycle
from shared.lifecycle import Keyed, Singleton, reset_all


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    """The objects these tests create leave the registry with them."""
    saved = list(lifecycle._registry)
    yield
    lifecycle._registry[:] = saved


def test_singleton_is_built_once_by_racing_threads_and_reused() -> None:
    builds: list[int] = []

    def build() -> object:
        builds.append(1)
        time.sleep(0.05)  # widen the window in which the other threads find nothing built
        return object()

    one = Singleton(build)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(one.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len(got) == 8 and all(g is got[0] for g in got)
    assert one.get() is got[0] and one.peek() is got[0]


def test_nothing_is_built_until_asked_and_none_is_a_value_kept() -> None:
    builds: list[int] = []
    one: Singleton[None] = Singleton(lambda: builds.append(1))
    assert one.peek() is None and builds == []
    assert one.get() is None and one.get() is None
    assert builds == [1], "a None result is built once, not on every call"


def test_a_failed_build_is_not_kept() -> None:
    calls: list[int] = []

    def build() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad setting")
        return "ok"

    one = Singleton(build)
    with pytest.raises(ValueError):
        one.get()
    assert one.get() == "ok"


def test_reset_closes_and_the_next_get_rebuilds() -> None:
    closed: list[object] = []
    one = Singleton(object, close=closed.append)
    one.reset()
    assert closed == [], "nothing built, nothing closed"
    first = one.get()
    one.reset()
    assert closed == [first]
    assert one.get() is not first


def test_stale_object_is_rebuilt() -> None:
    class Loop:
        closed = False

    one = Singleton(Loop, stale=lambda loop: loop.closed)
    first = one.get()
    assert one.get() is first
    first.closed = True
    assert one.get() is not first


def test_keyed_builds_once_per_key_and_drops_stale_keys() -> None:
    built: list[str] = []
    closed: list[str] = []

    def build(key: str) -> str:
        built.append(key)
        return key.upper()

    per = Keyed(build, close=closed.append)
    assert per.get("a") == "A" and per.get("a") == "A" and per.get("b") == "B"
    assert built == ["a", "b"]
    per.drop(lambda k: k == "a")
    assert closed == ["A"] and per.values() == ["B"]
    assert per.get("a") == "A" and built == ["a", "b", "a"]
    per.reset()
    assert sorted(closed) == ["A", "A", "B"] and per.values() == []


def test_reset_all_resets_every_registered_object_even_past_a_failing_close() -> None:
    def fail(_: object) -> None:
        raise RuntimeError("close failed")

    closed: list[object] = []
    first = Singleton(object, close=closed.append)
    failing = Singleton(object, close=fail)
    last: Keyed[int, list[int]] = Keyed(lambda k: [k], close=closed.append)
    cleared: list[int] = []
    lifecycle.on_reset(lambda: cleared.append(1))
    a, b, c = first.get(), failing.get(), last.get(1)
    with pytest.raises(RuntimeError, match="close failed"):
        reset_all()
    assert closed == [c, a] and cleared == [1], "newest first, none skipped"
    assert first.peek() is None and failing.peek() is None and last.values() == []
    assert first.get() is not a and failing.get() is not b


def test_reset_all_rebuilds_settings_service_and_clients_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from shared.service import get_service
    from shared.settings import get_settings
    from shared.storage.deadline import call_budget_s

    backends = [{"name": "one", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}]
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
    clean_env.setenv("INFER_STORAGE_TIMEOUT_S", "4")
    settings, service, budget = get_settings(), get_service(), call_budget_s()
    assert get_settings() is settings and get_service() is service, "reused warm"
    assert budget == 4.0
    backends[0]["name"] = "two"
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
    clean_env.setenv("INFER_STORAGE_TIMEOUT_S", "6")
    assert get_settings() is settings, "the environment is read once per process"
    reset_all()
    assert [b.name for b in get_settings().backends] == ["two"]
    assert get_service() is not service and call_budget_s() == 6.0


def test_lifecycle_imports_only_the_standard_library() -> None:
    """It is imported by every module that keeps an object, so it must cost nothing."""
    tree = ast.parse(Path(lifecycle.__file__).read_text(encoding="utf-8"))
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert found and all(m.split(".")[0] in sys.stdlib_module_names for m in found), found
