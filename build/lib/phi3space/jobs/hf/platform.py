"""Training on Hugging Face Jobs: the same engine, in a container on rented hardware, billed to whoever runs it.

A run with ``compute.backend: hf-jobs`` is submitted with huggingface_hub's ``run_job``:

- image: ``PHI3SPACE_JOBS_IMAGE``, else the Space's own (``hf.co/spaces/$SPACE_ID``, so the job runs the very
  code the Space runs), else a public PyTorch CUDA image on which the job first installs a wheel of this code,
  uploaded with the run and mounted in the job as a read-only volume (code.py);
- command: ``python -m phi3space train env:PHI3SPACE_RUN_CONFIG``, or ``accelerate launch --multi_gpu
  --num_processes N -m phi3space train ...`` on a flavor with N GPUs, under a wrapper that reports its exit code;
- env: the resolved run config as YAML (it never holds a token: config validation refuses token-shaped values);
- secrets: the token, as ``HF_TOKEN`` (and an experiment tracker's key, trackers.py); never in env values, argv,
  labels or logs.

Inside the job each event is also printed as one line, ``@phi3space-event {json}`` (numbered by ``seq``; see
job_protocol.py). Here a ``Mirror`` follows the job's log stream and appends those events to the local run folder, so the CLI lines, the
page, /job_status and the card read a remote run exactly like a local one; other lines go to the run's log. The job
pushes the adapter, and its checkpoints to the ``checkpoints`` branch, itself: nothing depends on this machine's
disk. When the job ends, the platform's verdict (its stage and message) is the run's last word where the run's own
events lack one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from phi3space.errors import ConfigError, JobsError, Phi3SpaceError, SignInNeeded, register_secret
from phi3space.hub.access import whoami
from phi3space.hub.errors import jobs_refusal
from phi3space.jobs.backend import Task, Verdict
from phi3space.jobs.hf.code import (
    CODE_BRANCH,
    code_home,
    code_volumes,
    job_command,
    job_image,
    launch_command,
    ships_code,
    upload_code,
)
from phi3space.jobs.hf.flavors import Flavor, check_flavor
from phi3space.jobs.hf.protocol import CONFIG_VAR, RUN_DIR_ARG, RUN_VAR, TASK_VAR
from phi3space.jobs.hf.trackers import check_tracker, tracker_settings, where_it_logs
from phi3space.jobs.spec import JobConfig, timeout_seconds
from phi3space.refs import is_local_ref
from phi3space.run import EventWriter, RunState

LABEL_ORIGIN = "phi3space"  # which app (or the CLI) submitted the job: an app re-finds its own jobs by it
LABEL_RUN = "phi3space-run"  # the run's id in that app


# ---------------------------------------------------------------- the job's spec

def origin() -> str:
    """The ``phi3space`` label of jobs this process submits: the Space's ID, or 'cli'."""
    return safe_label(os.environ.get("SPACE_ID") or "cli")


def safe_label(text: str) -> str:
    """``text`` as a job's name or label value: at most 60 characters of letters, digits and ``._-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text)[:60] or "x"


@dataclass
class JobRef:
    """A Hugging Face job: its namespace and id (``str`` gives ``namespace/id``, the stored handle)."""

    namespace: str
    id: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.id}"

    @classmethod
    def parse(cls, text: str) -> JobRef:
        """The JobRef of a stored handle ``namespace/id``."""
        namespace, _, job_id = text.partition("/")
        return cls(namespace, job_id)


def check_on_hub(inputs, then: str) -> None:
    """The one check that a job's inputs, (setting, value) pairs, are Hub IDs: a Hugging Face job cannot read a path
    on this machine (``then``: how to name the upload afterwards, or what else to do).

    Raises:
        ConfigError: every input that is a path here.
    """
    local = [f"{key}: {value!r} is a path on this machine; a Hugging Face job cannot read it"
             for key, value in inputs if value and is_local_ref(value)]
    if local:
        raise ConfigError(local, "Upload it to the Hub and use its ID, e.g. `hf upload you/my-data ./qa.jsonl "
                                 f"--repo-type dataset`, {then}")


def check_job(cfg: JobConfig, token: str | None) -> Flavor:
    """What a job needs before it is started, except the destination repo: a token, Hub inputs, an image, a known
    flavor, a tracker that can work there (trackers.py).

    Raises:
        SignInNeeded, ConfigError: what to fix, before anything is billed.
    """
    if not token:
        raise SignInNeeded("training on Hugging Face Jobs needs your Hugging Face token",
                           "the job runs as you, billed to you.")
    check_on_hub((("data.dataset", cfg.data.dataset), ("model.base", cfg.model.base),
                  ("model.init_adapter", cfg.model.init_adapter or "")), "then data.dataset: you/my-data.")
    check_tracker(cfg)
    return check_flavor(cfg.compute.flavor, token)


def prepare(cfg: JobConfig, token: str | None) -> Flavor:
    """``check_job``, then push access (``output.push_to: auto`` is resolved here, so the job and this machine agree
    on the repo): everything checked before the CLI starts a job.

    Raises:
        AuthError, ConfigError: what to fix, before anything is billed.
    """
    flavor = check_job(cfg, token)
    from phi3space.config import auto_repo_name
    from phi3space.hub.access import check_push_access

    cfg.output.push_to = check_push_access(cfg.output.push_to, token, auto_repo_name(cfg))
    return flavor


def start(cfg: JobConfig, token: str, flavor: Flavor, run_id: str, writer: EventWriter, resume: bool = False,
          labels: dict | None = None) -> JobRef:
    """Start the training job (never retried: a second POST could start, and bill, a second job) and say so in the
    run's events. A refusal (no payment method, quota, bad flavor, no permission) becomes the run's last word.

    Raises:
        JobsError / AuthError: the platform refused the job (already written to the run's events).
    """
    job_cfg = _copy(cfg)
    job_cfg.output.dir = run_id  # the job puts its run folder under its own temp folder (see job_config)
    tracker_env, tracker_secrets = tracker_settings(cfg, whoami(token)["name"])
    said = where_it_logs(cfg, tracker_env, tracker_secrets)
    if said:
        writer.emit("log", message=said)
    return launch({CONFIG_VAR: job_cfg.to_yaml(), **tracker_env}, lambda code: job_command(flavor.gpus, resume, code),
                  token, flavor, cfg.compute.flavor, cfg.compute.timeout, cfg.output.push_to, run_id, writer, labels,
                  f"Check compute.flavor ({cfg.compute.flavor}) and compute.timeout ({cfg.compute.timeout})",
                  secrets=tracker_secrets)


def start_task(task: Task, token: str, flavor: Flavor, run_id: str, writer: EventWriter,
               labels: dict | None = None) -> JobRef:
    """``start`` for an eval or export job: ``python -m phi3space eval|export ...`` with its run folder inside the job
    (``--run-dir env:PHI3SPACE_RUN_ID``), its events echoed into the log as a training job's are."""
    argv = task.command(RUN_DIR_ARG)
    env = {RUN_VAR: run_id, TASK_VAR: task.to_json()}  # the task (no secret): a restart lists the job again from it
    return launch(env, lambda code: job_command(1, code=code, argv=argv), token, flavor, task.flavor,
                  task.timeout, lambda: code_home(task.push_to, token), run_id, writer, labels,
                  f"Check the flavor ({task.flavor})")


def launch(env: dict, command, token: str, flavor: Flavor, flavor_name: str, timeout: str,
           code_repo: str | Callable[[], str] | None, run_id: str, writer: EventWriter, labels: dict | None,
           check: str, secrets: dict | None = None) -> JobRef:
    """Run a job whose command is ``command(code)`` (code: this code's wheel, when the image lacks it, uploaded to
    ``code_repo``: a repo proven writable, or what finds one), the token as its secret (with ``secrets``: a
    tracker's key), never in its environment or command; say so in the run's events, or write the refusal there."""
    from huggingface_hub import HfApi, constants

    env = {**env, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if constants.ENDPOINT.rstrip("/") != "https://huggingface.co":
        env["HF_ENDPOINT"] = constants.ENDPOINT  # a private Hub deployment (or a test's stand-in)
    namespace = whoami(token)["name"]
    register_secret(token)
    code = None
    if ships_code():  # off a Space with no image of one's own: the job installs this code first
        try:
            home = code_repo() if callable(code_repo) else code_repo
            code = upload_code(home, token, log=lambda m: writer.emit("log", message=m))
        except Phi3SpaceError as error:
            Verdict("failed", error.kind, error.message, error.hint).write(writer, RunState())
            raise
    try:
        info = HfApi().run_job(image=job_image(), command=command(code), env=env, volumes=code_volumes(code) or None,
                               secrets={**(secrets or {}), "HF_TOKEN": token}, flavor=flavor_name, timeout=timeout_seconds(timeout),
                               labels={LABEL_ORIGIN: origin(), LABEL_RUN: safe_label(run_id), **(labels or {})},
                               name=safe_label(f"phi3space-{run_id}"), namespace=namespace, token=token)
    except Exception as exc:
        error = jobs_refusal(exc, namespace, f"{check}, and that the image exists ({job_image()})"
                             + (f" and this code's wheel ({code.repo_id}, branch {CODE_BRANCH})." if code else "."))
        if error is None:
            raise
        Verdict("failed", error.kind, error.message, error.hint).write(writer, RunState())
        raise error from None
    ref = JobRef(namespace, info.id)
    price = f", ${flavor.price_per_hour:.2f}/h" if flavor.price_per_hour is not None else ""
    writer.emit("log", message=f"submitted to Hugging Face Jobs: {info.url} ({flavor_name}{price}, timeout "
                               f"{timeout}); waiting for the hardware", job=str(ref), url=info.url)
    return ref


def _copy(cfg: JobConfig) -> JobConfig:
    from phi3space.jobs import spec

    return spec.from_dict(cfg.to_dict())


__all__ = ["JobRef", "JobsError", "job_image", "launch_command", "prepare", "start"]  # (the image and command: code.py)
