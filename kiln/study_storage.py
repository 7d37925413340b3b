"""Study storage: SQLite, PostgreSQL, or memory (``memory://``, one process only)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kiln.errors import KilnError


class StorageError(KilnError):
    """A study storage that cannot be opened (bad URL, server down, missing driver)."""


_MEMORY: dict[str, Any] = {}
#: A running trial's process writes a heartbeat this often; one silent for GRACE_SECONDS
#: belongs to a dead process: it is failed and queued again (Optuna's heartbeat).
HEARTBEAT_SECONDS = 2
GRACE_SECONDS = 10


def open_storage(url: str, heartbeat: bool = True, grace_seconds: int = GRACE_SECONDS):
    """An Optuna RDB storage; stale running trials (a dead worker) are failed and retried.

    ``memory://NAME`` is an in-process storage (one per name, for tests and benchmarks
    that run many small studies; it cannot be shared between processes)."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are experimental in Optuna 5; they are how a dead worker's trial gets retried.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith("memory://"):
        return _MEMORY.setdefault(url, optuna.storages.InMemoryStorage())
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    elif "://" not in url:
        raise StorageError(
            f"storage '{url}' is not a database URL",
            hint="use sqlite:///path/study.db or postgresql://user:pass@host/db",
        )
    options: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat:
        options.update(
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=grace_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    for attempt in range(5):
        try:
            return RDBStorage(url, **options)
        except Exception as error:  # sqlalchemy raises many kinds; most mean a bad URL
            # Processes that open a new database at the same moment all create Optuna's
            # tables; the losers of that race see a unique-key violation: open it again.
            if "duplicate key" in str(error) or "already exists" in str(error):
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = str(error).strip().splitlines()[0][:200]
            raise StorageError(
                f"cannot open study storage '{redact(url)}': {reason}",
                hint="is the database server running and the URL right?",
            ) from None
    raise StorageError(f"cannot create Optuna's tables in '{redact(url)}' (other processes "
                       "kept creating them)", hint="start the search again")


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
