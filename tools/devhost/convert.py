"""Trigger arguments built the way the Python worker builds them: meta ``Datum`` -> ``decode``.

The deployed host sends the worker the trigger's data and its metadata as typed values; the
worker wraps each in ``azure.functions.meta.Datum`` and hands them to the binding's converter
(``QueueMessageInConverter.decode``, ``BlobConverter.decode``, or for an SDK-type parameter
the deferred-binding converter registered in ``azurefunctions.extensions.base``, such as
``azurefunctions-extensions-bindings-blob``'s). devhost does the same with the same
converters, so a function receives locally exactly what it receives deployed: a
``func.InputStream`` holds the whole blob in memory (as in the worker), and an SDK-type
parameter receives a reference or client and no content.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.functions import meta
from azure.functions.blob import BlobConverter
from azure.functions.queue import QueueMessageInConverter

#: What the host puts in a deferred (SDK-type) blob binding's ModelBindingData.
MODEL_BINDING_SOURCE = "AzureStorageBlobs"
MODEL_BINDING_VERSION = "1.0"


@dataclass(frozen=True)
class ModelBindingData:
    """The worker's ``ModelBindingData`` message (version, source, content_type, content)."""

    version: str
    source: str
    content_type: str
    content: str


def _time(value: datetime | None) -> meta.Datum | None:
    return None if value is None else meta.Datum(json.dumps(value.isoformat()), "json")


def queue_metadata(message: Any, body: bytes) -> dict[str, meta.Datum]:
    """The queue trigger's metadata as the host sends it (``message``: a storage QueueMessage)."""
    fields: dict[str, meta.Datum | None] = {
        "Id": meta.Datum(str(message.id), "string"),
        "DequeueCount": meta.Datum(int(message.dequeue_count or 0), "int"),
        "PopReceipt": meta.Datum(str(message.pop_receipt), "string"),
        "InsertionTime": _time(message.inserted_on),
        "ExpirationTime": _time(message.expires_on),
        "NextVisibleTime": _time(message.next_visible_on),
        "QueueTrigger": meta.Datum(body.decode("utf-8", "replace"), "string"),
    }
    return {k: v for k, v in fields.items() if v is not None}


def queue_datum(body: bytes) -> meta.Datum:
    """The message body: text when it is UTF-8 (as the host sends it), else bytes."""
    try:
        return meta.Datum(body.decode("utf-8"), "string")
    except UnicodeDecodeError:
        return meta.Datum(body, "bytes")


def queue_trigger_arg(message: Any, body: bytes) -> Any:
    """``func.QueueMessage`` exactly as the worker builds it for ``message``."""
    return QueueMessageInConverter.decode(
        queue_datum(body), trigger_metadata=queue_metadata(message, body)
    )


def is_sdk_type(annotation: Any) -> bool:
    """Whether the worker treats the parameter as a deferred (SDK-type) binding."""
    try:
        from azurefunctions.extensions.base import meta as ext_meta
    except ImportError:  # no extension installed: nothing can be an SDK type
        return False
    return bool(ext_meta.get_binding_registry().check_supported_type(annotation))


def blob_metadata(
    *, container: str, name: str, uri: str, properties: dict[str, Any], metadata: dict[str, str]
) -> dict[str, meta.Datum]:
    return {
        "BlobTrigger": meta.Datum(f"{container}/{name}", "string"),
        "Uri": meta.Datum(uri, "string"),
        "Properties": meta.Datum(json.dumps(properties), "json"),
        "Metadata": meta.Datum(json.dumps(metadata), "json"),
        "Name": meta.Datum(name, "string"),
    }


def blob_sdk_arg(
    annotation: Any,
    *,
    binding: str,
    connection: str,
    container: str,
    name: str,
    trigger_metadata: Any,
) -> Any:
    """The SDK-type argument (``BlobClient``…) via the extension's own converter.

    The host sends no content, only ModelBindingData naming the connection setting, container
    and blob; the converter builds the client from that setting, as deployed.
    """
    from azurefunctions.extensions.base import Datum as ExtDatum
    from azurefunctions.extensions.base import meta as ext_meta

    converter = ext_meta.get_binding_registry().get(binding)
    if converter is None:
        raise TypeError(f"no deferred-binding converter is registered for {annotation!r}")
    content = {"Connection": connection, "ContainerName": container, "BlobName": name}
    data = ModelBindingData(
        MODEL_BINDING_VERSION, MODEL_BINDING_SOURCE, "application/json", json.dumps(content)
    )
    return converter.decode(
        ExtDatum(data, "model_binding_data"), trigger_metadata=trigger_metadata, pytype=annotation
    )


def blob_input_arg(annotation: Any, content: bytes, trigger_metadata: dict[str, meta.Datum]) -> Any:
    """``func.InputStream`` (the whole blob, in memory, as in the worker), or bytes / str."""
    if annotation is bytes:
        return content
    if annotation is str:
        return content.decode("utf-8")
    return BlobConverter.decode(meta.Datum(content, "bytes"), trigger_metadata=trigger_metadata)


def resolve(annotation: Any) -> Any:
    """Unwrap ``Optional[T]`` the way the worker does before picking a converter."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return args[0]
    return annotation
