"""Backend kind -> implementation, imported only when a backend of that kind is configured.

This table is the one list of kinds: settings validates an ``INFER_BACKENDS`` entry by
looking up its ``kind`` here and importing only that module (its config class is the
backend class's ``config_class``), and error messages list the kinds from it. A function
whose backends are all OpenAI-compatible never imports boto3 or azure-identity.

A new kind is one module (a config class on ``BackendConfig``, a backend class on
``BaseBackend`` or ``HttpBackend``) plus one line here, or one ``register`` call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.backends.base import Backend
    from shared.settings import BackendConfig

KINDS: dict[str, str] = {
    "openai": "shared.backends.openai_compat:OpenAIBackend",
    "azure_openai": "shared.backends.azure_openai:AzureOpenAIBackend",
    "azureml": "shared.backends.azureml:AzureMLBackend",
    "sagemaker": "shared.backends.sagemaker:SageMakerBackend",
}


def register(kind: str, target: str) -> None:
    """Add (or replace) a kind: ``target`` is ``"module:BackendClass"``, imported when an
    entry of that kind is first validated."""
    KINDS[kind] = target


def backend_class(kind: str) -> Any:
    """The backend class of ``kind`` (its module imported on first use)."""
    module_name, _, attr = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def config_class(kind: str) -> type[BackendConfig]:
    """The config class that validates an entry of ``kind``."""
    cls: type[BackendConfig] = backend_class(kind).config_class
    return cls


def build_backend(config: BackendConfig) -> Backend:
    backend: Backend = backend_class(config.kind)(config)
    return backend
