"""What a Hugging Face job is given and what it prints back: the run config in an environment value
(``python -m phi3space train env:PHI3SPACE_RUN_CONFIG``), and each event as one numbered ``@phi3space-event {json}``
line of its output, which the submitter mirrors into the run's own events (remote.Mirror)."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from phi3space.errors import ConfigError
from phi3space.jobs import spec
from phi3space.jobs.spec import JobConfig
from phi3space.run import EVENT_TYPES

EVENT_PREFIX = "@phi3space-event "
EXIT_PREFIX = "@phi3space-exit "  # the job's command reports the trainer's exit code (an OOM kill leaves 137)
CONFIG_VAR = "PHI3SPACE_RUN_CONFIG"
CONFIG_ARG = f"env:{CONFIG_VAR}"  # what `python -m phi3space train` is given inside a job
RUN_VAR = "PHI3SPACE_RUN_ID"
RUN_DIR_ARG = f"env:{RUN_VAR}"  # the --run-dir (and --out) of `python -m phi3space eval|export` inside a job
TASK_VAR = "PHI3SPACE_TASK"  # an eval or export job's Task (plain data, no secret): how a restart lists it again


def inside_job(config_arg: str) -> bool:
    """``config_arg`` names an environment value (``env:...``): this process runs inside a Hugging Face job."""
    return config_arg.startswith("env:")


def job_config(config_arg: str, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """The run config a job was given in an environment value; its run folder goes under the container's temp
    folder (the same path in every process of a multi-GPU job)."""
    name = config_arg.removeprefix("env:")
    text = os.environ.get(name, "")
    if not text.strip():
        raise ConfigError([f"{config_arg}: the environment value {name} is empty"],
                          "Inside a Hugging Face job the run config comes in that value; elsewhere pass a YAML file.")
    cfg = spec.loads(text, overrides)
    cfg.output.dir = str(Path(tempfile.gettempdir()) / "phi3space" / Path(cfg.output.dir).name)
    return cfg


def job_run_dir(run_dir_arg: str) -> Path:
    """The run folder of an eval or export job inside a job (``--run-dir env:PHI3SPACE_RUN_ID``): under the
    container's temp folder, as for training."""
    name = os.environ.get(run_dir_arg.removeprefix("env:"), "").strip()
    if not name:
        raise ConfigError([f"--run-dir {run_dir_arg}: the environment value is empty"],
                          "Inside a Hugging Face job the run's id comes in that value; elsewhere pass a folder.")
    return Path(tempfile.gettempdir()) / "phi3space" / Path(name).name


def job_echo(human: Callable[[dict], None] | None = None) -> Callable[[dict], None]:
    """An event echo for inside a job: the readable line (for the job's page), then the event as one numbered
    ``@phi3space-event`` line that the submitter mirrors."""
    seq = itertools.count(1)

    def echo(event: dict) -> None:
        if human is not None:
            human(event)
        print(EVENT_PREFIX + json.dumps({"seq": next(seq), **event}, default=str, ensure_ascii=False,
                                        allow_nan=True), flush=True)

    return echo


def parse_event(line: str) -> dict | None:
    """The event a job's log line carries, or None for any other line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None
    ok = isinstance(event, dict) and event.get("type") in EVENT_TYPES and isinstance(event.get("seq"), int)
    return event if ok else None


def parse_exit(line: str) -> int | None:
    """The exit code a job's ``@phi3space-exit N`` line reports, or None for any other line."""
    if not line.startswith(EXIT_PREFIX):
        return None
    code = line[len(EXIT_PREFIX):].strip()
    return int(code) if code.isdigit() else None
