"""Errors the memory layer raises: each carries a one-line message a user can act on."""


class MemoryLayerError(Exception):
    """Base class of every error raised by the memory layer."""


class ConfigError(MemoryLayerError):
    """The configuration is wrong; the message says which setting to change."""


class InputError(MemoryLayerError, ValueError):
    """An argument (user id, message, metadata, filter) cannot be accepted as given."""


class LLMNotConfiguredError(MemoryLayerError):
    """`add(infer=True)` was asked for but no language model is configured."""


class LLMError(MemoryLayerError):
    """The language model could not be reached or did not answer usefully."""


class ExtractionError(LLMError):
    """The model's answer did not parse or validate, even after one retry. Nothing was written."""


class StoreBusyError(MemoryLayerError):
    """The embedded data directory is in use by another process."""


class StoreError(MemoryLayerError):
    """A store (Milvus, Kuzu, history) failed or cannot be reached."""


class NotFoundError(MemoryLayerError, KeyError):
    """No memory has the given id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0]) if self.args else "not found"


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
