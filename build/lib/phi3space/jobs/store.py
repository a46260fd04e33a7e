"""The job store: scheduling facts only (owner, queue order, process, slot, times), in one SQLite file."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from phi3space.errors import Phi3SpaceError
from phi3space.jobs.spec import DEFAULT_BACKEND
from phi3space.run import RunDir


@dataclass
class Job:
    """A job as the scheduler sees it."""

    id: str
    owner: str
    name: str
    run_dir: str
    phase: str = "queued"  # queued | running | done; a done job's status comes from its run's events
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    pid: int | None = None
    slot: int | None = None
    exit_code: int | None = None
    cancel_requested: bool = False
    needs_token: bool = False
    resume: bool = False  # continue from the newest checkpoint (a failed or stopped job resumed)
    kind: str = "train"  # what it does: a name in phi3space.jobs.kinds.KINDS
    args: str = ""  # a kind that does not train on its run folder's config: its command line, as JSON (a merge)
    backend: str = DEFAULT_BACKEND  # where it runs: a name in phi3space.jobs.spec.BACKENDS (compute.backend)
    handle: str | None = None  # the backend's own name for it (a Hugging Face job: "namespace/id")
    gpus: int = 1  # slots it takes from ``slot`` on (compute.gpus); more than one: accelerate launch

    @property
    def run(self) -> RunDir:
        """The job's run folder."""
        return RunDir(self.run_dir)


_COLUMNS = [f for f in Job.__dataclass_fields__]
_BOOL_COLUMNS = ("cancel_requested", "needs_token", "resume")


T = TypeVar("T")


class StoreBusy(Phi3SpaceError):
    """The job store stayed locked by another process past the retries."""

    kind = "busy"


class JobStore:
    """Jobs in one SQLite file on local disk. A connection per call keeps it safe across the server's threads.

    A store that SQLite cannot read (a corrupt or foreign file), at start or while the app runs, is set aside as
    ``<name>.corrupt-<time>`` and a fresh one started; ``set_aside`` then names it, and ``on_reset`` (the scheduler's)
    lists the runs again from their folders."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.set_aside: Path | None = None
        self.on_reset: Callable[[], None] | None = None
        # Held by every call and through a reset with its relisting: no call can read the fresh store before the
        # runs are listed in it again (re-entrant: the relisting adds them through the same calls).
        self._lock = threading.RLock()
        try:
            self._create()
        except sqlite3.DatabaseError as exc:
            self._start_afresh(exc)

    def _start_afresh(self, exc: Exception) -> None:
        self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            extra = Path(f"{self.path}{suffix}")
            if extra.exists():
                extra.rename(f"{self.set_aside}{suffix}")
        print(f"phi3space jobs: the job store {self.path} could not be read ({exc}); it was moved to "
              f"{self.set_aside} and a new one started", file=sys.stderr)
        self._create()

    def _create(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(_COLUMNS)}, PRIMARY KEY (id))")
            have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column in _COLUMNS:  # a store written by an older version gains the new columns
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
            if "remote" in have:  # older stores: a Hugging Face job's reference, and argv for a merge
                db.execute("UPDATE jobs SET backend = 'hf-jobs', handle = remote WHERE remote IS NOT NULL AND handle IS NULL")
            if "argv" in have:
                db.execute("UPDATE jobs SET kind = 'merge', args = argv WHERE argv != '' AND argv IS NOT NULL AND args IS NULL")
            db.execute("UPDATE jobs SET kind = COALESCE(kind, 'train'), backend = COALESCE(backend, 'local'), "
                       "args = COALESCE(args, '')")
            if "status" in have and "phase" not in have:  # older stores kept the final status here
                db.execute("UPDATE jobs SET phase = CASE WHEN status IN ('queued', 'running') THEN status ELSE 'done' END")

    TIMEOUT_S = 30  # how long a call waits for a lock another connection holds

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.TIMEOUT_S)

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on a connection, in a transaction. A store another process keeps locked becomes a message; one
        damaged while the app runs is started afresh (its runs listed again from their folders) and ``fn`` runs again.
        """
        with self._lock:
            return self._attempt(fn)

    def _attempt(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        for attempt in (1, 2):
            try:
                with self._connect() as db:
                    return fn(db)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreBusy(f"the job store {self.path} stayed locked by another process ({exc})",
                                    "Try again in a moment; if it lasts, stop whatever else opened the data folder's "
                                    "jobs.sqlite (only this app should).") from None
                if attempt == 2 or "no such table" not in str(exc):
                    raise
                self._reset(exc)
            except sqlite3.DatabaseError as exc:  # not a database any more ("malformed", "file is not a database")
                if attempt == 2:
                    raise
                self._reset(exc)
        raise AssertionError("unreachable")

    def _reset(self, exc: Exception) -> None:
        """(Called with the lock held.)"""
        self._start_afresh(exc)
        if self.on_reset is not None:
            self.on_reset()

    def add(self, job: Job) -> None:
        """Store a new job."""
        row = asdict(job)
        self._run(lambda db: db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES "
                                        f"({', '.join('?' for _ in _COLUMNS)})", [row[c] for c in _COLUMNS]))

    def update(self, job_id: str, **values) -> None:
        """Set some of a job's columns.

        Raises:
            ValueError: a name that is not a job column."""
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"not a job column: {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in values)
        self._run(lambda db: db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id]))

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        jobs = self._select("WHERE id = ?", (job_id,))
        return jobs[0] if jobs else None

    def list(self, owner: str | None = None, phase: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs, oldest first; only ``owner``'s when given."""
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if phase:
            where.append(f"phase IN ({', '.join('?' for _ in phase)})")
            args += list(phase)
        return self._select(("WHERE " + " AND ".join(where)) if where else "", tuple(args))

    def _select(self, where: str, args: tuple) -> list[Job]:
        rows = self._run(lambda db: db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY created, rowid",
                                               args).fetchall())
        jobs = []
        for values in rows:
            row = dict(zip(_COLUMNS, values))
            for c in _BOOL_COLUMNS:
                row[c] = bool(row[c])
            jobs.append(Job(**row))
        return jobs

