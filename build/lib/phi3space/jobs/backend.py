"""Where a job runs: one small interface, several implementations, and the registry that maps ``compute.backend``
to one of them (the way ``concurrent.futures`` executors or fsspec filesystems do).

The scheduler (phi3space.jobs.scheduler) owns the owner, the queue, the slots and the store, and holds one instance
of every backend; it never asks which one it holds. A backend starts a job, stops it, adopts it again after a
restart, follows it into its run folder (events.jsonl), and says when and how it ended (a ``Verdict``, from which
the scheduler gives the run its last word through the one writer, ``RunDir.finish``).

A new backend is one module with a ``Backend`` subclass that describes itself (``label``, ``billed``, ``options``,
``limits``, ``needs_hub_destination``, ``here``), plus one line in ``BACKENDS`` (phi3space.jobs.spec, where
``compute.backend``'s choices come from). The page, the CLI and the kinds read that description; none names a
backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

from phi3space.config import RunConfig
from phi3space.datadir import DataDir
from phi3space.jobs.spec import backend_class, backend_classes
from phi3space.jobs.store import Job, JobStore
from phi3space.run import EventWriter, RunState


@dataclass(frozen=True)
class Verdict:
    """How a job ended, as its backend saw it (an exit code, the platform's stage), when its own events lack the
    truth: a final status and, for a failure, what happened and what to do."""

    status: str  # completed | failed | cancelled
    kind: str | None = None
    message: str = ""
    hint: str = ""
    adapter: str | None = None  # where the adapter is (a folder, or the Hub repo the job pushed)

    def write(self, writer: EventWriter, state: RunState) -> None:
        """Give the run this last word (its events say ``state``)."""
        error = {"kind": self.kind, "message": self.message, "hint": self.hint} if self.kind else None
        writer.finish(self.status, error, step=state.step, adapter=self.adapter)


@dataclass(frozen=True)
class Task:
    """A job of a kind that does not train on a config (eval, export), as a backend checks and runs it: its
    ``python -m phi3space`` command line (subcommand first, without its run folder), the adapter it reads (a run
    folder of this server, or a Hub repo), the caller's other inputs (a file or a Hub ID), the repo it pushes to, and
    on a rented machine its flavor and time limit."""

    kind: str
    argv: tuple[str, ...]
    adapter: str = ""
    inputs: tuple[tuple[str, str], ...] = ()  # (the setting, e.g. "data", its value)
    push_to: str | None = None
    out: bool = False  # it writes files (``--out``) into its run folder too
    flavor: str | None = None
    timeout: str | None = None

    def to_json(self) -> str:
        """The task as a job's ``args`` (plain data)."""
        return json.dumps({"task": asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Task | None:
        """The task a job's ``args`` hold; None for a plain command line (a merge, or a job of an older version)."""
        found = json.loads(text or "null")
        if not isinstance(found, dict) or "task" not in found:
            return None
        fields = found["task"]
        return cls(**{**fields, "argv": tuple(fields["argv"]), "inputs": tuple(map(tuple, fields["inputs"]))})

    def command(self, run_dir: str) -> list[str]:
        """Its ``python -m phi3space`` arguments with its events (and files) in ``run_dir``."""
        return [*self.argv, "--run-dir", run_dir] + (["--out", run_dir] if self.out else [])


@dataclass
class Host:
    """What a backend may use of the scheduler: the store, the data folder, whether this is a Space, and how to say
    that a job ended (the scheduler writes the verdict, marks the job done and copies it to the bucket)."""

    store: JobStore
    data: DataDir
    space: bool
    ended: Callable[[Job, Verdict | None, int | None], None]  # (job, verdict, exit code)


class Backend:
    """Where jobs run. Subclasses describe themselves (the class variables below) and implement start, stop and
    recover."""

    name: ClassVar[str]
    label: ClassVar[str]  # how the page names it ("This machine")
    here: ClassVar[bool] = False  # runs on this machine, with its disk (a merge runs only there)
    billed: ClassVar[bool] = False  # it costs its owner money (the page says so beside its label)
    options: ClassVar[tuple[str, ...]] = ()  # the compute settings it reads (flavor, timeout, gpus)
    limits: ClassVar[str] = ""  # what bounds a job there, in words (its time limit, its GPUs)
    needs_hub_destination: ClassVar[bool] = False  # its disk is gone when the job ends: the adapter must be pushed
    uses_slots: ClassVar[bool] = False  # waits in the queue for this machine's GPU slots; else starts at submit
    survives_restart: ClassVar[bool] = False  # the platform keeps the job and this backend finds it again after a
    # restart (else, on a Space, the job is recorded on its repo's card: phi3space.hub.records)

    def __init__(self, host: Host, **options):
        self.host = host

    @classmethod
    def estimate(cls, cfg: RunConfig, rows: int | None, lengths: list[int] | None):
        """What a training run costs there and how long it may take, for the plan before Start (an object with
        ``flavor``, ``warnings()`` and ``markdown()``); None where nothing is billed or bounded."""
        return None

    def check(self, cfg: RunConfig, token: str | None, slots: int) -> int:
        """What this backend checks at submit, before anything is created or billed; returns the GPUs (slots) the
        job takes here. May resolve the config in place (absolute paths, the destination repo).

        Raises:
            Phi3SpaceError: what to fix.
        """
        return 1

    def longest_s(self, cfg: RunConfig, queue_wait_s: float) -> float | None:
        """At most how long a job submitted now can take until its last push (for the sign-in lifetime check); None
        when unknown."""
        return None

    def check_task(self, task: Task, token: str | None) -> Task:
        """``check`` for an eval or export job, before anything is created or billed; returns it resolved (its
        flavor).

        Raises:
            Phi3SpaceError: what to fix.
        """
        return task

    def task_longest_s(self, task: Task, queue_wait_s: float) -> float | None:
        """``longest_s`` for an eval or export job."""
        return None

    def start(self, job: Job, token: str | None, slot: int | None) -> Job:
        """Start ``job`` (the store says it is queued); returns it as stored now. A refusal that ends the job is
        raised after the job was given its last word."""
        raise NotImplementedError

    def stop(self, job: Job) -> None:
        """Ask the running ``job`` to stop: it saves what it can and ends as cancelled."""
        raise NotImplementedError

    def recover(self, job: Job) -> None:
        """After a restart: follow a job the store says is running again, or give it its last word."""
        raise NotImplementedError

    def poll(self) -> None:
        """Called by the scheduler's loop: notice jobs that ended (and call ``host.ended``)."""

    def checkpoint_exists(self, job: Job, token: str | None) -> bool:
        """A failed or stopped job left a checkpoint this backend can continue from."""
        return job.run.state().can_resume

    def seen(self, owner: str, token: str) -> None:
        """A visitor is here with a fresh token: jobs that wait for it can be followed again."""

    def shutdown(self) -> None:
        """Stop following (and, for jobs this process started and nobody else can follow, end them)."""

    @classmethod
    def train_from_terminal(cls, cfg: RunConfig, resume: bool, token: str | None,
                            echo: Callable[[dict], None]) -> str | None:
        """``python -m phi3space train`` with this backend: run the job and follow it to its end, returning the line
        that says where its result is; None when it trains in the terminal's own process (this machine).

        Raises:
            Phi3SpaceError: the job could not start, or failed (its reason and a hint). Cancelled: Ctrl-C.
        """
        return None

    @classmethod
    def task_from_terminal(cls, task: Task, run_dir: str, token: str | None, echo: Callable[[dict], None],
                           prepare: Callable[[Task], Task] | None = None) -> RunState | None:
        """``python -m phi3space eval|export --backend`` this one: run ``task`` and follow it to its end, its events
        in ``run_dir``; returns the run's state, or None when it runs in the terminal's own process (this machine).
        ``prepare``: what the caller checks after the backend's checks, before anything is started (the export's
        destination repo).

        Raises:
            Phi3SpaceError: the job could not start, or failed. Cancelled: Ctrl-C.
        """
        return None


__all__ = ["Backend", "Host", "Task", "Verdict", "backend_class", "backend_classes"]  # (the registry: jobs.spec)
