"""What the subcommands share: their progress lines, the events file of ``--run-dir``, Stop as a
signal, the ``--set`` and ``--backend`` arguments, and the one place where an error becomes a message, a hint and
an exit status."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from phi3space.errors import Cancelled, ConfigError, Phi3SpaceError
from phi3space.jobs.hf import protocol as job_protocol
from phi3space.jobs.spec import BACKENDS, DEFAULT_BACKEND
from phi3space.report import format_event
from phi3space.run import EventWriter, RunDir

USER_ERROR = 2  # the exit status of every mistake a user can make (a message and a hint, no traceback)
STOPPED = 130  # a stopped or interrupted command


def print_event(e: dict) -> None:
    """Print an event's readable line (phi3space.report), if it has one."""
    line = format_event(e)
    if line:
        print(line, flush=True)


def stoppable(what: str) -> None:
    """Stop in the web app (SIGTERM) ends the command cleanly, with the job's last word: 'the <what> was stopped'."""

    def stop(signum, frame):
        raise Cancelled(f"the {what} was stopped")

    signal.signal(signal.SIGTERM, stop)


def run_dir(args) -> RunDir:
    """--run-dir, a folder (made if missing) for the command's events.

    Raises:
        ConfigError: it names a file, or a folder that cannot be made.
    """
    run = RunDir(args.run_dir)
    hint = "Give a folder for the events, e.g. --run-dir runs/my-eval (made if missing)."
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError([f"--run-dir: {run.path} is a file, not a folder"], hint)
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError([f"--run-dir: cannot make {run.path} ({exc.strerror})"], hint) from None
    return run


def writer(args) -> EventWriter:
    """The command's events: printed, and written to --run-dir's events file when given (in a Hugging Face job,
    ``--run-dir env:NAME``: its folder there, the events echoed to the job's log to be mirrored)."""
    if args.run_dir and job_protocol.inside_job(args.run_dir):
        return RunDir(job_protocol.job_run_dir(args.run_dir)).writer(echo=job_protocol.job_echo(print_event))
    return run_dir(args).writer(echo=print_event) if args.run_dir else EventWriter(None, echo=print_event)


def set_argument(p, help: str = "override a setting, e.g. lora.r=8 (repeatable)") -> None:
    """``--set KEY=VALUE`` (repeatable): a setting of the run config, over what the file says."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=help)


def run_dir_argument(p) -> None:
    """``--run-dir``: where a job's command also writes its events."""
    p.add_argument("--run-dir", help="also write progress events to this folder's events file (the web app's jobs)")


def backend_arguments(p) -> None:
    """``--backend`` and ``--flavor`` of a job that may run elsewhere (eval, export)."""
    p.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND,
                   help="where it runs, as compute.backend; elsewhere than here it is followed to its end (the adapter "
                        "and data must be on the Hub, an export is pushed: --push-to, default auto)")
    p.add_argument("--flavor", help="the hardware there (Hugging Face Jobs: default the smallest GPU flavor)")


def run(command: Callable[[object], int], args) -> int:
    """``command(args)``'s exit status; what a user can cause becomes a message and a hint on stderr and status 2
    (never a traceback), a stop or Ctrl-C status 130."""
    try:
        return command(args)
    except Cancelled as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return STOPPED
    except Phi3SpaceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return STOPPED
