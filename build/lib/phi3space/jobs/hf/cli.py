"""``python -m phi3space train`` with ``compute.backend: hf-jobs`` (and ``eval``/``export`` with ``--backend hf-jobs``)
from a terminal: submit, print the usual progress lines, and end like a local run (exit code, message and hint)."""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from phi3space import config
from phi3space.datadir import new_job_id
from phi3space.engine.outdir import check_folder
from phi3space.errors import Cancelled, ConfigError, JobsError, Phi3SpaceError
from phi3space.jobs.backend import Task
from phi3space.jobs.hf.follow import cancel, follow_to_end
from phi3space.jobs.hf.platform import JobRef, prepare, start, start_task
from phi3space.jobs.hf.tasks import check_task
from phi3space.jobs.kinds import EVAL, EXPORT
from phi3space.jobs.spec import JobConfig
from phi3space.run import RunDir


def submitted_job(run: RunDir) -> JobRef | None:
    """The job this run folder was last submitted as (from its events), if any."""
    events, _ = run.read_events()
    refs = [e["job"] for e in events if e.get("type") == "log" and isinstance(e.get("job"), str) and "/" in e["job"]]
    return JobRef.parse(refs[-1]) if refs else None


def train_cli(cfg: JobConfig, resume: bool, token: str | None, echo: Callable[[dict], None] | None = None) -> Path:
    """``python -m phi3space train`` with compute.backend hf-jobs: submit, print the usual progress lines, and end
    like a local run. A run folder whose job still runs is followed again instead of submitted twice.

    Raises:
        Phi3SpaceError: the job could not start, or the run failed (its reason and a hint).
        Cancelled: stopped with Ctrl-C (the job is cancelled).
    """
    run = RunDir(cfg.output.dir)
    earlier, ref = run.state(), submitted_job(run)
    writer = run.writer(echo=echo)
    if ref is not None and not earlier.final:
        if echo:
            echo({"type": "log", "message": f"following job {ref} again"})
    else:
        check_folder(run, resume)  # someone's folder is never written into
        if not resume and (run.holds_run() or earlier.started is not None):  # (one that never started may go again)
            raise ConfigError([f"output.dir: {run.path} already holds a run"],
                              "Add --resume to continue it, or choose another folder with --set output.dir=runs/NEW.")
        if resume and cfg.output.push_to == "auto" and run.config.exists():
            cfg.output.push_to = config.load(run.config).output.push_to  # the repo whose checkpoints branch it continues
        flavor = prepare(cfg, token)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        ref = start(cfg, token, flavor, new_job_id(), writer, resume=resume)
    follow(ref, token, run, writer, cfg)
    return outcome(run)


def task_cli(task: Task, run_dir: Path | str | None, token: str | None, echo: Callable[[dict], None] | None = None,
             prepare: Callable[[Task], Task] | None = None) -> RunDir:
    """``python -m phi3space eval|export ... --backend hf-jobs``: check, start the job, print the usual lines from
    its mirrored events into ``run_dir``, and end like a local eval or export.

    Raises:
        Phi3SpaceError: what to fix (before anything is billed), the platform's refusal, or the job's failure.
        Cancelled: stopped with Ctrl-C (the job is cancelled).
    """
    run = RunDir(run_dir or tempfile.mkdtemp(prefix=f"phi3space-{task.kind}-"))
    if run.holds_run() or run.state().started is not None:
        raise ConfigError([f"--run-dir: {run.path} already holds a run"], "Choose another folder.")
    task, flavor = check_task(task, token)
    task = prepare(task) if prepare else task
    run.path.mkdir(parents=True, exist_ok=True)
    writer = run.writer(echo=echo)
    ref = start_task(task, token, flavor, new_job_id(), writer)
    follow(ref, token, run, writer, None, trains=False, timeout=task.timeout)
    outcome(run, trains=False)
    state = run.state()
    results = state.evaluation if task.kind == EVAL.name else state.exported
    if not results:  # it completed while its log could not be read: what it found is only on the job's page
        where = f"; its files were pushed to {task.push_to}" if task.push_to and task.kind == EXPORT.name else ""
        raise JobsError(f"the {task.kind} job completed, but its results could not be read here: its log could not "
                        f"be read{where}", f"See the job's logs on Hugging Face (job {ref}).")
    return run


def follow(ref: JobRef, token: str | None, run: RunDir, writer, cfg: JobConfig | None, trains: bool = True,
           timeout: str | None = None) -> None:
    """Follow the job to its end from a terminal: Ctrl-C (or SIGTERM) cancels it, and following goes on until it
    has ended (``timeout``: an eval or export job's time limit)."""

    def interrupt() -> None:
        print(f"stopping: cancelling job {ref}; waiting for it to end (Ctrl-C again to stop waiting)", flush=True)
        try:
            cancel(ref, token)
        except Phi3SpaceError as exc:  # it may have ended already: following tells
            print(f"warning: {exc.message}", flush=True)

    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        follow_to_end(ref, token, run, writer, cfg, on_interrupt=interrupt, trains=trains, timeout=timeout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def outcome(run: RunDir, trains: bool = True) -> Path:
    """The run folder when the remote run completed (and, training, pushed its adapter); else the run's own error."""
    state = run.state()
    if state.status == "completed" and (state.adapter_repo or not trains):
        return run.path
    if state.status == "cancelled":
        if not trains:
            raise Cancelled(f"stopped at step {state.step}")
        raise Cancelled(f"stopped at step {state.step}" + (f"; the last checkpoint is on {state.checkpoint_url}"
                                                            if state.checkpoint_url else ""),
                        f"Continue with: python -m phi3space train {run.config} --resume")
    error = state.error or {}
    failure = Phi3SpaceError(error.get("message") or "the Hugging Face job ended without finishing its run",
                             error.get("hint") or "")
    failure.kind = error.get("kind") or "jobs"
    raise failure

