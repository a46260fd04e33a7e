"""Jobs: a SQLite job store and a runner that trains each job in its own process, one at a time per GPU.

A job is ``python -m phi3space train RUN_DIR/config.yaml`` in a new process group, its output in the run's log and
its progress in the run's events (phi3space.run). The store keeps scheduling facts only (owner, queue order,
process, slot, times): what a run did, and how it ended, is read from its events. When a process ends without a
last word (killed, crashed, out of memory), or contradicts it with its exit code, the supervisor appends the
``error`` and ``run_finished`` events itself, so the run's file stays the one truth and survives a restart.

A visitor's token travels only in that process's environment: it is held in memory (job id -> token) until the
job starts and is never written to the store, the config or argv. Nothing here knows about gradio.

On a Space the local disk does not survive a restart: every job pushes its adapter and its checkpoints to the
visitor's repo, whose card records the job (phi3space.records), and ``restore_from_hub`` brings a visitor's runs
back from there. The store and the run folders stay on local disk, never on a bucket mount.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from phi3space.config import RunConfig
from phi3space.datadir import DataDirBusy, data_dir, fuse_mount, lock_data_dir, safe_name
from phi3space.engine.estimates import training_seconds
from phi3space.engine.hardware import first_gpu_name, gpu_count, training_refusal
from phi3space.errors import AuthError, ConfigError, Phi3SpaceError, register_secret, scrub
from phi3space.hub.auth import keep_owner_token_out, owner_token
from phi3space.hub.refs import is_local_ref
from phi3space.hub.space import on_space, space_id
from phi3space.jobs.idle import IdlePause
from phi3space.jobs.store import Job, JobStore
from phi3space.report import human_duration
from phi3space.run import RunDir, RunState

PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # where `import phi3space` finds this very code


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


TOKEN_MARGIN_S = 300  # a sign-in must outlast the estimated run by this much


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
        self.space = on_space() if space is None else space
        if self.space:  # the web server never sends the owner's token on a visitor's behalf
            keep_owner_token_out(space=True)
        if self.space and (fstype := fuse_mount(self.root)):
            raise DataDirBusy(f"the data folder {self.root} is on a {fstype} mount (a Storage Bucket?): the job store "
                              "(SQLite) needs a local disk with file locking",
                              "Leave PHI3SPACE_DATA_DIR on the Space's own disk (the default ./data): the Hub keeps "
                              "what must survive a restart; see README, 'What survives a restart'.")
        self._lock_file = lock_data_dir(self.root)
        self.store = JobStore(self.root / "jobs.sqlite")
        if self.store.set_aside is not None:
            self._relist_runs()
        self.slots = slots or int(os.environ.get("PHI3SPACE_SLOTS") or gpu_count() or 1)
        self.grace_s = grace_s if grace_s is not None else float(os.environ.get("PHI3SPACE_STOP_GRACE_S", "60"))
        self.poll_s = poll_s
        self.command = command
        self.idle = IdlePause.from_env(space_id()) if self.space else None
        from phi3space.hub.auth import resolve_token
        from phi3space.hub.bucket import BucketSync

        self.bucket = BucketSync.from_env(self.store.path, owner_token if self.space else resolve_token)
        self.before_start: list[Callable[[Job], None]] = []  # e.g. chat gives the GPU back before a job trains
        self._tokens: dict[str, str | None] = {}  # job id -> token, until the job starts
        self._procs: dict[str, subprocess.Popen | _Adopted] = {}
        self._kill_at: dict[str, float] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        from phi3space.jobs.hf.backend import RemoteJobs

        self.remote = RemoteJobs(self)
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="phi3space-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public

    def submit(self, cfg: RunConfig, owner: str, token: str | None = None, expires_at: float | None = None,
               name: str | None = None) -> Job:
        """Queue a run for ``owner`` (named ``name``, else <base>-<dataset>-<method>); its run folder is chosen here,
        under the data folder.

        On a Space the run always goes to the Hub (the destination defaults to ``auto``, checkpoints are pushed):
        write access is proven now (create_repo, then auth_check(write=True)), and the job is recorded on the repo's
        card, so that it can be found again after a restart.

        Raises:
            AuthError: no sign-in where one is needed, no write access, or a sign-in (``expires_at``, a Unix time)
                that will expire before the run can end.
            ConfigError: this machine cannot train (ZeroGPU, a GPU torch cannot use), or the repo is in use.
        """
        if cfg.compute.backend == "hf-jobs":  # started on Hugging Face Jobs at once: no slot, no queue
            return self.remote.submit(cfg, owner, token)
        refusal = training_refusal()
        if refusal is not None:
            raise refusal
        from phi3space.config import default_run_name

        if self.space:  # nothing on this disk survives a restart: the Hub keeps the run
            cfg.output.push_to = cfg.output.push_to or "auto"
            cfg.output.push_checkpoints = True
        if self.space and not token:
            raise AuthError("training here needs you to sign in with Hugging Face",
                            "Press 'Sign in with Hugging Face': on a Space every run is kept in your Hub account (the "
                            "Space's own disk does not survive a restart).")
        self.check_token_lasts(cfg, expires_at)
        if self.space:
            from phi3space.config import auto_repo_name
            from phi3space.hub.access import check_push_access

            cfg.output.push_to = check_push_access(cfg.output.push_to, token, auto_repo_name(cfg), cfg.output.private)
            self._check_repo_free(cfg.output.push_to, owner)
        for part, key in ((cfg.data, "dataset"), (cfg.model, "base")):  # the trainer runs elsewhere: no relative paths
            value = getattr(part, key)
            if is_local_ref(value) and Path(value).expanduser().exists():
                setattr(part, key, str(Path(value).expanduser().resolve()))

        gpus = self.slots if cfg.compute.gpus == "all" else int(cfg.compute.gpus)
        if gpus > self.slots:
            raise ConfigError([f"compute.gpus: {gpus}, but this server trains on {self.slots} GPU slot(s)"],
                              "Ask for fewer (or all), or train on Hugging Face Jobs with a multi-GPU flavor.")
        job_id = uuid.uuid4().hex[:12]
        run = RunDir(self.root / "runs" / safe_name(owner) / job_id)
        cfg.output.dir = str(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        job = Job(id=job_id, owner=owner, name=name or default_run_name(cfg), run_dir=str(run.path),
                  needs_token=bool(token), gpus=gpus)
        if self.space:
            from phi3space.hub.records import publish_queued

            publish_queued(cfg, cfg.output.push_to, job_id, owner, token, job.created)
        return self._queue(job, token)

    def submit_merge(self, job_id: str, push_to: str, owner: str, token: str | None = None, private: bool = True,
                     name: str | None = None) -> Job:
        """Queue a job that folds a finished job's adapter into its base model and pushes the merged 16-bit model
        to ``push_to`` (``python -m phi3space merge ... --push-to``); it runs, queues and stops like training.

        Raises:
            ConfigError: the job is not the owner's, or it left no adapter.
            AuthError: on a Space, without the visitor's token.
        """
        source = self.get(job_id, owner)
        status, _ = self.status(source)
        if status not in ("completed", "cancelled") or not source.run.has_adapter():
            raise ConfigError([f"job {job_id} has no adapter to merge (status: {status})"],
                              "Merge a finished run (or one stopped after it saved its adapter).")
        if self.space and not token:
            raise AuthError("pushing to the Hub needs you to sign in", "Press 'Sign in with Hugging Face'.")
        merge_id = uuid.uuid4().hex[:12]
        run = RunDir(self.root / "runs" / safe_name(owner) / merge_id)
        run.path.mkdir(parents=True, exist_ok=True)
        argv = ["merge", source.run_dir, "--push-to", push_to, "--run-dir", str(run.path)] + ([] if private else ["--public"])
        return self._queue(Job(id=merge_id, owner=owner, name=name or f"{source.name}-merged", run_dir=str(run.path),
                               needs_token=bool(token), argv=json.dumps(argv)), token)

    def _queue(self, job: Job, token: str | None) -> Job:
        register_secret(token)
        with self._lock:
            self._tokens[job.id] = token
            self.store.add(job)
            self._tick()
        return self.get(job.id, job.owner)

    def _check_repo_free(self, repo_id: str, owner: str) -> None:
        """One unfinished job per repo: the card records one job, and the checkpoints branch holds one run."""
        for other in self.store.list(owner, phase=("queued", "running")):
            if other.run.load_config().output.push_to == repo_id:
                raise ConfigError([f"{repo_id} is the destination of your job {other.id}, which has not finished"],
                                  "Wait for it, stop it, or choose another destination repo.")

    def queue_wait_s(self) -> float:
        """About how long a job submitted now waits: what the running jobs have left and the queued ones need,
        shared among the slots (unknown durations count as nothing)."""
        gpu, total = first_gpu_name(), 0.0
        for job in self.store.list(phase=("running", "queued")):
            state = job.run.state()
            left = state.eta_s if job.phase == "running" and state.eta_s is not None else None
            if left is None:
                left = training_seconds(job.run.load_config(), gpu) or 0.0
            total += left
        return total / max(1, self.slots)

    def check_token_lasts(self, cfg: RunConfig, expires_at: float | None) -> None:
        """Refuse a sign-in that will expire before the run can end: checkpoints and the final push use it.

        Raises:
            AuthError: expired, or expiring before the queue wait + the estimated training time (+ 5 minutes).
        """
        if not expires_at:
            return
        left = expires_at - time.time()
        wait, train = self.queue_wait_s(), training_seconds(cfg, first_gpu_name())
        need = wait + (train or 0.0) + TOKEN_MARGIN_S
        if left > need:
            return
        hint = ("Sign out and sign in again for a fresh token, then start again"
                + (", or shorten the run (training.max_steps)." if train else "."))
        if left <= 0:
            raise AuthError("your Hugging Face sign-in has expired", hint)
        detail = f"queue ~{human_duration(wait)}" + (f", training ~{human_duration(train)}" if train else "")
        raise AuthError(f"your Hugging Face sign-in expires in {human_duration(left)}, before this run can end "
                        f"({detail}): its checkpoints and adapter could not be pushed", hint)

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

    def resume(self, job_id: str, owner: str, token: str | None = None, expires_at: float | None = None) -> Job:
        """Queue a failed or stopped job again; its trainer continues from the newest checkpoint (--resume): the
        run folder's, else the last one pushed to its repo's checkpoints branch (after a Space restart).

        Raises:
            ConfigError: the job is still queued/running or finished well, or it left no checkpoint to continue from.
            AuthError: no sign-in where one is needed, or one that expires too soon.
        """
        if self.get(job_id, owner).remote:  # continued on Hugging Face Jobs, from the checkpoint it pushed
            return self.remote.resume(self.get(job_id, owner), token)
        refusal = training_refusal()
        if refusal is not None:
            raise refusal
        job = self.get(job_id, owner)
        if job.argv:
            raise ConfigError([f"job {job_id} is not a training run: only training runs can be resumed"],
                              "Start it again instead.")
        status, _ = self.status(job)
        if status not in ("failed", "cancelled"):
            raise ConfigError([f"job {job_id} is {status}: only a failed or stopped job can be resumed"],
                              "Stop it first, or start a new run.")
        cfg = job.run.load_config()
        if self.space and cfg.output.push_to and not token:
            raise AuthError("pushing to the Hub needs you to sign in", "Press 'Sign in with Hugging Face'.")
        if job.run.latest_checkpoint() is None and not self._hub_checkpoint(cfg, token):
            raise ConfigError([f"job {job_id} saved no checkpoint to continue from"],
                              "Submit it again to train from the start (lower training.save_steps to save sooner).")
        self.check_token_lasts(cfg, expires_at)
        with self._lock:
            job = self.get(job_id, owner)
            if self.status(job)[0] not in ("failed", "cancelled"):
                raise ConfigError([f"job {job_id} was resumed already"], "Follow it in the list of your runs.")
            register_secret(token)
            self._tokens[job_id] = token
            self.store.update(job_id, phase="queued", resume=True, needs_token=bool(token), cancel_requested=False,
                              exit_code=None, finished=None, pid=None, slot=None)
            self._tick()
        return self.get(job_id, owner)

    def _hub_checkpoint(self, cfg: RunConfig, token: str | None) -> bool:
        if not (cfg.output.push_to and cfg.output.push_checkpoints):
            return False
        from phi3space.hub.auth import resolve_token
        from phi3space.hub.push import hub_checkpoint_steps

        return bool(hub_checkpoint_steps(cfg.output.push_to, token if (token or self.space) else resolve_token()))

    def push_pending(self, job: Job, state: RunState | None = None) -> bool:
        """The run trained and saved its adapter, but the push failed (Hub down, token expired): "Push again"."""
        s = state or job.run.state()
        return (s.status == "failed" and bool(s.adapter) and not s.adapter_repo and job.run.has_adapter()
                and (s.error or {}).get("kind") in ("hub", "auth"))

    def push_again(self, job_id: str, owner: str, token: str | None = None) -> Job:
        """Push a run whose push failed, with the caller's current token (no retraining); the job then completes.

        Raises:
            ConfigError: nothing waits to be pushed. AuthError / HubError: the push failed again.
        """
        from phi3space.hub.auth import resolve_token
        from phi3space.hub.push import push_run
        from phi3space.hub.records import record

        job = self.get(job_id, owner)
        state = job.run.state()
        if job.phase != "done" or not self.push_pending(job, state):
            raise ConfigError([f"job {job_id} has no adapter waiting to be pushed"],
                              "Push again is for a finished run whose push failed.")
        if self.space and not token:
            raise AuthError("pushing to the Hub needs you to sign in", "Press 'Sign in with Hugging Face'.")
        register_secret(token)
        rec = record(job.id, job.owner, "completed", state.step, state.max_steps, state.metrics, job.created) if self.space else None
        push_run(job.run.path, token=token if (token or self.space) else resolve_token(), record=rec)
        job.run.append("run_finished", status="completed", step=state.step, metrics=state.metrics, adapter=state.adapter)
        return self.get(job_id, owner)

    def restore_from_hub(self, owner: str, token: str) -> list[str]:
        """Bring back ``owner``'s runs that this Space recorded on the Hub and that the local store lacks (after a
        restart wiped the disk); returns their job ids. An interrupted one is failed and can be resumed.

        Raises:
            HubError / AuthError: the Hub could not be asked.
        """
        from phi3space.config import default_run_name
        from phi3space.hub.records import hub_runs, rebuild

        restored = []
        for hub_run in hub_runs(owner, token):
            job_id = safe_name(hub_run.job_id)
            if self.store.get(job_id) is not None:
                continue
            run = RunDir(self.root / "runs" / safe_name(owner) / job_id)
            rebuild(run, hub_run, token)
            created = float(hub_run.record.get("created") or time.time())
            with self._lock:
                if self.store.get(job_id) is None:
                    self.store.add(Job(id=job_id, owner=owner, name=default_run_name(run.load_config()),
                                       run_dir=str(run.path), phase="done", created=created, finished=time.time()))
                    restored.append(job_id)
        return restored

    def touch(self) -> None:
        """A visitor used the Space (chat): the idle pause waits again."""
        if self.idle is not None:
            self.idle.touch()

    def gpu_jobs(self) -> list[Job]:
        """Jobs training now (on a GPU machine, they share the GPU with chat)."""
        return self.store.list(phase=("running",))

    def state(self, job: Job) -> dict:
        """What /job_status answers: the status, and what the events say (step, loss, ETA, metrics, adapter, ...)."""
        status, s = self.status(job)
        finished_with_adapter = status in ("completed", "cancelled") and (s.adapter or s.adapter_repo)
        return {"id": job.id, "name": job.name, "status": status, "step": s.step, "max_steps": s.max_steps,
                "loss": s.loss, "eval_loss": s.eval_loss, "eta_s": s.eta_s,
                # the adapter to chat with: its Hub repo once pushed, else the run folder
                "adapter": (s.adapter_repo or s.adapter) if finished_with_adapter else None,
                "repo_url": s.adapter_url, "checkpoint_url": s.checkpoint_url, "run_dir": job.run_dir,
                "metrics": s.metrics or None, "error": s.error if status == "failed" else None,
                "push_pending": job.phase == "done" and self.push_pending(job, s),
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
                from phi3space.config import default_run_name

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
        if self.idle is not None:
            self.idle.tick(busy=bool(self._procs or self.store.list(phase=("queued",))))

    def _free_slots(self, n: int) -> int | None:
        """The first of ``n`` free slots in a row, or None."""
        used = {s for p in self._procs.values() for s in range(p.slot, p.slot + getattr(p, "gpus", 1))}
        return next((i for i in range(self.slots - n + 1) if not used & set(range(i, i + n))), None)

    def _start(self, job: Job, slot: int) -> None:
        token = self._tokens.pop(job.id, None)
        gpus = min(job.gpus or 1, self.slots)
        env = job_env(token, self.space)
        from phi3space.hub.records import JOB_ENV, OWNER_ENV

        env[JOB_ENV], env[OWNER_ENV] = job.id, job.owner  # for the record on the final card
        if self.slots > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(s) for s in range(slot, slot + gpus))
        for listener in self.before_start:
            try:
                listener(job)
            except Exception as exc:  # a listener must not keep a job from starting
                print(f"phi3space jobs: before-start listener failed: {scrub(repr(exc))}", file=sys.stderr)
        if job.argv:
            command = [sys.executable, "-u", "-m", "phi3space", *json.loads(job.argv)]
        else:
            command = (self.command(job.run.config) if gpus == 1 else train_command(job.run.config, gpus)) + \
                (["--resume"] if job.resume else [])
        # Taken before the process starts: a fast process may write its last word before Popen returns here, and a
        # last word older than `started` counts as an earlier attempt's (last_word).
        started = time.time()
        with job.run.log.open("ab") as log:
            # cwd: where `import phi3space` finds this code, so the job runs exactly what the server runs
            proc = subprocess.Popen(command, env=env, cwd=PACKAGE_PARENT, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        proc.slot, proc.gpus = slot, gpus  # type: ignore[attr-defined]
        self._procs[job.id] = proc
        self.store.update(job.id, phase="running", started=started, pid=proc.pid, slot=slot)

    def _finish(self, job: Job, code: int | None) -> None:
        """The process ended (or a queued job was dropped): append the last word its events lack, mark it done."""
        for type, fields in last_word(code, job.run.state(), job.cancel_requested, since=job.started):
            job.run.append(type, **fields)
        self.store.update(job.id, phase="done", exit_code=code, finished=time.time())
        if self.bucket is not None:  # a copy for the owner; never the live store
            self.bucket.sync_job(job.run, job.owner, job.id)

    def _signal(self, job_id: str, sig: int) -> None:
        proc = self._procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # the whole group: data workers and launchers too
        except ProcessLookupError:
            pass


def _is_our_process(job: Job) -> bool:
    """The pid still runs *this* job's process (its command names the run folder; not a reused pid, nor a zombie)."""
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(job.run.path) in cmdline


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
