"""``python -m phi3space train`` with ``compute.backend: hf-jobs`` from a terminal: submit, print the usual progress
lines, and end like a local run (exit code, message and hint)."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from phi3space import config
from phi3space.config import RunConfig
from phi3space.errors import Cancelled, ConfigError, Phi3SpaceError
from phi3space.jobs.hf.follow import cancel, follow_to_end
from phi3space.jobs.hf.platform import JobRef, prepare, start
from phi3space.run import RunDir


def submitted_job(run: RunDir) -> JobRef | None:
    """The job this run folder was last submitted as (from its events), if any."""
    events, _ = run.read_events()
    refs = [e["job"] for e in events if e.get("type") == "log" and isinstance(e.get("job"), str) and "/" in e["job"]]
    return JobRef.parse(refs[-1]) if refs else None


def train_cli(cfg: RunConfig, resume: bool, token: str | None, echo: Callable[[dict], None] | None = None) -> Path:
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
        if not resume and (run.holds_run() or earlier.started is not None):  # (one that never started may go again)
            raise ConfigError([f"output.dir: {run.path} already holds a run"],
                              "Add --resume to continue it, or choose another folder with --set output.dir=runs/NEW.")
        if resume and cfg.output.push_to == "auto" and run.config.exists():
            cfg.output.push_to = config.load(run.config).output.push_to  # the repo whose checkpoints branch it continues
        flavor = prepare(cfg, token)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        ref = start(cfg, token, flavor, uuid.uuid4().hex[:12], writer, resume=resume)

    def interrupt() -> None:
        print(f"stopping: cancelling job {ref}; waiting for it to end (Ctrl-C again to stop waiting)", flush=True)
        try:
            cancel(ref, token)
        except Phi3SpaceError as exc:  # it may have ended already: following tells
            print(f"warning: {exc.message}", flush=True)

    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        follow_to_end(ref, token, run, writer, cfg, on_interrupt=interrupt)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcome(run)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def outcome(run: RunDir) -> Path:
    """The run folder when the remote run completed and pushed its adapter; else the run's own error."""
    state = run.state()
    if state.status == "completed" and state.adapter_repo:
        return run.path
    if state.status == "cancelled":
        raise Cancelled(f"stopped at step {state.step}" + (f"; the last checkpoint is on {state.checkpoint_url}"
                                                            if state.checkpoint_url else ""),
                        f"Continue with: python -m phi3space train {run.config} --resume")
    error = state.error or {}
    failure = Phi3SpaceError(error.get("message") or "the Hugging Face job ended without finishing its run",
                             error.get("hint") or "")
    failure.kind = error.get("kind") or "jobs"
    raise failure

