"""A copy of finished runs and of the job records in a Storage Bucket (``PHI3SPACE_BUCKET=owner/name``).

A bucket attached to a Space is mounted through a FUSE filesystem without file locking, where SQLite is unsafe: the
job store and the run folders stay on local disk, and whole files are copied to the bucket with huggingface_hub's
bucket API once a job has ended: the run's config, events, log, card, loss curve and adapter (no checkpoints), and
a consistent snapshot of the job store made with SQLite's backup API. The copy is for the owner (records, audits,
a disk that outlives the Space); visitors' runs come back after a restart from their own Hub repos
(phi3space.records). The owner's token writes it.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from phi3space.errors import Phi3SpaceError
from phi3space.refs import is_repo_id
from phi3space.run import RunDir

BUCKET_ENV = "PHI3SPACE_BUCKET"
STORE_NAME = "jobs.sqlite"


class BucketSync:
    """Copies each finished job's run folder, and a snapshot of the job store, to a bucket (in a thread)."""

    def __init__(self, bucket_id: str, token: str | None, store_path: Path):
        self.bucket_id, self.token, self.store_path = bucket_id, token, Path(store_path)
        self._lock = threading.Lock()  # one copy at a time: snapshots go out in order

    @classmethod
    def from_env(cls, store_path: Path, token: Callable[[], str | None]) -> BucketSync | None:
        """From PHI3SPACE_BUCKET (owner/name or hf://buckets/owner/name); ``token`` gives the owner's token."""
        bucket = (os.environ.get(BUCKET_ENV) or "").strip().removeprefix("hf://buckets/").strip("/")
        if not bucket:
            return None
        if not is_repo_id(bucket):
            print(f"phi3space: {BUCKET_ENV}={bucket!r} is not owner/name: no bucket copy", file=sys.stderr)
            return None
        return cls(bucket, token(), store_path)

    def files(self, run: RunDir, owner: str, job_id: str) -> list[tuple[str, str]]:
        """(local file, path in the bucket) for one finished run: whole files, never a checkpoint."""
        keep = [run.config, run.events, run.log, run.card, run.plot, run.adapter_weights, run.adapter_config]
        return [(str(p), f"runs/{owner}/{job_id}/{p.name}") for p in keep if p.is_file()]

    def sync_job(self, run: RunDir, owner: str, job_id: str, background: bool = True) -> threading.Thread | None:
        """Copy one finished job (and the job store's snapshot); in a thread unless ``background`` is False."""
        if not background:
            self._sync(run, owner, job_id)
            return None
        thread = threading.Thread(target=self._sync, args=(run, owner, job_id), name="phi3space-bucket", daemon=True)
        thread.start()
        return thread

    def _sync(self, run: RunDir, owner: str, job_id: str) -> None:
        from huggingface_hub import HfApi

        from phi3space.hub.errors import call

        with self._lock, tempfile.TemporaryDirectory(prefix="phi3space-bucket-") as tmp:
            snapshot = Path(tmp) / STORE_NAME
            with sqlite3.connect(self.store_path, timeout=30) as live, sqlite3.connect(snapshot) as copy:
                live.backup(copy)  # a consistent copy, whatever the WAL holds
            add = [(str(snapshot), STORE_NAME), *self.files(run, owner, job_id)]
            api = HfApi(token=self.token)
            try:
                call(lambda: api.batch_bucket_files(self.bucket_id, add=add), f"copy job {job_id} to {self.bucket_id}",
                     attempts=3)
            except Phi3SpaceError as exc:  # a copy; the run itself is fine
                print(f"phi3space: bucket copy failed: {exc.message}", file=sys.stderr)
