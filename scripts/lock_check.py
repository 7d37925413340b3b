"""Check that requirements.lock satisfies every dependency pyproject.toml declares.

Run by scripts/setup.sh (and `bash scripts/lock.sh --check`): a dependency added to
pyproject.toml without refreshing the lock fails here, naming it, instead of being
installed at whatever version the registry has today.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def locked_versions(lock: Path) -> dict[str, str]:
    versions = {}
    for line in lock.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            versions[canonicalize_name(name)] = version
    return versions


def main(lock_path: str = "requirements.lock") -> int:
    root = Path(__file__).resolve().parent.parent
    lock = root / lock_path
    if not lock.is_file():
        print(f"{lock}: no lock file; run 'bash scripts/lock.sh'")
        return 1
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        wanted += extra
    versions = locked_versions(lock)
    problems = []
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in versions:
            problems.append(f"{requirement.name}: in pyproject.toml but not in {lock_path}")
        elif not requirement.specifier.contains(versions[name], prereleases=True):
            problems.append(f"{requirement.name}: pyproject.toml asks for "
                            f"'{requirement.specifier}', {lock_path} has {versions[name]}")
        for extra in requirement.extras:  # psycopg[binary] -> psycopg-binary
            if canonicalize_name(f"{requirement.name}-{extra}") not in versions:
                problems.append(f"{requirement.name}[{extra}]: the extra's package is not in "
                                f"{lock_path}")
    for problem in problems:
        print(problem)
    if problems:
        print("refresh the lock: bash scripts/lock.sh")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
