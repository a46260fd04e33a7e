"""Which folder a run may write into, and holding it while the run writes.

A run writes only into an empty folder (or one it creates), into the run folder the web app made for it (its own
config.yaml names that folder), or into its own earlier run (a retry, or ``--resume``). Anything else is a person's
folder and is refused before a byte is written: ``output.dir: /`` or a folder holding a README.md of its own. While
a run writes, it holds the folder with an exclusive lock (``flock`` on a file inside it); a second run into the same
folder is refused, and a killed run's lock goes with its process.

``claim`` is the one check: ``train`` (this machine) and ``train`` on Hugging Face Jobs from a terminal use it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import yaml

from phi3space.errors import ConfigError
from phi3space.run import RunDir, checkpoint_step

LOCK = ".phi3space.lock"
_NEW_FOLDER = "choose an empty or new folder, e.g. --set output.dir=runs/NEW"
# What a run of ours writes into its folder (the adapter, its tokenizer, config, events, log, card, plot, ...).
RUN_FILES = {*RunDir.PUSHED, RunDir.EVENTS, RunDir.LOG, RunDir.RESERVE, "tokenizer.model", "added_tokens.json",
             "training_args.bin", LOCK}


def _entries(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.name != LOCK)
    except FileNotFoundError:
        return []


def _names_itself(run: RunDir) -> bool:
    """The folder's config.yaml is a run config whose output.dir is this very folder (the web app's run folders)."""
    try:
        with run.config.open("rb") as fh:
            raw = yaml.safe_load(fh.read(64 * 1024))
        out = raw.get("output", {}).get("dir") if isinstance(raw, dict) else None
        return isinstance(out, str) and Path(out).resolve() == run.path.resolve()
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return False


def is_own_folder(run: RunDir) -> bool:
    """Empty, or a run of ours: every entry is a file a run writes (or a checkpoint), and its events or its own
    config say a run lives here."""
    entries = _entries(run.path)
    if not entries:
        return True
    ours = all(name in RUN_FILES or checkpoint_step(name) is not None for name in entries)
    return ours and (run.events.exists() or _names_itself(run))


def check_folder(run: RunDir, resume: bool) -> None:
    """Refuse a folder a new run (or ``--resume``) must not write into.

    Raises:
        ConfigError: the folder holds someone else's files, or a run (without ``--resume``).
    """
    if not resume and run.holds_run():
        raise ConfigError([f"output.dir: {run.path} already holds a run"],
                          "Add --resume to continue it, or choose another folder with --set output.dir=runs/NEW.")
    if not is_own_folder(run):
        entries = _entries(run.path)
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise ConfigError([f"output.dir: {run.path} is not empty and holds no run of this app ({shown})"],
                          f"A run writes only into an empty folder or its own earlier run: {_NEW_FOLDER}.")


def _in_use(run: RunDir) -> ConfigError:
    return ConfigError([f"output.dir: {run.path} is in use by another run"],
                       f"Wait for that run to end (or stop it), or {_NEW_FOLDER}.")


def _held_by_another(run: RunDir) -> bool:
    """Another process holds the folder's lock (asked without creating or changing anything)."""
    try:
        fd = os.open(run.path / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)


def _lock(run: RunDir) -> int:
    """An exclusive lock on the folder's lock file (the file the path names now, not one removed meanwhile)."""
    while True:
        fd = os.open(run.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise _in_use(run) from None
            raise
        try:
            if os.fstat(fd).st_ino == os.stat(run.path / LOCK).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed it as we opened it: take the new one


class Claim:
    """A held run folder. ``fresh``: it was empty or missing, so a run refused before training leaves nothing."""

    def __init__(self, run: RunDir, fresh: bool, created: Path | None):
        self.run, self.fresh, self.created = run, fresh, created

    def undo(self) -> None:
        """Remove what this run wrote into a folder that was empty (the folders too, when this run made them)."""
        if not self.fresh:
            return
        if self.created is not None:
            _remove(self.created)
            return
        for name in _entries(self.run.path):
            target = self.run.path / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


@contextmanager
def claim(run: RunDir, resume: bool, hold: bool = True):
    """Check the folder (``check_folder``), create it, and hold it until the block ends; yields a ``Claim``.
    ``hold``: False on the secondary processes of a multi-GPU run (the main process holds it for them).

    Raises:
        ConfigError: the folder is refused, is a file, cannot be created or written, or another run holds it.
    """
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError([f"output.dir: {run.path} is a file, not a folder"],
                          "Choose a folder for the run, e.g. --set output.dir=runs/NEW.")
    created = _first_missing(run.path)
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError([f"output.dir: cannot create {run.path} ({exc.strerror})"],
                          "Choose a folder you can write to, e.g. --set output.dir=runs/NEW.") from None
    if not hold:  # a secondary process of a multi-GPU run: the main process checks and holds the folder
        yield Claim(run, False, None)
        return
    if not os.access(run.path, os.W_OK | os.X_OK):
        _remove(created)
        raise ConfigError([f"output.dir: {run.path} is not writable"],
                          "Choose a folder you can write to, e.g. --set output.dir=runs/NEW.")
    try:
        if _held_by_another(run):
            raise _in_use(run)
        check_folder(run, resume)  # first without writing: a refused folder is left exactly as it was
    except ConfigError:
        _remove(created)
        raise
    had_lock = (run.path / LOCK).exists()
    fd = _lock(run)  # then again under the lock: two runs started together cannot both find the folder free
    try:
        check_folder(run, resume)
    except BaseException:
        if not had_lock:
            (run.path / LOCK).unlink(missing_ok=True)
        os.close(fd)
        _remove(created)
        raise
    try:
        yield Claim(run, not _entries(run.path), created)
    finally:
        (run.path / LOCK).unlink(missing_ok=True)
        os.close(fd)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating it creates), or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove(created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
