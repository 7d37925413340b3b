"""Errors a user can cause. Every one is a :class:`KilnError`.

The CLI prints a ``KilnError`` in one or two lines and exits with status 2, without a
traceback. Raise it with *what* was wrong, *where* (node, file, YAML path) and, where it
helps, *what to do*::

    raise UnsupportedOperatorError("Conv3D at node 'conv_7'", hint="export with 2-D convs")
"""

from __future__ import annotations

from typing import Any


class KilnError(Exception):
    """Base class of every error a user can cause (bad file, bad option, bad model)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ModelFormatError(KilnError):
    """A model file that cannot be read: missing, truncated, not ONNX, not a checkpoint."""


class UnsupportedOperatorError(KilnError):
    """An operator kiln cannot import or lower. Lists every offending node at once."""


class UnknownNameError(KilnError):
    """A name (model, dataset, option value) that kiln does not know."""


class DatasetNotInstalledError(KilnError):
    """A dataset whose files are not on this machine; the message says how to install them."""


class InterruptError(KilnError):
    """The user stopped a command (Ctrl-C); the message says what was kept. Exit 130."""


class ConfigError(KilnError):
    """An invalid option, configuration file or hardware description field."""


def _fields_at(model: Any, path: tuple) -> list[str]:
    """The field names of the (nested) pydantic model at ``path`` of ``model``."""
    for part in path:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        model = fields[part].annotation
    return list(getattr(model, "model_fields", {}))


def config_error_from_validation(error: Any, source: str, model: Any = None) -> ConfigError:
    """A :class:`ConfigError` listing every problem of a pydantic ``ValidationError``, each
    with its path in the file: ``source: stages.rtl.parallelism: Input should be ...``; an
    unknown field is named as one, with the closest known field of ``model`` there."""
    import difflib

    problems = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"]
        if item.get("type") == "extra_forbidden" and item["loc"]:
            known = _fields_at(model, tuple(item["loc"][:-1])) if model is not None else []
            close = difflib.get_close_matches(str(item["loc"][-1]), known, n=1)
            message = "unknown field" + (f" (did you mean '{close[0]}'?)" if close else
                                         f" (known: {', '.join(known)})" if known else "")
        problems.append(f"{where}: {message}" if where else message)
    return ConfigError(f"{source}: " + "; ".join(problems))
