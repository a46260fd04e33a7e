"""Eval and export jobs on Hugging Face Jobs: what is checked before one is started (the inputs are Hub IDs, the
export pushes, a known flavor) and how long one can take. The job itself is the same wrapper as training's around
``python -m phi3space eval|export ...`` (platform.start_task), followed and mirrored like training (follow.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from phi3space.errors import ConfigError, Phi3SpaceError, SignInNeeded
from phi3space.jobs.backend import Task
from phi3space.jobs.hf.flavors import Flavor, check_flavor, flavor_with_memory, smallest_gpu_flavor
from phi3space.jobs.hf.platform import check_on_hub
from phi3space.jobs.kinds import EXPORT
from phi3space.jobs.spec import timeout_seconds
from phi3space.refs import is_local_ref
from phi3space.run import RunDir


def check_task(task: Task, token: str | None) -> tuple[Task, Flavor]:
    """A token, inputs the job can read (Hub IDs, never this machine's paths), a destination for an export, and a
    known flavor (default: for an export the cheapest machine with the memory it needs, else the smallest GPU
    flavor); returns the task with its flavor and that flavor.

    Raises:
        SignInNeeded, ConfigError: what to fix, before anything is billed.
    """
    if not token:
        raise SignInNeeded(f"an {task.kind} job on Hugging Face Jobs needs your Hugging Face sign-in",
                           "the job runs as you, billed to you.")
    if is_local_ref(task.adapter):
        raise ConfigError([f"the adapter is only on this machine ({task.adapter}); a Hugging Face job cannot read it"],
                          "Push the run's adapter to the Hub first (Push, or python -m phi3space push RUN), then run "
                          "this on Hugging Face Jobs; or run it on this machine.")
    check_on_hub(task.inputs, "then you/my-data; or run it on this machine.")
    if task.kind == EXPORT.name and not task.push_to:
        raise ConfigError(["an export on Hugging Face Jobs must push its files (the job's disk is gone when it ends)"],
                          "Give a repo to push to, or auto for <you>/<run name>-GGUF.")
    if task.flavor:
        flavor = check_flavor(task.flavor, token)
    elif task.kind == EXPORT.name:  # a machine with the memory the export needs (bench/export_memory.py)
        from phi3space.engine.estimates import export_memory_bytes

        flavor = flavor_with_memory(export_memory_bytes(adapter_base(task.adapter, token)), token)
    else:
        flavor = smallest_gpu_flavor(token)
    return dataclasses.replace(task, flavor=flavor.name), flavor


def adapter_base(repo: str, token: str | None) -> str:
    """The base model of an adapter repo on the Hub, from its adapter config ('' when it cannot be read: then sizes
    are Phi-3-mini's)."""
    from huggingface_hub import hf_hub_download

    try:
        return RunDir(Path(hf_hub_download(repo, RunDir.ADAPTER_CONFIG, token=token)).parent).adapter_base()
    except (OSError, ValueError, Phi3SpaceError):
        return ""


def longest_s(task: Task, scheduling_s: float) -> float:
    """At most how long an eval or export job takes there: ``scheduling_s`` plus its timeout."""
    return scheduling_s + (timeout_seconds(task.timeout) or 0)
