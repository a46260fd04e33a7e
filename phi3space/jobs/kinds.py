"""What a job does: its kind. Every kind runs as ``python -m phi3space <kind> ...`` in its own process, writes its
run folder's events (phi3space.run), and is queued, started, stopped and followed the same way on every backend.

A new kind is one entry here (its command line, whether it trains on a config and can resume) plus its CLI
subcommand; the scheduler, the backends and the views need nothing new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from phi3space.errors import ConfigError
from phi3space.jobs.backend import Task
from phi3space.jobs.store import Job


@dataclass(frozen=True)
class Kind:
    name: str
    trains: bool  # runs a RunConfig (the run folder's config) and can continue from a checkpoint
    backends: tuple[str, ...]  # where it can run

    def argv(self, job: Job, config_arg: str | None = None) -> list[str]:
        """The ``python -m phi3space`` arguments of ``job`` (``config_arg``: where its config is, if not its run
        folder's file)."""
        if self.trains:
            return [self.name, config_arg or str(job.run.config)] + (["--resume"] if job.resume else [])
        task = Task.from_json(job.args)
        return task.command(job.run_dir) if task else json.loads(job.args)  # its whole command line


TRAIN = Kind("train", trains=True, backends=("local", "hf-jobs"))
MERGE = Kind("merge", trains=False, backends=("local",))
EVAL = Kind("eval", trains=False, backends=("local", "hf-jobs"))
EXPORT = Kind("export", trains=False, backends=("local", "hf-jobs"))
KINDS = {k.name: k for k in (TRAIN, MERGE, EVAL, EXPORT)}


def kind_of(job: Job) -> Kind:
    return KINDS[job.kind]


def task_of(job: Job) -> Task | None:
    """What an eval or export job runs (None for training and merge)."""
    return None if kind_of(job).trains else Task.from_json(job.args)


def check_backend(kind: Kind, backend: str) -> None:
    if backend not in kind.backends:
        raise ConfigError([f"a {kind.name} job cannot run on {backend}"], f"Run it on: {', '.join(kind.backends)}.")
