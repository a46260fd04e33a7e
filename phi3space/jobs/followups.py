"""What comes after a run, as jobs of their own (JobRunner's submit_eval and submit_export): measure its adapter
against the base model, and export it to GGUF for Ollama and llama.cpp. Each is a kind (phi3space.jobs.kinds) whose
whole command line is ``python -m phi3space eval|export ...`` with ``--run-dir`` set to the job's own folder; it goes
through the submit pipeline (phi3space.jobs.submit) on the backend it is given (default: the one its run trained
on), and queues, runs, stops and is followed like training, with the visitor's token only in its environment (on
Hugging Face Jobs: a secret of the job).
"""

from __future__ import annotations

import json
from pathlib import Path

from phi3space.datadir import new_job_id, safe_name
from phi3space.errors import ConfigError, Phi3SpaceError
from phi3space.jobs.backend import Backend, Task
from phi3space.jobs.kinds import EVAL, EXPORT, MERGE, TRAIN, check_backend, kind_of, task_of
from phi3space.jobs.spec import ComputeConfig
from phi3space.jobs.store import Job
from phi3space.jobs.submit import Caller
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
    adapter = json.loads(job.args)[1] if kind_of(job) is MERGE else task_of(job).adapter
    for run in jobs:
        if kind_of(run) is TRAIN and adapter in (run.run_dir, state_of(run).adapter_repo):
            return run
    return None


class FollowUps:
    """JobRunner's jobs on a finished run's adapter (besides merge); it supplies get, status, pipeline, data, space,
    backend, queue_wait_s and _queue."""

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

    def _backend_for(self, kind, source: Job, name: str | None) -> Backend:
        backend = self.backend(name or source.backend)
        check_backend(kind, backend)
        return backend

    @staticmethod
    def _adapter(source: Job, state: RunState, backend: Backend) -> str:
        """Where the job reads the adapter: its folder here (unless the job runs where this disk is not), else its
        Hub repo."""
        here = source.run.has_adapter()
        if backend.needs_hub_destination:
            return state.adapter_repo or source.run_dir  # (a folder only here: the backend refuses it, with a hint)
        return source.run_dir if here else state.adapter_repo

    @staticmethod
    def _flavor(source: Job, backend: Backend, flavor: str | None) -> str | None:
        """The flavor asked for, else the run's own when it trained on this backend (else the backend's default)."""
        flavor = (flavor or "").strip() or None
        if flavor or source.backend != backend.name:
            return flavor
        from phi3space.jobs import spec

        try:
            return spec.load(source.run.config).compute.flavor
        except Phi3SpaceError:
            return None

    def _queue_task(self, task: Task, backend: Backend, owner: str, token: str | None, name: str) -> Job:
        """Queue ``task`` on ``backend``, its events (and files) in a new folder of its own."""
        job_id = new_job_id()
        run = self.data.run(owner, job_id)
        run.path.mkdir(parents=True, exist_ok=True)
        name = unique_name(name, {j.name for j in self.list(owner)})
        return self._queue(Job(id=job_id, owner=owner, name=name, run_dir=str(run.path), needs_token=bool(token),
                               kind=task.kind, args=task.to_json(), backend=backend.name, gpus=1), token)

    def submit_eval(self, job_id: str, owner: str, token: str | None = None, data: str | None = None, rows: int = 50,
                    expires_at: float | None = None, backend: str | None = None, flavor: str | None = None) -> Job:
        """Queue (or on Hugging Face Jobs start) ``python -m phi3space eval`` on a finished run's adapter: its eval
        rows, or up to ``rows`` rows of ``data``; the results go into the job's events and, when the adapter is on
        the Hub, its card. ``backend``: where it runs (default: where the run trained); ``flavor``: its hardware there.

        Raises:
            ConfigError: not a finished run of the owner's, rows out of range, (on a Space) data on the server's disk,
                or (on Jobs) an adapter or data only on this machine, an unknown flavor.
            AuthError: no sign-in where one is needed, or one that expires too soon.
        """
        source, state = self._source(job_id, owner, "evaluate")
        where = self._backend_for(EVAL, source, backend)
        if not isinstance(rows, int) or not 1 <= rows <= MAX_EVAL_ROWS:
            raise ConfigError([f"rows: {rows!r} (1 to {MAX_EVAL_ROWS})"], "e.g. 50 rows.")
        data = (data or "").strip() or None
        adapter = self._adapter(source, state, where)
        argv = (EVAL.name, adapter, "--rows", str(rows)) + (("--data", data) if data else ())
        task = Task(EVAL.name, argv, adapter, (("data", data),) if data else (),
                    push_to=state.adapter_repo if adapter == state.adapter_repo else None,  # its card gets the scores
                    flavor=self._flavor(source, where, flavor), timeout=ComputeConfig().timeout)
        task = self.pipeline.check_task(task, Caller(owner, token, expires_at), where,
                                        "evaluating here needs you to sign in with Hugging Face", self.queue_wait_s())
        return self._queue_task(task, where, owner, token, f"{source.name}-eval")

    def submit_export(self, job_id: str, owner: str, quant: str, push_to: str | None, token: str | None = None,
                      private: bool = True, system: str | None = None, temperature: float | None = None,
                      expires_at: float | None = None, backend: str | None = None, flavor: str | None = None) -> Job:
        """Queue (or on Hugging Face Jobs start) ``python -m phi3space export`` on a finished run's adapter: GGUF in
        ``quant`` and a Modelfile in the job's folder, pushed to ``push_to`` (a repo, or 'auto' for <you>/<run
        name>-GGUF; always pushed on a Space and on Jobs). ``backend`` and ``flavor`` as for submit_eval.

        Raises:
            ConfigError: not a finished run of the owner's, an unknown quant, (on Jobs) an adapter only on this
                machine. AuthError: no sign-in where needed, or no write access to the destination.
        """
        from phi3space.engine.gguf_file import QUANTS

        source, state = self._source(job_id, owner, "export")
        where = self._backend_for(EXPORT, source, backend)
        if quant not in QUANTS:
            raise ConfigError([f"quant: {quant!r} is not one of {', '.join(QUANTS)}"],
                              "k-quants (Q4_K_M, ...) need llama.cpp's llama-quantize, run on an f16 export.")
        name, caller = safe_name(source.name), Caller(owner, token, expires_at)
        pushes = bool(push_to) or self.space or where.needs_hub_destination
        adapter = self._adapter(source, state, where)
        argv = (EXPORT.name, adapter, "--quant", quant, "--name", name) + (() if private else ("--public",))
        argv += (("--system", system) if system else ()) + (("--temperature", f"{temperature:g}") if temperature is not None else ())
        # (not the run's own flavor: an export needs memory, not the GPU it trained on; the backend picks one)
        task = Task(EXPORT.name, argv, adapter, push_to=push_to or ("auto" if pushes else None), out=True,
                    flavor=(flavor or "").strip() or None, timeout=ComputeConfig().timeout)
        task = self.pipeline.check_task(task, caller, where, "pushing to the Hub needs you to sign in",
                                        self.queue_wait_s())
        if pushes:  # resolved ('auto') and proven writable now, before anything runs or is billed
            from dataclasses import replace

            from phi3space.hub.access import check_push_access
            from phi3space.hub.auth import acting_token

            repo = check_push_access(task.push_to, acting_token(token, self.space), f"{name}-GGUF", private)
            task = replace(task, argv=task.argv + ("--push-to", repo), push_to=repo)
        return self._queue_task(task, where, owner, token, f"{source.name}-gguf")
