"""The scheduler: whose jobs, in what order, on which slots, and what the store says. It names no backend.

Every job is a kind (phi3space.jobs.kinds) run on a backend (phi3space.jobs.backend, picked from
``compute.backend``). Submit and resume go through one pipeline (phi3space.jobs.submit). A backend that uses this
machine's GPU slots waits in the queue, first come first served; one that does not (Hugging Face Jobs) starts at
submit. When a job ends its backend says how (a Verdict) and the scheduler gives the run its last word where its
own events lack one, so the run's events.jsonl stays the one truth and survives a restart.

A visitor's token is held in memory (job id -> token) until the job starts and is never written to the store, the
config or argv. Nothing here knows about gradio.

On a Space the local disk does not survive a restart: every job pushes its adapter and its checkpoints to the
visitor's repo, whose card records the job (phi3space.hub.records), and ``restore_from_hub`` brings a visitor's runs
back from there. The store and the run folders stay on local disk, never on a bucket mount.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from phi3space import config
from phi3space.config import RunConfig, default_run_name
from phi3space.datadir import DataDir, new_job_id
from phi3space.engine.estimates import training_seconds
from phi3space.engine.hardware import first_gpu_name, gpu_count
from phi3space.errors import ConfigError, Phi3SpaceError, register_secret, scrub
from phi3space.hub.auth import acting_token, keep_owner_token_out
from phi3space.hub.space import on_space, space_id
from phi3space.jobs import spec
from phi3space.jobs.backend import Backend, Host, Verdict
from phi3space.jobs.followups import FollowUp, FollowUps, unique_name
from phi3space.jobs.idle import IdlePause
from phi3space.jobs.kinds import PLAN, TRAIN, Kind, check_backend, kind_of
from phi3space.jobs.store import Job, JobStore, StoreBusy
from phi3space.jobs.submit import Caller, Pipeline
from phi3space.run import RunState


class JobRunner(FollowUps):
    """Queue and run jobs: ``slots`` at a time on this machine (one per GPU), the rest wait in order of submission;
    jobs on other backends start at once. (Merge, evaluate, export and push again: FollowUps.)"""

    def __init__(self, root=None, slots: int | None = None, grace_s: float | None = None, poll_s: float = 0.5,
                 command: Callable | None = None, space: bool | None = None):
        self.data = DataDir(root)
        self.space = on_space() if space is None else space
        if self.space:  # the web server never sends the owner's token on a visitor's behalf
            keep_owner_token_out(space=True)
            self.data.check_local_disk()
        self._lock_file = self.data.lock()
        self.store = JobStore(self.data.store)
        self.store.on_reset = self._relist_runs  # a store damaged while the app runs is listed again from the folders
        if self.store.set_aside is not None:
            self._relist_runs()
        self.slots = slots or int(os.environ.get("PHI3SPACE_SLOTS") or gpu_count() or 1)
        self.poll_s = poll_s
        self.idle = IdlePause.from_env(space_id()) if self.space else None
        from phi3space.hub.auth import owner_token, resolve_token
        from phi3space.hub.bucket import BucketSync

        self.bucket = BucketSync.from_env(self.store.path, owner_token if self.space else resolve_token)
        self.pipeline = Pipeline(self.store, self.space, self.data.uploads)
        self.before_start: list[Callable[[Job], None]] = []  # e.g. chat gives the GPU back before a job trains here
        self._tokens: dict[str, str | None] = {}  # job id -> token, until the job starts
        self._lock = threading.RLock()
        self._stop = threading.Event()
        host = Host(self.store, self.data, self.space, self._ended)
        options = {"slots": self.slots, "grace_s": grace_s, "command": command}
        self.backends: dict[str, Backend] = {name: cls(host, **options) for name, cls in spec.backend_classes().items()}
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="phi3space-jobs", daemon=True)
        self._thread.start()

    @property
    def root(self):
        """The data folder (runs, uploads, the job store)."""
        return self.data.root

    def backend(self, job_or_name: Job | str) -> Backend:
        """The backend a job runs on, or the one of that name.

        Raises:
            ConfigError: no backend of that name.
        """
        name = job_or_name if isinstance(job_or_name, str) else job_or_name.backend
        if name not in self.backends:
            raise ConfigError([f"compute.backend: {name!r} is not one of {', '.join(self.backends)}"])
        return self.backends[name]

    # ------------------------------------------------------------ submit, resume

    def submit(self, job: RunConfig | FollowUp, owner: str, token: str | None = None, expires_at: float | None = None,
               name: str | None = None, kind: Kind = TRAIN) -> Job:
        """Queue (or, on a backend without slots, start) a job for ``owner`` after the submit pipeline's checks, in a
        run folder chosen here: a training run of ``job``, a run config (a JobConfig, or a RunConfig whose compute
        section, kept as written, is read here), named ``name`` (else <base>-<dataset>-<method>); or the kind of job
        ``job`` asks for on a finished run's adapter (``followups.Merge``, ``Evaluate``, ``Export``), named ``name``
        (else <run name>-merged, -eval, -gguf). ``token``: the visitor's, which ``expires_at`` (Unix time).
        ``kind``: for a run config, ``TRAIN`` it, or ``PLAN`` it first (a measured plan on this machine, queued like
        training so that its probe never shares the GPU with a run; named <run name>-plan).

        Raises:
            Phi3SpaceError: what to fix (nothing was created), or the platform's refusal (the job is listed as failed).
        """
        caller = Caller(owner, token, expires_at)
        if isinstance(job, FollowUp):
            return self._follow_up(job, caller, name)
        cfg = spec.of(job)
        if kind is PLAN:
            return self._plan(cfg, caller, name)
        backend = self.backend(cfg.compute.backend)
        check_backend(TRAIN, backend)
        gpus = self.pipeline.check_train(cfg, caller, backend, self.slots, self.queue_wait_s())
        job_id = new_job_id()
        run = self.data.run(owner, job_id)
        cfg.output.dir = str(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        job = Job(id=job_id, owner=owner, name=name or default_run_name(cfg), run_dir=str(run.path),
                  needs_token=bool(token), gpus=gpus, backend=backend.name)
        try:
            self.pipeline.record(cfg, job, caller, backend)
            return self._queue(job, token)
        except Phi3SpaceError as exc:
            if isinstance(exc, StoreBusy) or self.store.get(job.id) is None:  # never listed: no folder left either
                shutil.rmtree(run.path, ignore_errors=True)
            raise

    def _plan(self, cfg: RunConfig, caller: Caller, name: str | None) -> Job:
        """Queue ``python -m phi3space plan`` on ``cfg`` in a new folder, on this machine (what the probe measures)."""
        backend = next(b for b in self.backends.values() if PLAN.runs_on(b))
        job_id = new_job_id()
        run = self.data.run(caller.owner, job_id)
        cfg.output.dir = str(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        name = unique_name(f"{name or default_run_name(cfg)}-plan", {j.name for j in self.list(caller.owner)})
        argv = [PLAN.name, str(run.config), "--run-dir", str(run.path), "--json"]
        return self._queue(Job(id=job_id, owner=caller.owner, name=name, run_dir=str(run.path), kind=PLAN.name,
                               args=json.dumps(argv), needs_token=bool(caller.token), backend=backend.name), caller.token)

    def resume(self, job_id: str, owner: str, token: str | None = None, expires_at: float | None = None) -> Job:
        """Queue a failed or stopped training run again; it continues from its newest checkpoint (this machine's, or
        the last one pushed to its repo's checkpoints branch). The submit pipeline checks it again, as a new run.

        Raises:
            ConfigError: not a training run, still queued/running or finished well, or no checkpoint to continue from.
            AuthError: no sign-in where one is needed, or one that expires too soon.
        """
        job = self.get(job_id, owner)
        if not kind_of(job).trains:
            raise ConfigError([f"job {job_id} is not a training run: only training runs can be resumed"],
                              "Start it again instead.")
        status, _ = self.status(job)
        if status not in ("failed", "cancelled"):
            raise ConfigError([f"job {job_id} is {status}: only a failed or stopped job can be resumed"],
                              "Stop it first, or start a new run.")
        cfg, backend, caller = spec.load(job.run.config), self.backend(job), Caller(owner, token, expires_at)
        cfg.output.dir = str(job.run.path)  # whatever the saved config says, the job's own folder
        self.pipeline.check_train(cfg, caller, backend, self.slots, self.queue_wait_s(), job_id=job.id)
        if not backend.checkpoint_exists(job, acting_token(token, self.space)):
            raise ConfigError([f"job {job_id} saved no checkpoint to continue from"],
                              "Submit it again to train from the start (lower training.save_steps to save sooner).")
        cfg.save(job.run.config)
        return self._queue(job, token, new=False)

    def _queue(self, job: Job, token: str | None, new: bool = True) -> Job:
        """List a new job (or queue a resumed one again), with its token at hand before the supervisor can see it."""
        register_secret(token)
        backend = self.backend(job)
        with self._lock:
            if backend.uses_slots:
                self._tokens[job.id] = token
            if new:
                self.store.add(job)
            else:
                if self.status(self.store.get(job.id))[0] not in ("failed", "cancelled"):
                    self._tokens.pop(job.id, None)
                    raise ConfigError([f"job {job.id} was resumed already"], "Follow it in the list of your runs.")
                self.store.update(job.id, phase="queued", resume=True, needs_token=bool(token), cancel_requested=False,
                                  exit_code=None, finished=None, pid=None, slot=None)
                job = self.store.get(job.id)
            if backend.uses_slots:
                self._tick()
                return self.get(job.id, job.owner)
        try:  # started now, outside the lock (a platform call): a refusal reaches the caller and the run's events
            backend.start(job, token, None)
        except Phi3SpaceError:
            self.store.update(job.id, phase="done", finished=time.time())
            raise
        return self.get(job.id, job.owner)

    # ------------------------------------------------------------ what the views ask

    def get(self, job_id: str, owner: str) -> Job:
        """The job, if it belongs to ``owner``; anyone else gets the same 'not found' as for a missing job."""
        job = self.store.get(job_id) if job_id else None
        if job is None or job.owner != owner:
            shown = repr(job_id) if len(job_id or "") <= 40 else f"{job_id[:12]!r}... ({len(job_id):,} characters)"
            raise ConfigError([f"no job {shown} among your jobs"], "Pick one of your jobs from the list.")
        return job

    def list(self, owner: str) -> list[Job]:
        """``owner``'s jobs."""
        return self.store.list(owner)

    def status(self, job: Job) -> tuple[str, RunState]:
        """The job's status (queued and running from the schedule, the rest from its events) and its RunState, whose
        ``status`` says the same."""
        state = job.run.state()
        state.status = job.phase if job.phase in ("queued", "running") else (state.status if state.final else "failed")
        return state.status, state

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start; None when the job is not waiting."""
        queued = [j.id for j in self.store.list(phase=("queued",))]
        return queued.index(job_id) + 1 if job_id in queued else None

    def queue_wait_s(self) -> float:
        """About how long a job submitted now waits for a slot: what the running jobs have left and the queued ones
        need, shared among the slots (unknown durations count as nothing)."""
        gpu, total = first_gpu_name(), 0.0
        for job in self.store.list(phase=("running", "queued")):
            if not self.backend(job).uses_slots:
                continue
            state = job.run.state()
            left = state.eta_s if job.phase == "running" and state.eta_s is not None else None
            if left is None and kind_of(job).trains:
                left = training_seconds(config.load(job.run.config), gpu)
            total += left or 0.0
        return total / max(1, self.slots)

    def gpu_jobs(self) -> list[Job]:
        """Jobs running on this machine now (on a GPU machine, they share the GPU with chat)."""
        return [j for j in self.store.list(phase=("running",)) if self.backend(j).uses_slots]

    def state(self, job: Job) -> dict:
        """What /job_status answers: the status, and what the events say (step, loss, ETA, metrics, adapter, ...)."""
        status, s = self.status(job)
        return {"id": job.id, "name": job.name, "kind": job.kind, "backend": job.backend, "status": status,
                "step": s.step, "max_steps": s.max_steps, "loss": s.loss, "eval_loss": s.eval_loss, "eta_s": s.eta_s,
                # the adapter to chat with: its Hub repo once pushed, else the run folder (on a Space: the job id)
                "adapter": (s.adapter_repo or (job.id if self.space else s.adapter)) if s.has_adapter else None,
                "repo_url": s.adapter_url, "checkpoint_url": s.checkpoint_url, "run_dir": self._shown(job.run_dir),
                "metrics": s.metrics or None, "error": s.error if status == "failed" else None,
                "push_pending": s.push_pending, "can_resume": s.can_resume, "evaluation": s.evaluation,
                "exported": s.exported or None, "plan": s.plan,
                "queue_position": self.queue_position(job.id), "created": job.created, "started": job.started,
                "finished": job.finished}

    def _shown(self, path: str) -> str:
        """A run folder as a visitor sees it: on a Space, inside the data folder (the server's own paths are not
        theirs to know); here, where it is."""
        try:
            return str(Path(path).relative_to(self.data.root)) if self.space else path
        except ValueError:
            return path

    # ------------------------------------------------------------ stop, restore, visitors

    def cancel(self, job_id: str, owner: str) -> Job:
        """Stop a job: a queued one at once; a running one through its backend (it saves and ends as cancelled)."""
        stopped_queued = False
        with self._lock:
            job = self.get(job_id, owner)
            if job.phase == "queued":
                token, stopped_queued = self._tokens.pop(job_id, None), True
                self.store.update(job_id, cancel_requested=True)
                self._ended(self.store.get(job_id), Verdict("cancelled"), None)
            elif job.phase == "running" and not job.cancel_requested:
                self.backend(job).stop(job)
                self.store.update(job_id, cancel_requested=True)
        if stopped_queued:  # (a Hub call: outside the lock)
            self.pipeline.record_cancelled(job, self.backend(job), token)
        return self.get(job_id, owner)

    def restore_from_hub(self, owner: str, token: str) -> list[str]:
        """Bring back ``owner``'s runs that this Space recorded on the Hub and that the local store lacks (after a
        restart wiped the disk); returns their job ids. An interrupted one is failed and can be resumed.

        Raises:
            HubError / AuthError: the Hub could not be asked.
        """
        from phi3space.jobs.restore import restore_from_hub

        return restore_from_hub(self, owner, token)

    def seen(self, owner: str, token: str) -> None:
        """A visitor is here with a (fresh) token: every backend may use it to follow their jobs again."""
        for backend in self.backends.values():
            backend.seen(owner, token)

    def touch(self) -> None:
        """A visitor used the Space (chat): the idle pause waits again."""
        if self.idle is not None:
            self.idle.touch()

    def shutdown(self, timeout: float = 10) -> None:
        """Stop the supervisor thread and the backends (tests and server exit)."""
        self._stop.set()
        self._thread.join(timeout)
        for backend in self.backends.values():
            backend.shutdown()
        self._lock_file.close()

    # ------------------------------------------------------------ supervisor

    def recover(self) -> None:
        """After a restart: each running job's backend adopts it or gives it its last word; queued jobs that needed a
        sign-in token cannot start any more (tokens are never stored)."""
        for job in self.store.list(phase=("running",)):
            self.backend(job).recover(job)
        for job in self.store.list(phase=("queued",)):
            if job.needs_token and job.id not in self._tokens:
                self._ended(job, Verdict("failed", "interrupted", "the server restarted before this job started",
                                         "Sign-in tokens are never stored: submit the job again."), None)

    def _relist_runs(self) -> None:
        """After the store was set aside: every run folder is listed again, ended (its process, if any, can no longer
        be followed); its status is whatever its events say."""
        for owner, job_id, run in self.data.run_folders():
            try:
                name = default_run_name(config.load(run.config))
            except Phi3SpaceError:
                name = job_id
            self.store.add(Job(id=job_id, owner=owner, name=name, run_dir=str(run.path), phase="done",
                               created=run.config.stat().st_mtime, finished=time.time()))

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                with self._lock:
                    self._tick()
            except Exception as exc:  # the supervisor must outlive one bad job; the job records the failure
                print(f"phi3space jobs: supervisor error: {scrub(repr(exc))}", file=sys.stderr)

    def _tick(self) -> None:
        for backend in self.backends.values():
            backend.poll()
        for job in self.store.list(phase=("queued",)):
            if not self.backend(job).uses_slots:
                continue
            slot = self._free_slots(min(job.gpus or 1, self.slots))
            if slot is None:
                break  # first come, first served: later jobs wait behind one that waits for GPUs
            self._start(job, slot)
        if self.idle is not None:
            self.idle.tick(busy=bool(self.store.list(phase=("running", "queued"))))

    def _free_slots(self, n: int) -> int | None:
        """The first of ``n`` free slots in a row, or None."""
        used = {s for j in self.gpu_jobs() if j.slot is not None for s in range(j.slot, j.slot + (j.gpus or 1))}
        return next((i for i in range(self.slots - n + 1) if not used & set(range(i, i + n))), None)

    def _start(self, job: Job, slot: int) -> None:
        for listener in self.before_start:
            try:
                listener(job)
            except Exception as exc:  # a listener must not keep a job from starting
                print(f"phi3space jobs: before-start listener failed: {scrub(repr(exc))}", file=sys.stderr)
        self.store.update(job.id, gpus=min(job.gpus or 1, self.slots))
        self.backend(job).start(self.store.get(job.id), self._tokens.pop(job.id, None), slot)

    def _ended(self, job: Job, verdict: Verdict | None, exit_code: int | None) -> None:
        """A job ended (or a queued one was dropped): give it the last word its events lack, mark it done."""
        if verdict is not None:
            verdict.write(job.run.writer(), job.run.state())
        self.store.update(job.id, phase="done", exit_code=exit_code, finished=time.time())
        if self.bucket is not None:  # a copy for the owner; never the live store
            self.bucket.sync_job(job.run, job.owner, job.id)
