"""Every command in the README's "Compression", "Search", "Integer-only inference" and
"Accelerator cost model and mapper" blocks runs as written (from a folder where
`examples/` is the project's), in order, and exits 0.

Not run from here: `CONFIG.toml … --storage postgresql://user:pass@host/db` is a template
(many processes on a real PostgreSQL server are tested in tests/search/test_search.py),
and `kiln experiment …` on the convnet takes minutes (the same commands on a small model
with `--quick` are in tests/cli/test_compress_cli.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NOT_HERE = ("CONFIG.toml", "kiln experiment ")


def readme_commands(section: str) -> list[str]:
    """The `kiln …` lines of the bash blocks of one README section, comments dropped."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # a line continued with a backslash
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("kiln ") and not any(part in line for part in NOT_HERE):
                commands.append(line)
    return commands


def _run(command: str, folder: Path) -> None:
    args = command.split()[1:]
    result = subprocess.run([sys.executable, "-m", "kiln", *args], cwd=folder,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


COMPRESSION = readme_commands("Compression")


def test_the_blocks_are_found():
    assert len(COMPRESSION) >= 5
    assert any("minifloat-bfp" in command for command in COMPRESSION)
    assert len(readme_commands("Search")) >= 7


@pytest.mark.parametrize("command", COMPRESSION)
def test_compression_commands_run_as_written(user_folder, command):
    _run(command, user_folder)


@pytest.mark.parametrize("section", ["Integer-only inference",
                                     "Accelerator cost model and mapper"])
def test_integer_and_mapper_commands_run_as_written_in_order(user_folder, section):
    commands = readme_commands(section)
    assert len(commands) >= 3
    for command in commands:
        _run(command, user_folder)


def test_search_commands_run_as_written_in_order(user_folder):
    commands = readme_commands("Search")
    for command in commands:
        _run(command, user_folder)
    # the route the block shows ends in an integer program made from the winner
    assert (user_folder / "out" / "convnet-mixed-int" / "manifest.json").is_file()
