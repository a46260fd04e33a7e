"""What comes after a run, as jobs of their own: fold its adapter into its base (``Merge``), measure it against the
base model (``Evaluate``), and export it to GGUF for Ollama and llama.cpp (``Export``). Each is a kind
(phi3space.jobs.kinds) whose whole command line is ``python -m phi3space merge|eval|export ...`` with ``--run-dir``
set to the job's own folder, asked for by handing its request to ``JobRunner.submit``. Evaluate and export go through
the submit pipeline (phi3space.jobs.submit) on the backend they are given (default: the one their run trained on);
every one queues, runs, stops and is followed like training, with the visitor's token only in its environment (on
Hugging Face Jobs: a secret of the job).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from phi3space.datadir import new_job_id, safe_name
from phi3space.engine.gguf_file import QUANTS
from phi3space.errors import ConfigError, Phi3SpaceError, register_secret
from phi3space.hub.auth import acting_token
from phi3space.hub.push import push_run
from phi3space.hub.records import record
from phi3space.jobs import spec
from phi3space.jobs.backend import Backend, Task
from phi3space.jobs.kinds import EVAL, EXPORT, MERGE, PLAN, TRAIN, Kind, check_backend, kind_of, task_of
from phi3space.jobs.spec import ComputeConfig
from phi3space.jobs.store import Job
from phi3space.jobs.submit import Caller, check_token_lasts
from phi3space.jobs.terminal import export_destination
from phi3space.run import RunState

MAX_EVAL_ROWS = 1000
MERGED = "merged"  # where a merge job that is not pushed writes the merged model, in its own folder


def unique_name(name: str, taken) -> str:
    """``name``, numbered past the names in ``taken`` (name-2, name-3, ...): two jobs never look alike in a list."""
    n, out = 1, name
    while out in taken:
        n += 1
        out = f"{name}-{n}"
    return out


def output_files(job: Job, state: RunState) -> list[Path]:
    """The files a completed export or merge job wrote on this machine, to offer for download: the GGUF and its
    Modelfile, or the merged model's files. None for other jobs, or before the job completed."""
    if state.status != "completed":
        return []
    if job.kind == EXPORT.name:
        paths = [job.run.path / name for name in state.exported]
    elif job.kind == MERGE.name and (job.run.path / MERGED).is_dir():
        paths = sorted((job.run.path / MERGED).iterdir())
    else:
        paths = []
    return [p for p in paths if p.is_file()]


def source_of(job: Job, jobs: list[Job], state_of) -> Job | None:
    """The training run a job acts on: itself for a training run, else the run whose adapter an eval, export or merge
    job reads (its folder, or its Hub repo: ``state_of(run)`` gives a run's RunState); None when it is not among
    ``jobs``."""
    if kind_of(job) is TRAIN:
        return job
    if kind_of(job) is PLAN:  # a plan acts on a config, not on a run
        return None
    adapter = json.loads(job.args)[1] if kind_of(job) is MERGE else task_of(job).adapter
    for run in jobs:
        if kind_of(run) is TRAIN and adapter in (run.run_dir, state_of(run).adapter_repo):
            return run
    return None


@dataclass(frozen=True)
class FollowUp:
    """A job on a finished training run's adapter, as ``JobRunner.submit`` takes it: ``source``, the run's job id.
    Each subclass is one kind, and says what its job runs (``job``)."""

    kind: ClassVar[Kind]
    verb: ClassVar[str]  # what it does to the adapter, in the messages: "no adapter to <verb>"
    suffix: ClassVar[str]  # its job's default name: <the run's name>-<suffix>
    source: str

    def job(self, runner: FollowUps, source: Job, state: RunState, caller: Caller,
            folder: Path) -> tuple[Task | list[str], Backend | None]:
        """What the job runs (a Task, or its whole command line with its events in ``folder``, not made yet) and where
        (None: this machine's default backend), after its own checks.

        Raises:
            Phi3SpaceError: what to fix; nothing was created.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class Merge(FollowUp):
    """Fold the run's adapter into its base model and push the merged 16-bit model to ``push_to``
    (``python -m phi3space merge ... --push-to``), or off a Space with no ``push_to`` write it into the job's folder
    (``MERGED``); it runs here, and queues and stops like training."""

    kind: ClassVar[Kind] = MERGE
    verb: ClassVar[str] = "merge"
    suffix: ClassVar[str] = "merged"
    push_to: str | None = None
    private: bool = True

    def job(self, runner, source, state, caller, folder):
        """Its command line; a push needs a sign-in that lasts."""
        if not self.push_to and runner.space:
            raise ConfigError(["a merged model on a Space goes to your Hub account"], "Name the destination repo.")
        if self.push_to:
            runner.pipeline.require_sign_in(caller, "pushing to the Hub needs you to sign in")
            check_token_lasts(None, caller.expires_at)
        adapter = source.run_dir if source.run.has_adapter() else state.adapter_repo
        where = ["--push-to", self.push_to] if self.push_to else ["--out", str(folder / MERGED)]
        return [MERGE.name, adapter, *where, "--run-dir", str(folder)] + ([] if self.private else ["--public"]), None


@dataclass(frozen=True)
class Evaluate(FollowUp):
    """``python -m phi3space eval`` on the run's adapter: its eval rows, or up to ``rows`` rows of ``data``; the
    results go into the job's events and, when the adapter is on the Hub, its card. ``backend``: where it runs
    (default: where the run trained); ``flavor``: its hardware there."""

    kind: ClassVar[Kind] = EVAL
    verb: ClassVar[str] = "evaluate"
    suffix: ClassVar[str] = "eval"
    data: str | None = None
    rows: int = 50
    backend: str | None = None
    flavor: str | None = None

    def job(self, runner, source, state, caller, folder):
        """Its Task, through the pipeline's checks (rows in range; on a Space no data on the server's disk; on Jobs
        Hub inputs only and a known flavor)."""
        where = _where(runner, EVAL, source, self.backend)
        if not isinstance(self.rows, int) or not 1 <= self.rows <= MAX_EVAL_ROWS:
            raise ConfigError([f"rows: {self.rows!r} (1 to {MAX_EVAL_ROWS})"], "e.g. 50 rows.")
        data = (self.data or "").strip() or None
        adapter = _adapter(source, state, where)
        argv = (EVAL.name, adapter, "--rows", str(self.rows)) + (("--data", data) if data else ())
        task = Task(EVAL.name, argv, adapter, (("data", data),) if data else (),
                    push_to=state.adapter_repo if adapter == state.adapter_repo else None,  # its card gets the scores
                    flavor=_flavor(source, where, self.flavor), timeout=ComputeConfig().timeout)
        return runner.pipeline.check_task(task, caller, where, "evaluating here needs you to sign in with Hugging Face",
                                          runner.queue_wait_s()), where


@dataclass(frozen=True)
class Export(FollowUp):
    """``python -m phi3space export`` on the run's adapter: GGUF in ``quant`` and a Modelfile in the job's folder,
    pushed to ``push_to`` (a repo, or 'auto' for <you>/<run name>-GGUF; always pushed on a Space and on Jobs).
    ``backend`` and ``flavor`` as for Evaluate."""

    kind: ClassVar[Kind] = EXPORT
    verb: ClassVar[str] = "export"
    suffix: ClassVar[str] = "gguf"
    quant: str = "q8_0"
    push_to: str | None = None
    private: bool = True
    system: str | None = None
    temperature: float | None = None
    backend: str | None = None
    flavor: str | None = None

    def job(self, runner, source, state, caller, folder):
        """Its Task, through the pipeline's checks (a known quant; on Jobs an adapter on the Hub), with its
        destination resolved and proven writable before anything runs or is billed."""
        where = _where(runner, EXPORT, source, self.backend)
        if self.quant not in QUANTS:
            raise ConfigError([f"quant: {self.quant!r} is not one of {', '.join(QUANTS)}"],
                              "k-quants (Q4_K_M, ...) need llama.cpp's llama-quantize, run on an f16 export.")
        name = safe_name(source.name)
        pushes = bool(self.push_to) or runner.space or where.needs_hub_destination
        adapter = _adapter(source, state, where)
        argv = (EXPORT.name, adapter, "--quant", self.quant, "--name", name) + (() if self.private else ("--public",))
        argv += (("--system", self.system) if self.system else ()) + (
            ("--temperature", f"{self.temperature:g}") if self.temperature is not None else ())
        # (not the run's own flavor: an export needs memory, not the GPU it trained on; the backend picks one)
        task = Task(EXPORT.name, argv, adapter, push_to=self.push_to or ("auto" if pushes else None), out=True,
                    flavor=(self.flavor or "").strip() or None, timeout=ComputeConfig().timeout)
        task = runner.pipeline.check_task(task, caller, where, "pushing to the Hub needs you to sign in",
                                          runner.queue_wait_s())
        if pushes:
            task = export_destination(name, self.private, acting_token(caller.token, runner.space))(task)
        return task, where


def _where(runner: FollowUps, kind: Kind, source: Job, name: str | None) -> Backend:
    """The backend named (default: the one the run trained on), if a job of ``kind`` can run there."""
    backend = runner.backend(name or source.backend)
    check_backend(kind, backend)
    return backend


def _adapter(source: Job, state: RunState, backend: Backend) -> str:
    """Where the job reads the adapter: its folder here (unless the job runs where this disk is not), else its Hub
    repo."""
    if backend.needs_hub_destination:
        return state.adapter_repo or source.run_dir  # (a folder only here: the backend refuses it, with a hint)
    return source.run_dir if source.run.has_adapter() else state.adapter_repo


def _flavor(source: Job, backend: Backend, flavor: str | None) -> str | None:
    """The flavor asked for, else the run's own when it trained on this backend (else the backend's default)."""
    flavor = (flavor or "").strip() or None
    if flavor or source.backend != backend.name:
        return flavor
    try:
        return spec.load(source.run.config).compute.flavor
    except Phi3SpaceError:
        return None


class FollowUps:
    """JobRunner's actions on a finished run's adapter: the jobs that act on it, and pushing it again; it supplies get,
    status, list, pipeline, data, space, backend, queue_wait_s and _queue."""

    def said(self, job: Job) -> tuple[str, RunState]:
        """A job's status and state as ``status`` gives them, except that a run whose events already hold its last
        word has ended as they say, while its process may still be exiting (seconds later): what the page shows, and
        what the actions on a finished run (evaluate, export, merge, chat) go by."""
        status, state = self.status(job)
        if status == "running":
            ended = job.run.state()
            if ended.final and (ended.finished or 0) >= (job.started or 0):  # (not an earlier attempt's, when resumed)
                return ended.status, ended
        return status, state

    def _follow_up(self, request: FollowUp, caller: Caller, name: str | None) -> Job:
        """Queue (or on a backend without slots start) the job ``request`` asks for, in a new folder of its own.

        Raises:
            ConfigError: ``request.source`` is not a finished training run of the caller's; or the request's own.
            AuthError: no sign-in where one is needed, or one that expires too soon.
        """
        source, state = self._source(request.source, caller.owner, request.verb)
        job_id = new_job_id()
        run = self.data.run(caller.owner, job_id)
        what, backend = request.job(self, source, state, caller, run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        name = name or f"{source.name}-{request.suffix}"
        if isinstance(what, Task):
            job = Job(id=job_id, owner=caller.owner, name=unique_name(name, {j.name for j in self.list(caller.owner)}),
                      run_dir=str(run.path), needs_token=bool(caller.token), kind=what.kind, args=what.to_json(),
                      backend=backend.name, gpus=1)
        else:  # a whole command line (a merge)
            job = Job(id=job_id, owner=caller.owner, name=name, run_dir=str(run.path), needs_token=bool(caller.token),
                      kind=request.kind.name, args=json.dumps(what))
        return self._queue(job, caller.token)

    def _source(self, job_id: str, owner: str, what: str) -> tuple[Job, RunState]:
        """The finished training run ``job_id`` of ``owner`` and its state.

        Raises:
            ConfigError: not the owner's, not a training run, or no adapter.
        """
        source = self.get(job_id, owner)
        status, state = self.said(source)
        if not state.has_adapter or kind_of(source) is not TRAIN:
            raise ConfigError([f"job {job_id} has no adapter to {what} (status: {status})"],
                              f"{what.capitalize()} a finished run (or one stopped after it saved its adapter).")
        return source, state

    def push_again(self, job_id: str, owner: str, token: str | None = None) -> Job:
        """Push a run whose push failed, with the caller's current token (no retraining); the job then completes.

        Raises:
            ConfigError: nothing waits to be pushed. AuthError / HubError: the push failed again.
        """
        job = self.get(job_id, owner)
        status, state = self.status(job)
        if not state.push_pending or not job.run.has_adapter():
            raise ConfigError([f"job {job_id} has no adapter waiting to be pushed"],
                              "Push again is for a finished run whose push failed.")
        self.pipeline.require_sign_in(Caller(owner, token), "pushing to the Hub needs you to sign in")
        register_secret(token)
        rec = record(job.id, job.owner, "completed", state.step, state.max_steps, state.metrics, job.created) if self.space else None
        push_run(job.run.path, token=acting_token(token, self.space), record=rec)
        job.run.finish("completed", step=state.step, metrics=state.metrics, adapter=state.adapter)
        return self.get(job_id, owner)
