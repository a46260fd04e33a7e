"""The data folder's layout: runs/<owner>/<id>, uploads, the job store and its lock; never on a FUSE mount."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from phi3space.errors import Phi3SpaceError


def data_dir() -> Path:
    """PHI3SPACE_DATA_DIR, else ./data."""
    return Path(os.environ.get("PHI3SPACE_DATA_DIR") or "data").resolve()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "user"


class DataDirBusy(Phi3SpaceError):
    kind = "busy"


def lock_data_dir(root: Path):
    """Hold an exclusive lock on the data folder for this process's life: a second app on the same folder would
    adopt, stop and double-book the first one's jobs.

    Raises:
        DataDirBusy: another process holds it.
    """
    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / ".lock", "a+")
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

