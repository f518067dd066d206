"""Backend kind -> implementation, imported only when a backend of that kind is configured.

A function whose backends are all OpenAI-compatible never imports boto3 or azure-identity.
"""

from __future__ import annotations

import importlib
from typing import Any

from shared.backends.base import Backend
from shared.settings import BackendConfig

KINDS: dict[str, str] = {
    "openai": "shared.backends.openai_compat:OpenAIBackend",
    "azure_openai": "shared.backends.azure_openai:AzureOpenAIBackend",
    "azureml": "shared.backends.azureml:AzureMLBackend",
    "sagemaker": "shared.backends.sagemaker:SageMakerBackend",
}


def build_backend(config: BackendConfig) -> Backend:
    module_name, _, attr = KINDS[config.kind].partition(":")
    cls: Any = getattr(importlib.import_module(module_name), attr)
    backend: Backend = cls(config)
    return backend
