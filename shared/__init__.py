"""Platform-agnostic core of the inference functions.

Nothing here imports a platform SDK (azure.functions, mangum, boto3, azure-identity,
openai) at module import time; backends import their SDK lazily on first use.
"""
