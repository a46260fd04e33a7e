"""What a job does: its kind. Every kind runs as ``python -m phi3space <kind> ...`` in its own process, writes its
run folder's events (phi3space.run), and is queued, started, stopped and followed the same way on every backend.

A new kind is one entry here (its command line, whether it trains on a config and can resume, whether it needs this
machine's disk) plus its CLI subcommand (``phi3space/cli/<name>.py``, registered from ``KINDS``) and, for a kind
that acts on a finished run, its request (phi3space.jobs.followups); the scheduler, the backends and the views need
nothing new. Where a kind may run is read from the backends' own descriptions (``Backend.here``), never from their
names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from phi3space.errors import ConfigError
from phi3space.jobs.backend import Backend, Task
from phi3space.jobs.spec import backend_classes
from phi3space.jobs.store import Job


@dataclass(frozen=True)
class Kind:
    """What a job does: its subcommand, whether it trains, and whether it must run on this machine."""

    name: str
    trains: bool  # runs a RunConfig (the run folder's config) and can continue from a checkpoint
    here_only: bool = False  # it reads and writes this machine's disk: only a backend that runs here takes it

    def runs_on(self, backend: type[Backend] | Backend) -> bool:
        """Whether a job of this kind can run on ``backend``."""
        return backend.here or not self.here_only

    @property
    def backends(self) -> tuple[str, ...]:
        """The names of the backends it can run on."""
        return tuple(name for name, cls in backend_classes().items() if self.runs_on(cls))

    def argv(self, job: Job, config_arg: str | None = None) -> list[str]:
        """The ``python -m phi3space`` arguments of ``job`` (``config_arg``: where its config is, if not its run
        folder's file)."""
        if self.trains:
            return [self.name, config_arg or str(job.run.config)] + (["--resume"] if job.resume else [])
        task = Task.from_json(job.args)
        return task.command(job.run_dir) if task else json.loads(job.args)  # its whole command line


TRAIN = Kind("train", trains=True)
MERGE = Kind("merge", trains=False, here_only=True)
EVAL = Kind("eval", trains=False)
EXPORT = Kind("export", trains=False)
PLAN = Kind("plan", trains=False, here_only=True)  # measures a run on this machine before it starts (jobs.plan)
KINDS = {k.name: k for k in (TRAIN, MERGE, EVAL, EXPORT, PLAN)}


def kind_of(job: Job) -> Kind:
    """The kind of ``job``."""
    return KINDS[job.kind]


def task_of(job: Job) -> Task | None:
    """What an eval or export job runs (None for training and merge)."""
    return None if kind_of(job).trains else Task.from_json(job.args)


def check_backend(kind: Kind, backend: Backend) -> None:
    """Raises ConfigError when a job of ``kind`` cannot run on ``backend``."""
    if not kind.runs_on(backend):
        raise ConfigError([f"a {kind.name} job cannot run on {backend.name}"], f"Run it on: {', '.join(kind.backends)}.")
