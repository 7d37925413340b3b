"""YAML as kiln reads it: like ``yaml.safe_load``, but a key given twice in one mapping is
an error naming the key and both lines (PyYAML silently keeps the last value, so a
repeated ``unit_energy`` changed an accelerator's energy without a word).

>>> load_yaml("a: 1\\nb: 2\\n", "x.yaml")
{'a': 1, 'b': 2}
>>> load_yaml("a: 1\\na: 4\\n", "x.yaml")
Traceback (most recent call last):
kiln.errors.ConfigError: x.yaml: key 'a' appears twice in one mapping (lines 1 and 2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kiln.errors import ConfigError


class _DuplicateKeyError(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    keep_last = False  # (set on a subclass) ZigZag's behaviour: warn, keep the last value
    source = "<yaml>"

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen and not self.keep_last:
                    raise _DuplicateKeyError(key, seen[key], line)
                if key in seen:
                    import warnings

                    warnings.warn(f"{self.source}: key '{key}' appears twice in one mapping "
                                  f"(lines {seen[key]} and {line}); keeping the last, as "
                                  "ZigZag does", DuplicateKeyWarning, stacklevel=2)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyWarning(UserWarning):
    """A repeated YAML key accepted with ``duplicate_keys="last"``."""


class _KeepLastLoader(_StrictLoader):
    keep_last = True


def load_yaml(text: str, source: str | Path, *, duplicate_keys: str = "error") -> Any:
    """Parse YAML ``text`` (from ``source``, named in errors) strictly. ``duplicate_keys=
    "last"`` reads a file as PyYAML (and ZigZag) do, with a warning per repeated key: ZigZag's
    own bundled ``tpu_like.yaml`` repeats ``ports``."""
    if duplicate_keys not in ("error", "last"):
        raise ConfigError(f"duplicate_keys must be 'error' or 'last', got '{duplicate_keys}'")
    base = _StrictLoader if duplicate_keys == "error" else _KeepLastLoader
    loader = type("Loader", (base,), {"source": str(source)})
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKeyError as exc:
        raise ConfigError(f"{source}: key '{exc.key}' appears twice in one mapping "
                          f"(lines {exc.first} and {exc.second})",
                          hint="remove one of them: YAML keeps only the last") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def load_yaml_file(path: str | Path, *, duplicate_keys: str = "error") -> Any:
    path = Path(path)
    return load_yaml(path.read_text(), path, duplicate_keys=duplicate_keys)


def load_layer_numbers(path: str | Path, key: str) -> dict[str, float]:
    """A per-layer table ``{key: {layer: number}}`` from a YAML file, as ``kiln search``
    writes them (``best_pruning.yaml``: fractions, ``best_channels.yaml``: multipliers).

    >>> load_layer_numbers("out/search/x/best_pruning.yaml", "fractions")  # doctest: +SKIP
    {'features_0': 0.25, 'features_4': 0.5, 'classifier_1': 0.0}
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    data = load_yaml_file(path)
    table = data.get(key) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path}: expected a mapping '{key}: {{layer: number, ...}}'")
    result = {}
    for layer, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: {key}.{layer}: expected a number, got {value!r}")
        result[str(layer)] = float(value)
    return result
