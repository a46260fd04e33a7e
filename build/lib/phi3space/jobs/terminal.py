"""``python -m phi3space eval|export ... --backend NAME`` from a terminal: the job as a ``Task`` for that backend,
which runs it and follows it here to its end (Hugging Face Jobs), or leaves it to the terminal's own process (this
machine). It names no backend: each one says what it does (``Backend.task_from_terminal``). The export's destination
check (``export_destination``) is the export jobs' too (phi3space.jobs.followups)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from phi3space.jobs.backend import Task
from phi3space.jobs.kinds import EXPORT
from phi3space.jobs.spec import ComputeConfig, backend_class
from phi3space.refs import is_local_ref
from phi3space.run import RunDir, RunState


def on_hub(source: str) -> str:
    """A run folder whose adapter was pushed: its Hub repo (a job elsewhere reads it there); else ``source``."""
    return (RunDir(source).state().adapter_repo or source) if is_local_ref(source) else source


def export_destination(name: str, private: bool, token: str | None) -> Callable[[Task], Task]:
    """The export's repo, resolved ('auto': <you>/<name>-GGUF) and proven writable before the job starts."""

    def prepare(task: Task) -> Task:
        from phi3space.hub.access import check_push_access

        repo = check_push_access(task.push_to, token, f"{name}-GGUF", private)
        return replace(task, argv=task.argv + ("--push-to", repo), push_to=repo)

    return prepare


def run_elsewhere(argv: list[str], backend: str, flavor: str | None, run_dir: str | None, token: str | None,
                  echo: Callable[[dict], None], inputs: tuple = (), push_to: str | None = None,
                  prepare: Callable[[Task], Task] | None = None) -> RunState | None:
    """Run ``python -m phi3space <argv>`` (subcommand, adapter, options) on ``backend`` and follow it to its end;
    None when that backend is this machine (the caller runs it itself)."""
    task = Task(argv[0], tuple(argv), argv[1], tuple(inputs), push_to=push_to, out=argv[0] == EXPORT.name,
                flavor=flavor, timeout=ComputeConfig().timeout)
    return backend_class(backend).task_from_terminal(task, run_dir, token, echo, prepare)
