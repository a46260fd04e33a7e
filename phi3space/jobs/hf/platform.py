"""Training on Hugging Face Jobs: the same engine, in a container on rented hardware, billed to whoever runs it.

A run with ``compute.backend: hf-jobs`` is submitted with huggingface_hub's ``run_job``:

- image: the Space's own (``hf.co/spaces/$SPACE_ID``, so the job runs the very code the Space runs), or
  ``PHI3SPACE_JOBS_IMAGE`` (refused when neither is there);
- command: ``python -m phi3space train env:PHI3SPACE_RUN_CONFIG``, or ``accelerate launch --multi_gpu
  --num_processes N -m phi3space train ...`` on a flavor with N GPUs;
- env: the resolved run config as YAML (it never holds a token: config validation refuses token-shaped values);
- secrets: the token, as ``HF_TOKEN``; never in env values, argv, labels or logs.

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
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

from phi3space.config import RunConfig, timeout_seconds
from phi3space.errors import AuthError, ConfigError, JobsError, SignInNeeded, register_secret, scrub
from phi3space.hub.access import whoami
from phi3space.hub.errors import http_status, hub_error, jobs_refusal
from phi3space.hub.space import on_space
from phi3space.jobs.backend import Verdict
from phi3space.jobs.hf.flavors import Flavor, check_flavor
from phi3space.jobs.hf.protocol import CONFIG_ARG, CONFIG_VAR, parse_event
from phi3space.refs import is_local_ref
from phi3space.run import EventWriter, RunDir, RunState

IMAGE_VAR = "PHI3SPACE_JOBS_IMAGE"
LABEL_ORIGIN = "phi3space"  # which app (or the CLI) submitted the job: an app re-finds its own jobs by it
LABEL_RUN = "phi3space-run"  # the run's id in that app
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")


# ---------------------------------------------------------------- the job's spec

def job_image() -> str:
    """PHI3SPACE_JOBS_IMAGE, else (on a Space) the Space's own image.

    Raises:
        ConfigError: neither is there.
    """
    image = os.environ.get(IMAGE_VAR, "").strip()
    if image:
        return image
    if on_space():
        return f"hf.co/spaces/{os.environ['SPACE_ID']}"
    raise ConfigError(["compute.backend: hf-jobs needs an image that has phi3space installed, and none is set"],
                      f"Set {IMAGE_VAR}=hf.co/spaces/OWNER/NAME (a Space running this version of phi3space: its "
                      "image is reused) or to a Docker image with this project installed at the same commit.")


def launch_command(gpus: int, resume: bool = False, config_arg: str = CONFIG_ARG) -> list[str]:
    """The job's command: one process, or one per GPU under ``accelerate launch`` (data-parallel)."""
    train = ["-m", "phi3space", "train", config_arg] + (["--resume"] if resume else [])
    if gpus > 1:
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(gpus), "--num_machines", "1", *train]
    return ["python", "-u", *train]


def origin() -> str:
    """The ``phi3space`` label of jobs this process submits: the Space's ID, or 'cli'."""
    return safe_label(os.environ.get("SPACE_ID") or "cli")


def safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text)[:60] or "x"


@dataclass
class JobRef:
    namespace: str
    id: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.id}"

    @classmethod
    def parse(cls, text: str) -> JobRef:
        namespace, _, job_id = text.partition("/")
        return cls(namespace, job_id)


def check_job(cfg: RunConfig, token: str | None) -> Flavor:
    """What a job needs before it is started, except the destination repo: a token, Hub inputs, an image, a known
    flavor.

    Raises:
        SignInNeeded, ConfigError: what to fix, before anything is billed.
    """
    if not token:
        raise SignInNeeded("training on Hugging Face Jobs needs your Hugging Face token",
                           "the job runs as you, billed to you.")
    local = [f"{key}: {value!r} is a path on this machine; a Hugging Face job cannot read it"
             for key, value in (("data.dataset", cfg.data.dataset), ("model.base", cfg.model.base),
                                ("model.init_adapter", cfg.model.init_adapter or "")) if value and is_local_ref(value)]
    if local:
        raise ConfigError(local, "Upload it to the Hub and use its ID, e.g. `hf upload you/my-data ./qa.jsonl "
                                 "--repo-type dataset`, then data.dataset: you/my-data.")
    job_image()
    return check_flavor(cfg.compute.flavor, token)


def prepare(cfg: RunConfig, token: str | None) -> Flavor:
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


def start(cfg: RunConfig, token: str, flavor: Flavor, run_id: str, writer: EventWriter, resume: bool = False,
          labels: dict | None = None) -> JobRef:
    """Start the job (never retried: a second POST could start, and bill, a second job) and say so in the run's
    events. A refusal (no payment method, quota, bad flavor, no permission) becomes the run's last word.

    Raises:
        JobsError / AuthError: the platform refused the job (already written to the run's events).
    """
    from huggingface_hub import HfApi, constants

    job_cfg = _copy(cfg)
    job_cfg.output.dir = run_id  # the job puts its run folder under its own temp folder (see job_config)
    env = {CONFIG_VAR: job_cfg.to_yaml(), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if constants.ENDPOINT.rstrip("/") != "https://huggingface.co":
        env["HF_ENDPOINT"] = constants.ENDPOINT  # a private Hub deployment (or a test's stand-in)
    namespace = whoami(token)["name"]
    register_secret(token)
    try:
        info = HfApi().run_job(image=job_image(), command=launch_command(flavor.gpus, resume), env=env,
                               secrets={"HF_TOKEN": token}, flavor=cfg.compute.flavor,
                               timeout=timeout_seconds(cfg.compute.timeout),
                               labels={LABEL_ORIGIN: origin(), LABEL_RUN: safe_label(run_id), **(labels or {})},
                               name=safe_label(f"phi3space-{run_id}"), namespace=namespace, token=token)
    except Exception as exc:
        error = jobs_refusal(exc, namespace, f"Check compute.flavor ({cfg.compute.flavor}) and compute.timeout "
                             f"({cfg.compute.timeout}), and that the image exists ({job_image()}).")
        if error is None:
            raise
        Verdict("failed", error.kind, error.message, error.hint).write(writer, RunState())
        raise error from None
    ref = JobRef(namespace, info.id)
    price = f", ${flavor.price_per_hour:.2f}/h" if flavor.price_per_hour is not None else ""
    writer.emit("log", message=f"submitted to Hugging Face Jobs: {info.url} ({cfg.compute.flavor}{price}, timeout "
                               f"{cfg.compute.timeout}); waiting for the hardware", job=str(ref), url=info.url)
    return ref


def _copy(cfg: RunConfig) -> RunConfig:
    from phi3space import config

    return config.from_dict(cfg.to_dict())


# ---------------------------------------------------------------- following a job

# The newest event mirrored per events file and job in this process: two followers of one job (a restarted runner
# beside the thread of the old one) never write an event twice. A file replaced since (a wiped disk) starts afresh.
_mirrored: dict[tuple[str, int | None, str], int] = {}
_mirrored_lock = threading.Lock()


class Mirror:
    """Follows one job's log stream into a local run folder: events to its events, other lines to its log."""

    def __init__(self, run: RunDir, ref: JobRef, writer: EventWriter | None = None):
        self.run, self.ref = run, ref
        self.writer = writer or run.writer()
        try:
            inode = run.events.stat().st_ino
        except OSError:
            inode = None
        self.key = (str(run.path.resolve()), inode, ref.id)
        with _mirrored_lock:
            if self.key not in _mirrored:
                events, _ = run.read_events()
                _mirrored[self.key] = max((e["seq"] for e in events if e.get("job") == ref.id
                                           and isinstance(e.get("seq"), int)), default=0)

    def follow(self, token: str | None, stop: threading.Event | None = None) -> None:
        """Mirror the job's output until its log stream ends (the job ended) or ``stop`` is set. The stream
        replays from the job's first line, so the log is rewritten and events already mirrored are skipped."""
        from huggingface_hub import HfApi

        lines = HfApi().fetch_job_logs(job_id=self.ref.id, namespace=self.ref.namespace, follow=True, token=token)
        with self.run.log.open("wb") as log:
            for line in lines:
                if stop is not None and stop.is_set():
                    return
                event = parse_event(line)
                if event is None:
                    log.write((scrub(line) + "\n").encode("utf-8", "replace"))
                    log.flush()
                else:
                    self._append(event)

    def _append(self, event: dict) -> None:
        with _mirrored_lock:
            if event["seq"] <= _mirrored[self.key]:
                return
            fields = {k: v for k, v in event.items() if k != "type"}
            fields["job"] = self.ref.id
            if event["type"] == "run_finished":  # the job's folder is gone with it: its adapter is the pushed one
                pushed = self.run.state().adapter_repo
                fields["adapter"] = pushed if pushed and fields.get("status") != "failed" else None
            self.writer.emit(event["type"], **fields)
            _mirrored[self.key] = event["seq"]


def inspect(ref: JobRef, token: str | None):
    from huggingface_hub import HfApi

    from phi3space.hub.errors import call

    return call(lambda: HfApi().inspect_job(job_id=ref.id, namespace=ref.namespace, token=token),
                f"read the state of job {ref}", JobsError)


def cancel(ref: JobRef, token: str | None) -> None:
    from huggingface_hub import HfApi

    from phi3space.hub.errors import call

    call(lambda: HfApi().cancel_job(job_id=ref.id, namespace=ref.namespace, token=token), f"cancel job {ref}", JobsError)


def last_word(info, state: RunState, cfg: RunConfig | None = None) -> Verdict | None:
    """How the job ended once the platform says so (``info``) and its events say ``state``: None when they already
    tell the truth. A run is completed only when the job completed and the adapter was pushed."""
    stage, said = str(info.status.stage), scrub(info.status.message or "")
    adapter = state.adapter_repo if state.status != "failed" else None
    if stage == "COMPLETED":
        if state.status in ("cancelled", "failed") or (state.status == "completed" and state.adapter_repo):
            return None
        what = "completed without pushing an adapter" if state.status == "completed" else "ended without finishing its run"
        return Verdict("failed", "jobs", f"the Hugging Face job {what}", f"See its logs: {info.url}", adapter)
    if stage == "CANCELED":
        return None if state.final else Verdict("cancelled", adapter=adapter)
    if state.status == "failed":
        return None  # the trainer said why itself
    kind, how, hint = _diagnose(info, said, state, cfg)
    return Verdict("failed", kind, f"the Hugging Face job {how}" + (f" ({said})" if said else ""), hint, adapter)


def _diagnose(info, said: str, state: RunState, cfg: RunConfig | None) -> tuple[str, str, str]:
    resume = (f"Resume continues from the last checkpoint it pushed ({state.checkpoint_url})." if state.checkpoint_url
              else "It pushed no checkpoint: submit it again.")
    timeout = timeout_seconds(cfg.compute.timeout) if cfg else None
    ran = getattr(getattr(info, "durations", None), "running_secs", None)
    text = said.lower()
    if re.search(r"time ?out|timed out|time limit|deadline", text) or (timeout and ran and ran >= 0.98 * timeout):
        limit = f" ({cfg.compute.timeout})" if cfg else ""
        return "timeout", f"reached its time limit{limit} and was stopped", f"Raise compute.timeout. {resume}"
    if re.search(r"oom|out of memory|memory limit|exit code:? 137", text):
        return "oom", "was killed for running out of memory", \
            (f"Pick a flavor with more memory, or lower training.batch_size or training.max_length (or use "
             f"model.method: qlora). {resume}")
    if str(info.status.stage) == "DELETED":
        return "jobs", "was deleted", resume
    return "jobs", "failed", f"See its logs: {info.url}. {resume}"


def follow_to_end(ref: JobRef, token: str | None, run: RunDir, writer: EventWriter, cfg: RunConfig | None = None,
                  stop: threading.Event | None = None, on_interrupt: Callable[[], None] | None = None,
                  retry_s: float = 5.0) -> bool:
    """Mirror the job until it ends, then write the platform's last word where the events lack one. Returns False
    when ``stop`` was set first. A dropped stream is followed again (the replay skips what was mirrored); Ctrl-C
    calls ``on_interrupt`` once, and following goes on until the job has ended.

    Raises:
        AuthError: the token was refused (expired): follow again with a new one.
    """
    mirror = Mirror(run, ref, writer)
    while stop is None or not stop.is_set():
        try:
            mirror.follow(token, stop)
            if stop is not None and stop.is_set():
                break
            info = inspect(ref, token)
            if str(info.status.stage) in TERMINAL:
                state = _this_attempt(run.state(), info)
                _write(writer, last_word(info, state, cfg), state)
                return True
        except KeyboardInterrupt:
            if on_interrupt is None:
                raise
            on_interrupt()
            on_interrupt = None  # a second Ctrl-C leaves at once
            continue
        except Exception as exc:
            if http_status(exc) == 404:  # the job is gone
                gone = types.SimpleNamespace(status=types.SimpleNamespace(stage="DELETED", message="not found"),
                                             url=f"{ref}", durations=None)
                _write(writer, last_word(gone, run.state(), cfg), run.state())
                return True
            mapped = hub_error(exc, f"follow job {ref}", error=JobsError)
            if mapped is None or isinstance(mapped, AuthError):
                raise mapped or exc from None
        try:
            if stop is None:
                time.sleep(retry_s)
            else:
                stop.wait(retry_s)
        except KeyboardInterrupt:
            if on_interrupt is None:
                raise
            on_interrupt()
            on_interrupt = None
    return False


def _write(writer: EventWriter, verdict: Verdict | None, state: RunState) -> None:
    if verdict is not None:
        verdict.write(writer, state)


def _this_attempt(state: RunState, info) -> RunState:
    """``state``, or a blank one when its events are an earlier attempt's (this job never started training)."""
    if info.created_at and (state.started or 0) < info.created_at.timestamp() - 5:
        return RunState(step=state.step, checkpoint_url=state.checkpoint_url)
    return state


__all__ = ["JobRef", "JobsError", "Mirror", "cancel", "follow_to_end", "inspect", "job_image", "last_word",
           "launch_command", "prepare", "start"]
