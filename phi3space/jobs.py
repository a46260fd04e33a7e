"""Jobs: a SQLite job store and a runner that trains each job in its own process, one at a time per GPU.

A job is ``python -m phi3space train RUN_DIR/config.yaml`` in a new process group, its output in the run's log and
its progress in the run's events (phi3space.run). The store keeps scheduling facts only (owner, queue order,
process, slot, times): what a run did, and how it ended, is read from its events. When a process ends without a
last word (killed, crashed, out of memory), or contradicts it with its exit code, the supervisor appends the
``error`` and ``run_finished`` events itself, so the run's file stays the one truth and survives a restart.

A visitor's token travels only in that process's environment: it is held in memory (job id -> token) until the
job starts and is never written to the store, the config or argv. Nothing here knows about gradio.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import RunConfig
from .errors import AuthError, ConfigError, Phi3SpaceError, register_secret, scrub
from .hub import is_local_ref, on_space
from .run import RunDir, RunState

PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # where `import phi3space` finds this very code


def data_dir() -> Path:
    """PHI3SPACE_DATA_DIR, else ./data."""
    return Path(os.environ.get("PHI3SPACE_DATA_DIR") or "data").resolve()


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
    resume: bool = False  # start the trainer with --resume (a failed or stopped job continued)
    remote: str | None = None  # "namespace/id" of its Hugging Face job (compute.backend: hf-jobs; see remote_jobs.py)
    gpus: int = 1  # slots it takes from ``slot`` on (compute.gpus); more than one: accelerate launch

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)


_COLUMNS = [f for f in Job.__dataclass_fields__]
_BOOL_COLUMNS = ("cancel_requested", "needs_token", "resume")


class JobStore:
    """Jobs in one SQLite file on local disk. A connection per call keeps it safe across the server's threads.

    A store that SQLite cannot read (a corrupt or foreign file) is set aside as ``<name>.corrupt-<time>`` and a
    fresh one started; ``set_aside`` then names it, so the runner can list the runs again from their folders."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.set_aside: Path | None = None
        try:
            self._create()
        except sqlite3.DatabaseError as exc:
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
            if "status" in have and "phase" not in have:  # older stores kept the final status here
                db.execute("UPDATE jobs SET phase = CASE WHEN status IN ('queued', 'running') THEN status ELSE 'done' END")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, job: Job) -> None:
        row = asdict(job)
        with self._connect() as db:
            db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                       [row[c] for c in _COLUMNS])

    def update(self, job_id: str, **values) -> None:
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"not a job column: {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id])

    def get(self, job_id: str) -> Job | None:
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
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY created, rowid", args).fetchall()
        jobs = []
        for values in rows:
            row = dict(zip(_COLUMNS, values))
            for c in _BOOL_COLUMNS:
                row[c] = bool(row[c])
            jobs.append(Job(**row))
        return jobs


def train_command(config_path: Path, gpus: int = 1) -> list[str]:
    """One training process, or one per GPU under accelerate (data-parallel)."""
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                "--num_machines", "1", "-m", "phi3space", "train", str(config_path)]
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
    return env


def last_word(exit_code: int | None, state: RunState, cancel_requested: bool,
              since: float | None = None) -> list[tuple[str, dict]]:
    """The events the supervisor must append for a process that ended with ``exit_code`` (None: it ended while
    no one was watching) when its own events say ``state``: none when they already tell the truth. A last word
    written before ``since`` (an earlier attempt of a resumed job) does not count.

    A run is completed only when its events and its exit code both say so."""
    if since is not None and state.final and (state.finished or 0) < since:
        state = RunState(step=state.step)
    if ((state.status == "completed" and exit_code in (0, None)) or state.status == "failed"
            or (state.status == "cancelled" and exit_code != 0)):
        return []
    step = {"step": state.step, "adapter": state.adapter}
    if cancel_requested or exit_code == 130:
        return [("run_finished", {"status": "cancelled", **step})]
    if exit_code is None:
        how = "ended while the server was down"
        hint = "Resume it from its newest checkpoint, or submit it again."
    elif exit_code < 0:
        how = f"was killed by signal {-exit_code}"
        hint = "Out of memory kills show up like this; see the log below."
    elif exit_code == 0:
        how = "exited without finishing its run"
        hint = "See the log below."
    else:
        how = f"exited with code {exit_code}" + (" after finishing its run" if state.final else "")
        hint = "Out of memory kills show up like this; see the log below." if exit_code == 137 else "See the log below."
    return [("error", {"kind": "crash", "message": f"the training process {how}", "hint": hint}),
            ("run_finished", {"status": "failed", **step})]


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


class _Adopted:
    """A training process started by an earlier server process: watched through its pid, not waited for."""

    def __init__(self, job: Job):
        self.pid, self.slot, self.gpus, self._job = job.pid, job.slot or 0, job.gpus or 1, job

    def poll(self) -> int | None:
        return None if _is_our_process(self._job) else -1  # the exit code is unknown: events decide


class JobRunner:
    """Queue and run jobs: ``slots`` at a time (one per GPU), the rest wait in order of submission."""

    def __init__(self, root: str | Path | None = None, slots: int | None = None, grace_s: float | None = None,
                 poll_s: float = 0.5, command: Callable[[Path], list[str]] = train_command, space: bool | None = None):
        self.root = Path(root) if root is not None else data_dir()
        self._lock_file = lock_data_dir(self.root)
        self.store = JobStore(self.root / "jobs.sqlite")
        if self.store.set_aside is not None:
            self._relist_runs()
        self.slots = slots or int(os.environ.get("PHI3SPACE_SLOTS") or gpu_count() or 1)
        self.grace_s = grace_s if grace_s is not None else float(os.environ.get("PHI3SPACE_STOP_GRACE_S", "60"))
        self.poll_s = poll_s
        self.command = command
        self.space = on_space() if space is None else space
        self._tokens: dict[str, str | None] = {}  # job id -> token, until the job starts
        self._procs: dict[str, subprocess.Popen | _Adopted] = {}
        self._kill_at: dict[str, float] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        from .remote_jobs import RemoteJobs

        self.remote = RemoteJobs(self)
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="phi3space-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public

    def submit(self, cfg: RunConfig, owner: str, token: str | None = None) -> Job:
        """Queue a run for ``owner``; its run folder is chosen here, under the data folder."""
        if cfg.compute.backend == "hf-jobs":  # started on Hugging Face Jobs at once: no slot, no queue
            return self.remote.submit(cfg, owner, token)
        if self.space and cfg.output.push_to and not token:
            raise AuthError("pushing to the Hub needs you to sign in", "Press 'Sign in with Hugging Face', or clear the destination repo.")
        for part, key in ((cfg.data, "dataset"), (cfg.model, "base")):  # the trainer runs elsewhere: no relative paths
            value = getattr(part, key)
            if is_local_ref(value) and Path(value).expanduser().exists():
                setattr(part, key, str(Path(value).expanduser().resolve()))
        from .config import default_run_name

        gpus = self.slots if cfg.compute.gpus == "all" else int(cfg.compute.gpus)
        if gpus > self.slots:
            raise ConfigError([f"compute.gpus: {gpus}, but this server trains on {self.slots} GPU slot(s)"],
                              "Ask for fewer (or all), or train on Hugging Face Jobs with a multi-GPU flavor.")
        job_id = uuid.uuid4().hex[:12]
        run = RunDir(self.root / "runs" / safe_name(owner) / job_id)
        cfg.output.dir = str(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        register_secret(token)
        job = Job(id=job_id, owner=owner, name=default_run_name(cfg), run_dir=str(run.path), needs_token=bool(token),
                  gpus=gpus)
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

    def status(self, job: Job) -> tuple[str, RunState]:
        """The job's status (queued and running from the schedule, the rest from its events) and its RunState."""
        state = job.run.state()
        if job.phase in ("queued", "running"):
            return job.phase, state
        return (state.status if state.final else "failed"), state

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start; None when the job is not waiting."""
        queued = [j.id for j in self.store.list(phase=("queued",))]
        return queued.index(job_id) + 1 if job_id in queued else None

    def cancel(self, job_id: str, owner: str) -> Job:
        """Stop a job: a queued one at once; a running one by SIGTERM (it saves and ends), SIGKILL after the grace."""
        with self._lock:
            job = self.get(job_id, owner)
            if job.phase == "queued":
                self._tokens.pop(job_id, None)
                self.store.update(job_id, cancel_requested=True)
                self._finish(self.store.get(job_id), None)
            elif job.phase == "running" and not job.cancel_requested and job.remote:
                self.remote.cancel(job)  # the platform stops it; its follower writes how it ended
                self.store.update(job_id, cancel_requested=True)
            elif job.phase == "running" and not job.cancel_requested:
                self.store.update(job_id, cancel_requested=True)
                self._signal(job_id, signal.SIGTERM)
                self._kill_at[job_id] = time.time() + self.grace_s
        return self.get(job_id, owner)

    def resume(self, job_id: str, owner: str, token: str | None = None) -> Job:
        """Queue a failed or stopped job again; its trainer continues from the newest checkpoint (--resume).

        Raises:
            ConfigError: the job is still queued/running or finished well, or it left no checkpoint to continue from.
        """
        if self.get(job_id, owner).remote:  # continued on Hugging Face Jobs, from the checkpoint it pushed
            return self.remote.resume(self.get(job_id, owner), token)
        with self._lock:
            job = self.get(job_id, owner)
            status, _ = self.status(job)
            if status not in ("failed", "cancelled"):
                raise ConfigError([f"job {job_id} is {status}: only a failed or stopped job can be resumed"],
                                  "Stop it first, or start a new run.")
            if job.run.latest_checkpoint() is None:
                raise ConfigError([f"job {job_id} saved no checkpoint to continue from"],
                                  "Submit it again to train from the start (lower training.save_steps to save sooner).")
            if self.space and job.run.load_config().output.push_to and not token:
                raise AuthError("pushing to the Hub needs you to sign in", "Press 'Sign in with Hugging Face'.")
            register_secret(token)
            self._tokens[job_id] = token
            self.store.update(job_id, phase="queued", resume=True, needs_token=bool(token), cancel_requested=False,
                              exit_code=None, finished=None, pid=None, slot=None)
            self._tick()
        return self.get(job_id, owner)

    def state(self, job: Job) -> dict:
        """What /job_status answers: the status, and what the events say (step, loss, ETA, metrics, adapter, ...)."""
        status, s = self.status(job)
        finished_with_adapter = status in ("completed", "cancelled") and s.adapter
        return {"id": job.id, "name": job.name, "status": status, "step": s.step, "max_steps": s.max_steps,
                "loss": s.loss, "eval_loss": s.eval_loss, "eta_s": s.eta_s,
                # the adapter to chat with: its Hub repo once pushed, else the run folder
                "adapter": (s.adapter_repo or s.adapter) if finished_with_adapter else None,
                "repo_url": s.adapter_url, "checkpoint_url": s.checkpoint_url, "run_dir": job.run_dir,
                "metrics": s.metrics or None, "error": s.error if status == "failed" else None,
                "queue_position": self.queue_position(job.id), "created": job.created, "started": job.started,
                "finished": job.finished}

    def shutdown(self, timeout: float = 10) -> None:
        """Stop the supervisor thread and end running jobs (tests and server exit)."""
        self._stop.set()
        self.remote.shutdown()
        self._thread.join(timeout)
        for proc in list(self._procs.values()):
            if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)
        self._lock_file.close()

    # ------------------------------------------------------------ supervisor

    def recover(self) -> None:
        """After a restart: a job whose process still runs is adopted and followed again; one whose process ended
        while no one watched gets its last word from its events (the supervisor adds one if it has none); queued
        jobs that needed a sign-in token cannot start any more (tokens are never stored)."""
        for job in self.store.list(phase=("running",)):
            if job.remote:  # on Hugging Face Jobs: followed again once its owner's token is at hand
                self.remote.recover(job)
            elif job.pid and _is_our_process(job):
                self._procs[job.id] = _Adopted(job)
            else:
                self._finish(job, None)
        for job in self.store.list(phase=("queued",)):
            if job.needs_token and job.id not in self._tokens:
                job.run.append("error", kind="interrupted", message="the server restarted before this job started",
                               hint="Sign-in tokens are never stored: submit the job again.")
                job.run.append("run_finished", status="failed", step=job.run.state().step)
                self._finish(job, None)

    def _relist_runs(self) -> None:
        """After the store was set aside: every run folder under runs/<owner>/<job id> is listed again, ended (its
        process, if any, can no longer be followed); its status is whatever its events say."""
        for config in sorted((self.root / "runs").glob(f"*/*/{RunDir.CONFIG}")):
            run = RunDir(config.parent)
            owner, job_id = run.path.parent.name, run.path.name
            try:
                from .config import default_run_name

                name = default_run_name(run.load_config())
            except Phi3SpaceError:
                name = job_id
            created = config.stat().st_mtime
            self.store.add(Job(id=job_id, owner=owner, name=name, run_dir=str(run.path), phase="done",
                               created=created, finished=time.time()))

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
                self._procs.pop(job_id)
                self._kill_at.pop(job_id, None)
                self._finish(self.store.get(job_id), code if isinstance(proc, subprocess.Popen) else None)
            elif job_id in self._kill_at and time.time() > self._kill_at[job_id]:
                self._signal(job_id, signal.SIGKILL)
                self._kill_at.pop(job_id)
        for job in self.store.list(phase=("queued",)):
            slot = self._free_slots(min(job.gpus or 1, self.slots))
            if slot is None:
                break  # first come, first served: later jobs wait behind one that waits for GPUs
            self._start(job, slot)

    def _free_slots(self, n: int) -> int | None:
        """The first of ``n`` free slots in a row, or None."""
        used = {s for p in self._procs.values() for s in range(p.slot, p.slot + getattr(p, "gpus", 1))}
        return next((i for i in range(self.slots - n + 1) if not used & set(range(i, i + n))), None)

    def _start(self, job: Job, slot: int) -> None:
        token = self._tokens.pop(job.id, None)
        gpus = min(job.gpus or 1, self.slots)
        env = job_env(token, self.space)
        if self.slots > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(s) for s in range(slot, slot + gpus))
        command = (self.command(job.run.config) if gpus == 1 else train_command(job.run.config, gpus)) + \
            (["--resume"] if job.resume else [])
        with job.run.log.open("ab") as log:
            # cwd: where `import phi3space` finds this code, so the job runs exactly what the server runs
            proc = subprocess.Popen(command, env=env, cwd=PACKAGE_PARENT, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        proc.slot, proc.gpus = slot, gpus  # type: ignore[attr-defined]
        self._procs[job.id] = proc
        self.store.update(job.id, phase="running", started=time.time(), pid=proc.pid, slot=slot)

    def _finish(self, job: Job, code: int | None) -> None:
        """The process ended (or a queued job was dropped): append the last word its events lack, mark it done."""
        for type, fields in last_word(code, job.run.state(), job.cancel_requested, since=job.started):
            job.run.append(type, **fields)
        self.store.update(job.id, phase="done", exit_code=code, finished=time.time())

    def _signal(self, job_id: str, sig: int) -> None:
        proc = self._procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # the whole group: data workers and launchers too
        except ProcessLookupError:
            pass


def _is_our_process(job: Job) -> bool:
    """The pid still runs *this* job's trainer (and is not a reused pid, nor a zombie)."""
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(job.run.config) in cmdline


def log_tail(job: Job, lines: int = 40) -> str:
    """The last lines of the job's process output, with secrets scrubbed."""
    try:
        with job.run.log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return scrub("\n".join(text.splitlines()[-lines:]))


__all__ = ["Job", "JobStore", "JobRunner", "data_dir", "job_env", "last_word", "lock_data_dir", "log_tail",
           "train_command"]
