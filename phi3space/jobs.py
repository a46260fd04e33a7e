"""Jobs: a SQLite job store and a runner that trains each job in its own process, one at a time per GPU.

A job is ``python -m phi3space train RUN_DIR/config.yaml`` in a new process group, its output in RUN_DIR/train.log
and its progress in RUN_DIR/events.jsonl. A visitor's token travels only in that process's environment: it is
held in memory (job id -> token) until the job starts and is never written to the store, the config or argv.
The status of a finished job is decided from its exit code *and* its events. Nothing here knows about gradio.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .config import RunConfig
from .errors import AuthError, ConfigError, register_secret, scrub
from .events import read_events, summarize
from .hub import on_space

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINAL = ("completed", "failed", "cancelled")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """PHI3SPACE_DATA_DIR, else the Space's persistent storage (/data), else ./data."""
    explicit = os.environ.get("PHI3SPACE_DATA_DIR")
    if explicit:
        return Path(explicit)
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/phi3space")
    return Path("data").resolve()


def gpu_count() -> int:
    """GPUs on this machine (nvidia-smi, so that the web server never imports torch for it); 0 when none."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "user"


@dataclass
class Job:
    id: str
    owner: str
    name: str
    run_dir: str
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    pid: int | None = None
    exit_code: int | None = None
    cancel_requested: bool = False
    needs_token: bool = False
    push_to: str | None = None
    error: dict | None = None
    metrics: dict | None = None
    adapter: str | None = None
    repo_url: str | None = None
    resume: bool = False  # start the trainer with --resume (a failed or stopped job continued)

    @property
    def config_path(self) -> Path:
        return Path(self.run_dir) / "config.yaml"

    @property
    def log_path(self) -> Path:
        return Path(self.run_dir) / "train.log"


_COLUMNS = [f for f in Job.__dataclass_fields__]
_JSON_COLUMNS = ("error", "metrics")


class JobStore:
    """Jobs in one SQLite file. A connection per call keeps it safe across the server's threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(_COLUMNS)}, PRIMARY KEY (id))")
            have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column in _COLUMNS:  # a store written by an older version gains the new columns
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, job: Job) -> None:
        row = self._to_row(job)
        with self._connect() as db:
            db.execute(f"INSERT INTO jobs VALUES ({', '.join('?' for _ in _COLUMNS)})", [row[c] for c in _COLUMNS])

    def update(self, job_id: str, **values) -> None:
        row = self._to_row(Job(id=job_id, owner="", name="", run_dir="", **values))
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [row[k] for k in values] + [job_id])

    def get(self, job_id: str) -> Job | None:
        jobs = self._select("WHERE id = ?", (job_id,))
        return jobs[0] if jobs else None

    def list(self, owner: str | None = None, status: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs, oldest first; only ``owner``'s when given."""
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if status:
            where.append(f"status IN ({', '.join('?' for _ in status)})")
            args += list(status)
        return self._select(("WHERE " + " AND ".join(where)) if where else "", tuple(args))

    def _select(self, where: str, args: tuple) -> list[Job]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY created, rowid", args).fetchall()
        jobs = []
        for values in rows:
            row = dict(zip(_COLUMNS, values))
            for c in _JSON_COLUMNS:
                row[c] = json.loads(row[c]) if row[c] else None
            row["cancel_requested"] = bool(row["cancel_requested"])
            row["needs_token"] = bool(row["needs_token"])
            row["resume"] = bool(row["resume"])
            jobs.append(Job(**row))
        return jobs

    @staticmethod
    def _to_row(job: Job) -> dict:
        row = asdict(job)
        for c in _JSON_COLUMNS:
            row[c] = json.dumps(row[c]) if row[c] is not None else None
        return row


def train_command(config_path: Path) -> list[str]:
    return [sys.executable, "-u", "-m", "phi3space", "train", str(config_path)]


def job_env(token: str | None, space: bool, base: dict | None = None) -> dict[str, str]:
    """The training process's environment: the visitor's token as HF_TOKEN, and on a Space never the owner's."""
    env = dict(os.environ if base is None else base)
    if token or space:
        env.pop("HF_TOKEN", None)
        env.pop("HUGGING_FACE_HUB_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    if space:  # no fallback to a token file saved on the machine either
        env["HF_TOKEN_PATH"] = str(Path(env.get("TMPDIR", "/tmp")) / "phi3space-no-token" / "token")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def decide_status(exit_code: int, events: list[dict], cancel_requested: bool) -> tuple[str, dict | None]:
    """Final status from the exit code and the events: completed only when both say so."""
    state = summarize(events)
    if exit_code == 0 and state["status"] == "completed":
        return "completed", None
    if cancel_requested or exit_code == 130 or state["status"] == "cancelled":
        return "cancelled", None
    error = state["error"]
    if error is None:
        how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
        hint = "Out of memory kills show up like this; see the log below." if exit_code in (-9, 137) else "See the log below."
        error = {"kind": "crash", "message": f"the training process {how}", "hint": hint}
    return "failed", error


class JobRunner:
    """Queue and run jobs: ``slots`` at a time (one per GPU), the rest wait in order of submission."""

    def __init__(self, root: str | Path | None = None, slots: int | None = None, grace_s: float | None = None,
                 poll_s: float = 0.5, command: Callable[[Path], list[str]] = train_command, space: bool | None = None):
        self.root = Path(root) if root is not None else data_dir()
        self.store = JobStore(self.root / "jobs.sqlite")
        self.slots = slots or int(os.environ.get("PHI3SPACE_SLOTS") or gpu_count() or 1)
        self.grace_s = grace_s if grace_s is not None else float(os.environ.get("PHI3SPACE_STOP_GRACE_S", "60"))
        self.poll_s = poll_s
        self.command = command
        self.space = on_space() if space is None else space
        self._tokens: dict[str, str | None] = {}  # job id -> token, until the job starts
        self._procs: dict[str, subprocess.Popen] = {}
        self._kill_at: dict[str, float] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="phi3space-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public

    def submit(self, cfg: RunConfig, owner: str, token: str | None = None) -> Job:
        """Queue a run for ``owner``; its run folder is chosen here, under the data folder."""
        if self.space and cfg.output.push_to and not token:
            raise AuthError("pushing to the Hub needs you to sign in", "Press 'Sign in with Hugging Face', or clear the destination repo.")
        job_id = uuid.uuid4().hex[:12]
        run_dir = self.root / "runs" / safe_name(owner) / job_id
        cfg.output.dir = str(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        register_secret(token)
        job = Job(id=job_id, owner=owner, name=run_dir_name(cfg), run_dir=str(run_dir), needs_token=bool(token),
                  push_to=cfg.output.push_to)
        with self._lock:
            self._tokens[job_id] = token
            self.store.add(job)
            self._tick()
        return self.get(job_id, owner)

    def get(self, job_id: str, owner: str) -> Job:
        """The job, if it belongs to ``owner``; anyone else gets the same 'not found' as for a missing job."""
        job = self.store.get(job_id) if job_id else None
        if job is None or job.owner != owner:
            raise ConfigError([f"no job {job_id!r} among your jobs"], "Pick one of your jobs from the list.")
        return job

    def list(self, owner: str) -> list[Job]:
        return self.store.list(owner)

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start; None when the job is not waiting."""
        queued = [j.id for j in self.store.list(status=("queued",))]
        return queued.index(job_id) + 1 if job_id in queued else None

    def cancel(self, job_id: str, owner: str) -> Job:
        """Stop a job: a queued one at once; a running one by SIGTERM (it saves and ends), SIGKILL after the grace."""
        with self._lock:
            job = self.get(job_id, owner)
            if job.status == "queued":
                self._tokens.pop(job_id, None)
                self.store.update(job_id, status="cancelled", finished=time.time(), cancel_requested=True)
            elif job.status == "running" and not job.cancel_requested:
                self.store.update(job_id, cancel_requested=True)
                self._signal(job, signal.SIGTERM)
                self._kill_at[job_id] = time.time() + self.grace_s
        return self.get(job_id, owner)

    def resume(self, job_id: str, owner: str, token: str | None = None) -> Job:
        """Queue a failed or stopped job again; its trainer continues from the newest checkpoint (--resume).

        Raises:
            ConfigError: the job is still queued/running or finished well, or it left no checkpoint to continue from.
        """
        from .training import latest_checkpoint

        with self._lock:
            job = self.get(job_id, owner)
            if job.status not in ("failed", "cancelled"):
                raise ConfigError([f"job {job_id} is {job.status}: only a failed or stopped job can be resumed"],
                                  "Stop it first, or start a new run.")
            if latest_checkpoint(Path(job.run_dir)) is None:
                raise ConfigError([f"job {job_id} saved no checkpoint to continue from"],
                                  "Submit it again to train from the start (lower training.save_steps to save sooner).")
            if self.space and job.push_to and not token:
                raise AuthError("pushing to the Hub needs you to sign in", "Press 'Sign in with Hugging Face'.")
            register_secret(token)
            self._tokens[job_id] = token
            self.store.update(job_id, status="queued", resume=True, needs_token=bool(token), cancel_requested=False,
                              error=None, exit_code=None, finished=None, pid=None)
            self._tick()
        return self.get(job_id, owner)

    def state(self, job: Job) -> dict:
        """Status plus what the events say (step, loss, ETA, ...), for the API and the jobs list."""
        events, _ = read_events(job.run_dir)
        s = summarize(events)
        out = {"id": job.id, "name": job.name, "status": job.status, "step": s["step"], "max_steps": s["max_steps"],
               "loss": s["loss"], "eval_loss": s["eval_loss"], "eta_s": s["eta_s"],
               "adapter": job.repo_url or job.adapter or s["adapter"], "run_dir": job.run_dir,
               "repo_url": job.repo_url or s["repo_url"], "push_to": job.push_to, "metrics": job.metrics or s.get("metrics"),
               "error": job.error, "queue_position": self.queue_position(job.id), "created": job.created,
               "started": job.started, "finished": job.finished}
        if job.status not in FINAL:
            out["adapter"] = None
        if job.status == "completed":
            out["adapter"] = job.adapter or s["adapter"]
        return out

    def shutdown(self, timeout: float = 10) -> None:
        """Stop the supervisor thread and end running jobs (tests and server exit)."""
        self._stop.set()
        self._thread.join(timeout)
        for job_id, proc in list(self._procs.items()):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)

    # ------------------------------------------------------------ supervisor

    def recover(self) -> None:
        """After a restart: running jobs whose process is gone failed (their folder and checkpoints stay);
        queued jobs that needed a sign-in token cannot start any more (tokens are never stored)."""
        for job in self.store.list(status=("running",)):
            if job.pid and _is_our_process(job):
                try:
                    os.killpg(job.pid, signal.SIGTERM)  # no one can follow it any more: let it save and stop
                except ProcessLookupError:
                    pass
            self.store.update(job.id, status="failed", finished=time.time(), error={
                "kind": "interrupted", "message": "the server restarted while this job was running",
                "hint": f"Its run folder and checkpoints are kept in {job.run_dir}; submit it again to retrain "
                        f"(python -m phi3space train {job.config_path} --resume continues it)."})
        for job in self.store.list(status=("queued",)):
            if job.needs_token and job.id not in self._tokens:
                self.store.update(job.id, status="failed", finished=time.time(), error={
                    "kind": "interrupted", "message": "the server restarted before this job started",
                    "hint": "Sign-in tokens are never stored: submit the job again."})

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                with self._lock:
                    self._tick()
            except Exception as exc:  # the supervisor must outlive one bad job; the job records the failure
                print(f"phi3space jobs: supervisor error: {scrub(repr(exc))}", file=sys.stderr)

    def _tick(self) -> None:
        for job_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is not None:
                self._finish(job_id, code)
            elif job_id in self._kill_at and time.time() > self._kill_at[job_id]:
                self._signal(self.store.get(job_id), signal.SIGKILL)
                self._kill_at.pop(job_id)
        free = self.slots - len(self._procs)
        for job in self.store.list(status=("queued",))[:max(0, free)]:
            self._start(job)

    def _start(self, job: Job) -> None:
        token = self._tokens.pop(job.id, None)
        used = {p.slot for p in self._procs.values() if hasattr(p, "slot")}
        slot = next(i for i in range(self.slots) if i not in used)
        env = job_env(token, self.space)
        if self.slots > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        command = self.command(job.config_path) + (["--resume"] if job.resume else [])
        with job.log_path.open("ab") as log:
            proc = subprocess.Popen(command, env=env, cwd=job.run_dir, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        proc.slot = slot  # type: ignore[attr-defined]
        self._procs[job.id] = proc
        self.store.update(job.id, status="running", started=time.time(), pid=proc.pid)

    def _finish(self, job_id: str, code: int) -> None:
        self._procs.pop(job_id)
        self._kill_at.pop(job_id, None)
        job = self.store.get(job_id)
        events, _ = read_events(job.run_dir)
        status, error = decide_status(code, events, job.cancel_requested)
        s = summarize(events)
        self.store.update(job_id, status=status, exit_code=code, finished=time.time(), error=error,
                          metrics=s.get("metrics") or None, adapter=s["adapter"], repo_url=s["repo_url"])

    def _signal(self, job: Job | None, sig: int) -> None:
        proc = self._procs.get(job.id) if job else None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # the whole group: data workers and launchers too
        except ProcessLookupError:
            pass


def run_dir_name(cfg: RunConfig) -> str:
    from .config import default_run_name

    return default_run_name(cfg)


def _is_our_process(job: Job) -> bool:
    """The pid still runs *this* job's trainer (and is not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(job.config_path) in cmdline


def log_tail(job: Job, lines: int = 40) -> str:
    """The last lines of the job's process output, with secrets scrubbed."""
    try:
        with job.log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return scrub("\n".join(text.splitlines()[-lines:]))


__all__ = ["Job", "JobStore", "JobRunner", "data_dir", "decide_status", "job_env", "log_tail",
           "train_command"]
