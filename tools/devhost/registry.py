"""Load the function app and describe each function the way the host indexes it."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister


class IndexingError(RuntimeError):
    """The app module has no FunctionApp, or a function devhost cannot drive."""


@dataclass(frozen=True)
class FunctionSpec:
    """One indexed function: its trigger binding, other bindings and the user callable."""

    name: str
    trigger: dict[str, Any]
    bindings: tuple[dict[str, Any], ...]
    func: Callable[..., Any]

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def outputs(self) -> tuple[dict[str, Any], ...]:
        return tuple(b for b in self.bindings if b.get("direction") == "OUT")


def _plain(binding_json: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(binding_json)
    direction = str(data.get("direction", "")).upper()
    data["direction"] = {"0": "IN", "1": "OUT", "2": "INOUT"}.get(direction, direction)
    return data


def describe(function: func.decorators.function_app.Function) -> FunctionSpec:
    trigger = function.get_trigger()
    name = function.get_function_name()
    if trigger is None or name is None:
        raise IndexingError(f"function {name!r} has no trigger")
    bindings = tuple(_plain(b) for b in function.get_raw_bindings())
    trig = next(b for b in bindings if b["type"] == trigger.get_binding_name())
    return FunctionSpec(name, trig, bindings, function.get_user_function())


def find_app(module: ModuleType) -> FunctionRegister:
    apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    if len(apps) != 1:
        raise IndexingError(
            f"{module.__name__}: expected exactly one FunctionApp at module level, "
            f"found {len(apps)}"
        )
    return apps[0]


def load_app(app_module: str, app_dir: Path) -> list[FunctionSpec]:
    """Import ``app_module`` from ``app_dir`` and index its functions.

    ``get_functions()`` is called exactly once: a second call on the same app raises a
    duplicate-name error in azure-functions.
    """
    path = str(app_dir.resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    module = importlib.import_module(app_module)
    app = find_app(module)
    return [describe(f) for f in app.get_functions()]
