"""Reading kiln's TOML config files (search studies, flows) with one set of rules.

Input files a config names are relative to the config file, as in any config format, and
must exist when it is read; outputs stay relative to where kiln runs.

Example:
    >>> data = read_toml("examples/flow/flow.toml", "flow config")  # doctest: +SKIP
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError

RELATIVE_HINT = "paths in a config are relative to the config file"


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed TOML of ``path``; a missing file or a syntax error is a ``ConfigError``
    naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def relative_to_config(config_path: str | Path, value: str) -> Path:
    """``value`` as written in the config at ``config_path``: absolute, or relative to it."""
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else Path(config_path).resolve().parent / candidate


def resolve_input_file(data: dict[str, Any], section: str, key: str,
                       config_path: str | Path) -> None:
    """Rewrite ``data[section][key]`` (when it is a non-empty string) to the absolute path
    of the file it names, which must exist."""
    table = data.get(section)
    if not isinstance(table, dict):
        return
    value = table.get(key)
    if not isinstance(value, str) or not value:
        return
    resolved = relative_to_config(config_path, value)
    if not resolved.is_file():
        raise ConfigError(f"{config_path}: [{section}].{key} '{value}': no such file "
                          f"({resolved})", hint=RELATIVE_HINT)
    table[key] = str(resolved)
