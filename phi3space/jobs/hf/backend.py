"""The web app's runs on Hugging Face Jobs: submitted, followed, cancelled, resumed and found again after a restart.

The job runner (jobs.py) hands every ``compute.backend: hf-jobs`` run to ``RemoteJobs``. Such a run takes no local
slot and never queues: it is "running" in the job store (with its ``remote`` job reference) from the moment the
platform accepted it, a follower thread mirrors the job's events into the run folder (remote.Mirror), and the run's
status, like any run's, is read from those events. The visitor's token is held in memory only (owner -> newest
token), for the platform calls made on their behalf; after a restart, or when the token has expired, a run waits
until its owner is next seen with a token (``seen``, from the web app's identify), then ``list_jobs`` with that token
and the app's label finds its jobs again (even those whose records were lost with the disk) and they are followed
again from the first line of their logs.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING

from phi3space.config import RunConfig, default_run_name
from phi3space.errors import AuthError, ConfigError, Phi3SpaceError, register_secret, scrub
from phi3space.hub.space import on_space
from phi3space.jobs.hf import platform as remote
from phi3space.jobs.hf.protocol import CONFIG_VAR
from phi3space.run import RunDir

if TYPE_CHECKING:
    from phi3space.jobs.scheduler import JobRunner
    from phi3space.jobs.store import Job


class RemoteJobs:
    def __init__(self, runner: JobRunner):
        self.runner = runner
        self.origin = remote.safe_label(remote.origin() if on_space() else
                                        "app-" + hashlib.sha256(str(runner.root).encode()).hexdigest()[:8])
        self._tokens: dict[str, str] = {}  # owner -> their newest token (memory only)
        self._following: dict[str, threading.Thread] = {}
        self._searched: set[str] = set()  # owners whose jobs were listed since this process started
        self._lock = threading.RLock()
        self._stop = threading.Event()

    # ------------------------------------------------------------ what the job runner asks

    def submit(self, cfg: RunConfig, owner: str, token: str | None) -> Job:
        """Check, start the job and follow it. A job the platform refuses is listed as failed, with its reason.

        Raises:
            Phi3SpaceError: what to fix (nothing started), or the platform's refusal (the run records it too).
        """
        from phi3space.datadir import safe_name
        from phi3space.jobs.store import Job

        token = self._token(owner, token)
        flavor = remote.prepare(cfg, token)
        job_id = uuid.uuid4().hex[:12]
        run = RunDir(self.runner.root / "runs" / safe_name(owner) / job_id)
        cfg.output.dir = str(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        job = Job(id=job_id, owner=owner, name=default_run_name(cfg), run_dir=str(run.path), phase="running",
                  started=time.time())
        try:
            job.remote = str(remote.start(cfg, token, flavor, job_id, run.writer(), labels=self._labels()))
        except Phi3SpaceError:
            job.phase, job.finished = "done", time.time()
            self.runner.store.add(job)
            raise
        self.runner.store.add(job)
        self._follow(job)
        return job

    def cancel(self, job: Job) -> None:
        """Ask the platform to stop the job; its follower writes how it ended."""
        token = self._tokens.get(job.owner) or self._token(job.owner, None, required=False)
        if not token:
            raise AuthError("stopping a job on Hugging Face Jobs needs your sign-in", "Sign in again, then press Stop.")
        remote.cancel(remote.JobRef.parse(job.remote), token)

    def resume(self, job: Job, token: str | None) -> Job:
        """Start a new job for a failed or stopped run; it continues from the last checkpoint the run pushed.

        Raises:
            ConfigError: the run is still running or finished well, or it pushed no checkpoint.
        """
        status, state = self.runner.status(job)
        if status not in ("failed", "cancelled"):
            raise ConfigError([f"job {job.id} is {status}: only a failed or stopped job can be resumed"],
                              "Stop it first, or start a new run.")
        if not state.checkpoint_url:
            raise ConfigError([f"job {job.id} pushed no checkpoint to continue from"],
                              "Submit it again to train from the start (lower training.save_steps to save sooner).")
        token = self._token(job.owner, token)
        cfg = job.run.load_config()
        flavor = remote.prepare(cfg, token)
        store = self.runner.store
        store.update(job.id, phase="running", resume=True, cancel_requested=False, exit_code=None, finished=None,
                     started=time.time())
        try:
            ref = remote.start(cfg, token, flavor, job.id, job.run.writer(), resume=True, labels=self._labels())
        except Phi3SpaceError:
            store.update(job.id, phase="done", finished=time.time())
            raise
        store.update(job.id, remote=str(ref))
        self._follow(store.get(job.id))
        return store.get(job.id)

    def recover(self, job: Job) -> None:
        """After a restart: follow the job again now if a token is at hand, else once its owner is seen."""
        if self._token(job.owner, None, required=False):
            self._follow(job)

    def seen(self, owner: str, token: str) -> None:
        """The visitor is here with a (fresh) token: keep it, and find and follow their jobs that nobody follows."""
        register_secret(token)
        with self._lock:
            self._tokens[owner] = token
            waiting = [j for j in self.runner.store.list(owner, phase=("running",))
                       if j.remote and j.id not in self._following]
            search = owner not in self._searched
            self._searched.add(owner)
        if waiting or search:
            threading.Thread(target=self._find_again, args=(owner, token, waiting), daemon=True,
                             name=f"phi3space-find-{owner}").start()

    def shutdown(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ following

    def _labels(self) -> dict:
        return {remote.LABEL_ORIGIN: self.origin}

    def _token(self, owner: str, token: str | None, required: bool = True) -> str | None:
        """The visitor's token; off a Space the local login stands in for it (runs belong to the machine's user)."""
        if not token and not self.runner.space:
            from phi3space.hub.auth import resolve_token

            token = resolve_token()
        if token:
            register_secret(token)
            with self._lock:
                self._tokens[owner] = token
        elif required:
            raise AuthError("training on Hugging Face Jobs needs you to sign in (the job runs as you, billed to you)",
                            "Press 'Sign in with Hugging Face'.")
        return token

    def _find_again(self, owner: str, token: str, waiting: list[Job]) -> None:
        """``list_jobs`` with the owner's token and this app's label: their jobs are followed again; one whose record
        was lost (a Space's disk is wiped on restart) and that still runs is listed again first."""
        from huggingface_hub import HfApi

        from phi3space.hub.access import whoami
        from phi3space.hub.errors import call

        try:
            namespace = whoami(token)["name"]
            found = list(call(lambda: HfApi().list_jobs(labels=self._labels(), namespace=namespace, token=token),
                              "list your Hugging Face jobs", remote.JobsError))
        except Phi3SpaceError as exc:
            print(f"phi3space jobs: could not list {owner}'s jobs: {exc.message}", file=sys.stderr)
            found = []
        for info in found:
            job_id = (info.labels or {}).get(remote.LABEL_RUN)
            job = self.runner.store.get(job_id) if job_id else None
            if job is None and job_id and str(info.status.stage) not in remote.TERMINAL:
                job = self._relist(owner, job_id, info)
            if job is not None and job.owner == owner and job.phase == "running" and job.id not in {j.id for j in waiting}:
                waiting.append(job)
        for job in waiting:
            self._follow(job)

    def _relist(self, owner: str, job_id: str, info) -> Job | None:
        from phi3space import config
        from phi3space.datadir import safe_name
        from phi3space.jobs.store import Job

        try:
            cfg = config.loads((info.environment or {}).get(CONFIG_VAR, ""))
        except Phi3SpaceError:
            return None
        run = RunDir(self.runner.root / "runs" / safe_name(owner) / job_id)
        cfg.output.dir = str(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        created = info.created_at.timestamp() if info.created_at else time.time()
        job = Job(id=job_id, owner=owner, name=default_run_name(cfg), run_dir=str(run.path), phase="running",
                  created=created, started=created, remote=f"{info.owner.name}/{info.id}")
        self.runner.store.add(job)
        return job

    def _follow(self, job: Job) -> None:
        with self._lock:
            running = self._following.get(job.id)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self._run_follower, args=(job,), daemon=True,
                                      name=f"phi3space-follow-{job.id}")
            self._following[job.id] = thread
        thread.start()

    def _run_follower(self, job: Job) -> None:
        ref = remote.JobRef.parse(job.remote)
        try:
            cfg = job.run.load_config()
        except Phi3SpaceError:
            cfg = None
        while not self._stop.is_set():
            with self._lock:
                token = self._tokens.get(job.owner)
            if not token:
                break  # waits for the owner's next visit (seen)
            try:
                if remote.follow_to_end(ref, token, job.run, job.run.writer(), cfg, stop=self._stop):
                    self.runner.store.update(job.id, phase="done", finished=time.time())
                break
            except AuthError:  # the token expired: the owner's next visit brings a new one
                with self._lock:
                    if self._tokens.get(job.owner) == token:
                        self._tokens.pop(job.owner)
            except Exception as exc:  # a follower must outlive a bad answer; it tries again
                print(f"phi3space jobs: following {ref}: {scrub(repr(exc))}", file=sys.stderr)
                self._stop.wait(5)
        with self._lock:
            self._following.pop(job.id, None)
