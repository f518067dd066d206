"""Model endpoint backends. Each kind lives in its own module and imports its SDK lazily."""

from shared.backends.base import Backend, ByteStream, Result

__all__ = ["Backend", "ByteStream", "Result"]
