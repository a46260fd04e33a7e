"""The Hugging Face Jobs backend: a job is started on the platform at submit (no local slot, no queue), a follower
thread mirrors its events into the run folder (follow.Mirror), and the platform's verdict is its last word where
its own events lack one.

The visitor's token is held in memory only (owner -> newest token), for the platform calls made on their behalf;
after a restart, or when the token has expired, a job waits until its owner is next seen with a token (``seen``);
then ``list_jobs`` with that token and the app's label finds their jobs again (even those whose records were lost
with the disk) and they are followed again from the first line of their logs.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time

from phi3space.config import default_run_name
from phi3space.errors import AuthError, JobsError, Phi3SpaceError, SignInNeeded, register_secret, scrub
from phi3space.hub.auth import acting_token
from phi3space.hub.space import on_space
from phi3space.jobs import spec
from phi3space.jobs.backend import Backend, Host, Task
from phi3space.jobs.hf import flavors, follow, platform, tasks
from phi3space.jobs.hf.protocol import CONFIG_VAR, TASK_VAR
from phi3space.jobs.kinds import task_of
from phi3space.jobs.spec import JobConfig, timeout_seconds
from phi3space.jobs.store import Job

FIRST_SEARCH_WAIT_S = 20  # how long a visitor's first call after a restart waits for their jobs to be found again
SCHEDULING_S = 10 * 60  # allowance for the platform to find the hardware, before the job's own timeout runs


class HFJobsBackend(Backend):
    """Hugging Face Jobs: rented hardware on the visitor's account, started at submit and followed from its log."""

    name = "hf-jobs"
    label = "Hugging Face Jobs"
    billed = True
    options = ("flavor", "timeout")
    limits = "compute.timeout stops the job (and caps its cost); the flavor decides its GPUs"
    needs_hub_destination = True
    survives_restart = True  # list_jobs with the app's label finds its jobs again

    @classmethod
    def estimate(cls, cfg: JobConfig, rows: int | None, lengths: list[int] | None) -> flavors.Estimate:
        """The flavor's hardware and price, the time the run may take, and what that costs."""
        return flavors.estimate(cfg, rows, lengths)

    def __init__(self, host: Host, **options):
        super().__init__(host)
        self.origin = platform.safe_label(platform.origin() if on_space() else
                                          "app-" + hashlib.sha256(str(host.data.root).encode()).hexdigest()[:8])
        self._tokens: dict[str, str] = {}  # owner -> their newest token (memory only)
        self._following: dict[str, threading.Thread] = {}
        self._searched: set[str] = set()  # owners whose jobs were listed since this process started
        self._lock = threading.RLock()
        self._stop = threading.Event()

    # ------------------------------------------------------------ the backend interface

    def check(self, cfg: JobConfig, token: str | None, slots: int) -> int:
        """``Backend.check``: a token, Hub inputs and a known flavor (platform.check_job); takes none of this machine's GPU slots."""
        platform.check_job(cfg, self._token(None, token))
        return 0  # the flavor's GPUs, not this machine's

    def longest_s(self, cfg: JobConfig, queue_wait_s: float) -> float | None:
        """``Backend.longest_s``: the platform's scheduling time plus compute.timeout."""
        return SCHEDULING_S + (timeout_seconds(cfg.compute.timeout) or 0)

    def check_task(self, task: Task, token: str | None) -> Task:
        """``Backend.check_task``: what an eval or export job needs there; returns it with its flavor."""
        return tasks.check_task(task, self._token(None, token))[0]

    def task_longest_s(self, task: Task, queue_wait_s: float) -> float | None:
        """``Backend.task_longest_s``: the platform's scheduling time plus the task's timeout."""
        return tasks.longest_s(task, SCHEDULING_S)

    def start(self, job: Job, token: str | None, slot: int | None) -> Job:
        """Start the job on the platform and follow it. A refusal is the run's last word (written by platform.start).

        Raises:
            Phi3SpaceError: the platform's refusal.
        """
        token = self._token(job.owner, token)
        task = task_of(job)
        if task is None:
            cfg = spec.load(job.run.config)
            flavor = platform.check_job(cfg, token)
        else:
            task, flavor = tasks.check_task(task, token)
        self.host.store.update(job.id, phase="running", started=time.time())
        if task is None:
            ref = platform.start(cfg, token, flavor, job.id, job.run.writer(), resume=job.resume, labels=self._labels())
        else:
            ref = platform.start_task(task, token, flavor, job.id, job.run.writer(), labels=self._labels())
        self.host.store.update(job.id, handle=str(ref))
        job = self.host.store.get(job.id)
        self._follow(job)
        return job

    def stop(self, job: Job) -> None:
        """Ask the platform to stop the job; its follower writes how it ended."""
        token = self._tokens.get(job.owner) or self._token(job.owner, None, required=False)
        if not token:
            raise SignInNeeded("stopping a job on Hugging Face Jobs needs your sign-in", "sign in again, then press Stop.")
        follow.cancel(platform.JobRef.parse(job.handle), token)

    def recover(self, job: Job) -> None:
        """Follow the job again now if a token is at hand, else once its owner is seen."""
        if self._token(job.owner, None, required=False):
            self._follow(job)

    def checkpoint_exists(self, job: Job, token: str | None) -> bool:
        """``Backend.checkpoint_exists``: only a checkpoint pushed to the Hub counts (the job's disk is gone)."""
        return bool(job.run.state().checkpoint_url)  # the job's own disk is gone: only a pushed one counts

    def seen(self, owner: str, token: str) -> None:
        """Keep the visitor's fresh token, and find and follow their jobs that nobody follows."""
        register_secret(token)
        with self._lock:
            self._tokens[owner] = token
            waiting = [j for j in self.host.store.list(owner, phase=("running",))
                       if j.backend == self.name and j.id not in self._following]
            search = owner not in self._searched
            self._searched.add(owner)
        if waiting or search:
            finder = threading.Thread(target=self._find_again, args=(owner, token, waiting), daemon=True,
                                      name=f"phi3space-find-{owner}")
            finder.start()
            if search and self.host.space:  # a Space's disk is wiped on restart: the visitor's first call answers
                finder.join(FIRST_SEARCH_WAIT_S)  # with the jobs the platform still runs for them

    def shutdown(self) -> None:
        """``Backend.shutdown``: stop following; the jobs run on, and a restart finds them again."""
        self._stop.set()

    @classmethod
    def train_from_terminal(cls, cfg: JobConfig, resume: bool, token: str | None, echo) -> str | None:
        """``Backend.train_from_terminal``: submit the job, follow it to its end, and say where its adapter is."""
        from phi3space.jobs.hf.cli import train_cli
        from phi3space.run import RunDir

        run_dir = train_cli(cfg, resume, token, echo=echo)
        return f"done: {run_dir} (adapter: {RunDir(run_dir).state().adapter_url})"

    @classmethod
    def task_from_terminal(cls, task: Task, run_dir: str, token: str | None, echo, prepare=None):
        """``Backend.task_from_terminal``: submit the eval or export job and follow it to its end."""
        from phi3space.jobs.hf.cli import task_cli

        return task_cli(task, run_dir, token, echo=echo, prepare=prepare).state()

    # ------------------------------------------------------------ following

    def _labels(self) -> dict:
        return {platform.LABEL_ORIGIN: self.origin}

    def _token(self, owner: str | None, token: str | None, required: bool = True) -> str | None:
        """The owner's token for platform calls: the one given, else the newest seen; off a Space the local login."""
        token = acting_token(token, self.host.space) or (self._tokens.get(owner) if owner else None)
        if token:
            register_secret(token)
            if owner:
                with self._lock:
                    self._tokens[owner] = token
        elif required:
            raise SignInNeeded("training on Hugging Face Jobs needs your Hugging Face sign-in",
                               "the job runs as you, billed to you.")
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
                              "list your Hugging Face jobs", JobsError))
        except Phi3SpaceError as exc:
            print(f"phi3space jobs: could not list {owner}'s jobs: {exc.message}", file=sys.stderr)
            found = []
        for info in found:
            job_id = (info.labels or {}).get(platform.LABEL_RUN)
            job = self.host.store.get(job_id) if job_id else None
            if job is None and job_id and str(info.status.stage) not in follow.TERMINAL:
                job = self._relist(owner, job_id, info)
            if job is not None and job.owner == owner and job.phase == "running" and job.id not in {j.id for j in waiting}:
                waiting.append(job)
        for job in waiting:
            self._follow(job)

    def _relist(self, owner: str, job_id: str, info) -> Job | None:
        """A job of ``owner``'s that the platform still runs and this server lost (a wiped disk), listed again from
        what the job itself carries: a training job's config, or an eval or export job's Task."""
        env = info.environment or {}
        run = self.host.data.run(owner, job_id)
        try:
            task = Task.from_json(env[TASK_VAR]) if TASK_VAR in env else None
            cfg = None if task else spec.loads(env.get(CONFIG_VAR, ""))
        except (Phi3SpaceError, ValueError, TypeError):
            return None
        if task is None and cfg is None:
            return None
        run.path.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            cfg.output.dir = str(run.path)
            cfg.save(run.config)
        kind = {"kind": task.kind, "args": task.to_json(), "name": f"{task.adapter.rsplit('/', 1)[-1]}-{task.kind}"} \
            if task else {"name": default_run_name(cfg)}
        created = info.created_at.timestamp() if info.created_at else time.time()
        job = Job(id=job_id, owner=owner, run_dir=str(run.path), phase="running", created=created, started=created,
                  backend=self.name, handle=f"{info.owner.name}/{info.id}", **kind)
        self.host.store.add(job)
        return job

    def _follow(self, job: Job) -> None:
        if not job.handle:  # being started right now (start follows it once run_job answered)
            return
        with self._lock:
            running = self._following.get(job.id)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self._run_follower, args=(job,), daemon=True,
                                      name=f"phi3space-follow-{job.id}")
            self._following[job.id] = thread
        thread.start()

    def _run_follower(self, job: Job) -> None:
        ref = platform.JobRef.parse(job.handle)
        task = task_of(job)
        trains = task is None
        try:
            cfg = spec.load(job.run.config) if trains else None
        except Phi3SpaceError:
            cfg = None
        while not self._stop.is_set():
            with self._lock:
                token = self._tokens.get(job.owner)
            if not token:
                break  # waits for the owner's next visit (seen)
            try:
                if follow.follow_to_end(ref, token, job.run, job.run.writer(), cfg, stop=self._stop,
                                       trains=trains, timeout=task.timeout if task else None):
                    self.host.ended(job, None, None)  # the platform's verdict is written already
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
