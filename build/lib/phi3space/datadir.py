"""The data folder: the one module that knows its layout.

    <root>/runs/<owner>/<job id>/    one run folder per job (its own layout: phi3space.run)
    <root>/uploads/<owner>/          files a visitor uploaded in the form
    <root>/jobs.sqlite               the job store (scheduling facts only)
    <root>/.lock                     held by the one app that serves this folder

The store needs a local disk with file locking: never a FUSE mount (a Storage Bucket on a Space).
"""

from __future__ import annotations

import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from phi3space.errors import ConfigError, Phi3SpaceError
from phi3space.run import RunDir


class DataDirBusy(Phi3SpaceError):
    """The data folder cannot serve this app: another app holds it, or it lies on a FUSE mount."""

    kind = "busy"


def data_dir() -> Path:
    """PHI3SPACE_DATA_DIR, else ./data."""
    return Path(os.environ.get("PHI3SPACE_DATA_DIR") or "data").resolve()


def safe_name(text: str) -> str:
    """``text`` as one folder name (an owner, a job id): anything but letters, digits, ``._-`` becomes ``_``; never empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "user"


def new_job_id() -> str:
    """A fresh job id: 12 random hex digits."""
    return uuid.uuid4().hex[:12]


class DataDir:
    """The layout of the app's data folder."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).resolve() if root is not None else data_dir()

    @property
    def runs(self) -> Path:
        """The folder that holds every owner's run folders."""
        return self.root / "runs"

    @property
    def store(self) -> Path:
        """The job store's SQLite file."""
        return self.root / "jobs.sqlite"

    def run(self, owner: str, job_id: str) -> RunDir:
        """The run folder of ``owner``'s job ``job_id`` (not created)."""
        return RunDir(self.runs / safe_name(owner) / safe_name(job_id))

    def run_folders(self) -> Iterator[tuple[str, str, RunDir]]:
        """(owner, job id, run folder) of every run folder that holds a config, oldest first."""
        found = sorted((p.parent for p in self.runs.glob(f"*/*/{RunDir.CONFIG}")), key=lambda p: p.stat().st_mtime)
        for path in found:
            yield path.parent.name, path.name, RunDir(path)

    def holds_run(self, path: str | Path) -> bool:
        """``path`` lies inside some run folder here (another visitor's, perhaps)."""
        return Path(path).expanduser().resolve().is_relative_to(self.runs.resolve())

    def uploads(self, owner: str) -> Path:
        """The folder of ``owner``'s uploaded files (not created)."""
        return self.root / "uploads" / safe_name(owner)

    @property
    def all_uploads(self) -> Path:
        """The folder that holds every owner's uploads."""
        return self.root / "uploads"

    def check_local_disk(self) -> None:
        """Raises DataDirBusy when the folder is on a FUSE mount (SQLite needs a local disk with file locking)."""
        fstype = fuse_mount(self.root)
        if fstype:
            raise DataDirBusy(f"the data folder {self.root} is on a {fstype} mount (a Storage Bucket?): the job store "
                              "(SQLite) needs a local disk with file locking",
                              "Leave PHI3SPACE_DATA_DIR on the Space's own disk (the default ./data): the Hub keeps "
                              "what must survive a restart; see README, 'What survives a restart'.")

    def lock(self):
        """Hold an exclusive lock on the folder for this process's life: a second app on the same folder would
        adopt, stop and double-book the first one's jobs.

        Raises:
            DataDirBusy: another process holds it.
        """
        root = self.root
        hint = "Point PHI3SPACE_DATA_DIR at a folder (made if missing), or leave it unset for ./data."
        if root.exists() and not root.is_dir():
            raise ConfigError([f"the data folder {root} is a file, not a folder"], hint)
        try:
            root.mkdir(parents=True, exist_ok=True)
            fh = open(root / ".lock", "a+")
        except OSError as exc:
            raise ConfigError([f"the data folder {root} cannot be used ({exc.strerror})"], hint) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise DataDirBusy(f"the data folder {root} is in use by {holder}",
                              "Stop that app first, or give this one its own folder with PHI3SPACE_DATA_DIR.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        return fh


def fuse_mount(path: Path, mounts: str | None = None) -> str | None:
    """The FUSE filesystem type holding ``path`` (e.g. a Storage Bucket mounted on a Space), else None."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target, best = str(Path(path).resolve()), ("", "")
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best[1] if best[1].startswith("fuse") else None

