"""devhost: a local Azure Functions host for the project's function app (docs/architecture.md).

``python -m tools.devhost`` imports ``function_app.py``, indexes its functions with
azure-functions' own ``get_functions()`` and drives them as the Functions host would:
HTTP triggers under ``/{routePrefix}`` (uvicorn), queue triggers polled from Azure Storage
(Azurite) with leases, dequeue counts and poison queues, and blob triggers with receipts.
"""
