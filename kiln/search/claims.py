"""Claims: which trial may spend an evaluation, decided one trial at a time across every
process on a study.

Any number of ``kiln search`` processes, on any number of machines, run trials on one study.
Before a trial evaluates anything it takes the study's lock (:func:`study_lock`: a
PostgreSQL advisory lock, a file lock for SQLite) and decides, from what every trial in the
storage says at that moment:

* ``reuse``: the configuration's result is known (this study or the evaluation cache);
* ``wait``: another running trial has claimed the same configuration: wait for it to
  finish, then decide again (its result is then known);
* ``evaluate``: the budget has room for one more evaluation beyond the evaluations spent
  and the claims of running trials: this trial claims it;
* ``decline``: the budget is spent and no claim is outstanding: the trial ends without
  evaluating, and the process stops;
* while the budget is full but claims are outstanding, it waits and decides again (a
  claim's process may die, and the budget would be left unspent).

Decisions are taken under the lock, so two processes never both claim the last
evaluation, and never both evaluate one configuration. A claim lives on its trial: when a
process dies (SIGKILL, a lost machine), Optuna's heartbeat marks its running trial failed
after the grace period and queues it again, and the claim goes with it.

>>> with study_lock(storage, "convnet-mixed"):      # doctest: +SKIP
...     kind = decide(study, trial, key, budget=20, known=False)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiln.search.results import trial_cost

DECISION = "decision"  # user attr: {"trial": number, "kind": ..., "key": ..., "process": ...}
PROCESS = f"{socket.gethostname()}:{os.getpid()}"  # which machine and process decided
POLL_SECONDS = 0.25
_MEMORY_LOCKS: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def study_lock(storage: Any, study_name: str) -> Iterator[None]:
    """Exclusive, across processes and machines, for one study on ``storage`` (an Optuna
    storage). Released when the holder exits, however it exits (PostgreSQL drops a dead
    session's advisory locks; the kernel drops a dead process's file locks)."""
    # A study's own storage is Optuna's cache around the database storage: unwrap it.
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is None:  # in-memory: one process
        lock = _MEMORY_LOCKS.setdefault(study_name, threading.Lock())
        with lock:
            yield
        return
    if engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big",
                             signed=True)
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        return
    # beside the database, hidden: a lock file is no result a user should have to read past
    database = Path(engine.url.database or "study.db")
    digest = hashlib.sha256(study_name.encode()).hexdigest()[:12]
    path = database.with_name(f".{database.name}.{digest}.lock")
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def decision_of(trial: Any) -> dict[str, Any] | None:
    """The decision this trial took itself (a retried trial inherits its original's user
    attributes; those do not count)."""
    decision = trial.user_attrs.get(DECISION)
    if isinstance(decision, dict) and decision.get("trial") == trial.number:
        return decision
    return None


def retried_numbers(trials: list[Any]) -> set[int]:
    """Trials whose process died: failed without an error of their own (kiln records every
    exception a trial raises, ``error``), i.e. by their heartbeat or by kiln's
    ``--resume`` (``killed``). Optuna queues a heartbeat-failed trial again
    (``retry_history``), but not in the same transaction: the missing error says it at once."""
    numbers = {int(n) for t in trials for n in t.system_attrs.get("retry_history", [])}
    numbers |= {t.number for t in trials if t.user_attrs.get("killed")}
    numbers |= {t.number for t in trials
                if t.state.name == "FAIL" and t.user_attrs.get("error") is None}
    return numbers


def spent(trials: list[Any]) -> float:
    """Evaluations paid for by finished trials: each finished trial's cost; a failed one
    counts as one (a broken evaluation), unless its process died (it is run again), and
    then only if it had stored its result (its retry reuses that)."""
    dead = retried_numbers(trials)
    total = 0.0
    for trial in trials:
        state = trial.state.name
        if state in ("COMPLETE", "PRUNED"):
            total += trial_cost(trial)
        elif state == "FAIL" and (trial.number not in dead
                                  or trial.user_attrs.get("metrics") is not None):
            total += 1.0
    return total


def claims(trials: list[Any], exclude: int) -> list[dict[str, Any]]:
    """The outstanding claims: running trials (other than ``exclude``) that decided to
    evaluate."""
    found = []
    for trial in trials:
        if trial.state.name != "RUNNING" or trial.number == exclude:
            continue
        decision = decision_of(trial)
        if decision is not None and decision["kind"] == "evaluate":
            found.append(decision)
    return found


def decide(storage: Any, study: Any, trial: Any, key: str, budget: float,
           known: Callable[[str], bool], poll: float = POLL_SECONDS,
           timeout: float = 24 * 3600.0) -> str:
    """Decide, under the study's lock, what ``trial`` (configuration ``key``) does:
    ``reuse``, ``evaluate`` or ``decline``; waits (outside the lock) while another trial
    evaluates the same configuration or holds the last claims of the budget. ``known``
    says whether a configuration's full result is stored."""
    from optuna.storages import fail_stale_trials

    deadline = time.monotonic() + timeout
    while True:
        with study_lock(storage, study.study_name):
            if known(key):
                return _record(trial, "reuse", key)
            trials = study.get_trials(deepcopy=False)
            outstanding = claims(trials, trial.number)
            same = [c for c in outstanding if c.get("key") == key]
            if not same:
                if spent(trials) + len(outstanding) + 1 <= budget + 1e-9:
                    return _record(trial, "evaluate", key)
                if not outstanding:
                    return _record(trial, "decline", key)
            _record(trial, "wait", key)
        if time.monotonic() > deadline:
            raise TimeoutError(f"trial {trial.number} waited {timeout:.0f} s for other trials")
        # Waiting on a claim whose process may be dead: fail trials whose heartbeat went
        # stale (Optuna queues them again), as a process starting a trial would.
        fail_stale_trials(study)
        time.sleep(poll)


def _record(trial: Any, kind: str, key: str) -> str:
    trial.set_user_attr(DECISION, {"trial": trial.number, "kind": kind, "key": key,
                                   "process": PROCESS})
    return kind


def wait_until_settled(study: Any, poll: float = POLL_SECONDS,
                       timeout: float = 24 * 3600.0) -> None:
    """Wait until no running trial holds a claim (other processes finishing their last
    evaluations, or a dead one's trial failing by its heartbeat), so that the result this
    process reports is the study's final one."""
    from optuna.storages import fail_stale_trials

    deadline = time.monotonic() + timeout
    while claims(study.get_trials(deepcopy=False), exclude=-1):
        if time.monotonic() > deadline:
            raise TimeoutError(f"other trials of study '{study.study_name}' still evaluate "
                               f"after {timeout:.0f} s")
        fail_stale_trials(study)
        time.sleep(poll)
