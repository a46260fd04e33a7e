"""Training on Hugging Face Jobs: the same engine, in a container on rented hardware, billed to whoever runs it.

A run with ``compute.backend: hf-jobs`` is submitted with huggingface_hub's ``run_job``:

- image: the Space's own (``hf.co/spaces/$SPACE_ID``, so the job runs the very code the Space runs), or
  ``PHI3SPACE_JOBS_IMAGE`` (refused when neither is there);
- command: ``python -m phi3space train env:PHI3SPACE_RUN_CONFIG``, or ``accelerate launch --multi_gpu
  --num_processes N -m phi3space train ...`` on a flavor with N GPUs;
- env: the resolved run config as YAML (it never holds a token: config validation refuses token-shaped values);
- secrets: the token, as ``HF_TOKEN``; never in env values, argv, labels or logs.

Inside the job each event is also printed as one line, ``@phi3space-event {json}`` (numbered by ``seq``). Here a
``Mirror`` follows the job's log stream and appends those events to the local run folder, so the CLI lines, the
page, /job_status and the card read a remote run exactly like a local one; other lines go to the run's log. The job
pushes the adapter, and its checkpoints to the ``checkpoints`` branch, itself: nothing depends on this machine's
disk. When the job ends, the platform's verdict (its stage and message) is the run's last word where the run's own
events lack one.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig, timeout_seconds
from .errors import AuthError, Cancelled, ConfigError, Phi3SpaceError, register_secret, scrub
from .hub import hub_error, is_local_ref, on_space, whoami
from .run import EVENT_TYPES, EventWriter, RunDir, RunState

EVENT_PREFIX = "@phi3space-event "
CONFIG_VAR = "PHI3SPACE_RUN_CONFIG"
CONFIG_ARG = f"env:{CONFIG_VAR}"  # what `python -m phi3space train` is given inside a job
IMAGE_VAR = "PHI3SPACE_JOBS_IMAGE"
LABEL_ORIGIN = "phi3space"  # which app (or the CLI) submitted the job: an app re-finds its own jobs by it
LABEL_RUN = "phi3space-run"  # the run's id in that app
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
BILLING_URL = "https://huggingface.co/settings/billing"


class JobsError(Phi3SpaceError):
    kind = "jobs"


# ---------------------------------------------------------------- hardware and cost

@dataclass(frozen=True)
class Flavor:
    """One Jobs hardware flavor, as list_jobs_hardware describes it."""

    name: str
    gpus: int
    gpu: str = ""  # accelerator model (A10G, L4, ...); "" for CPU flavors
    memory_gb: float | None = None  # GPU memory per GPU
    price_per_hour: float | None = None  # USD

    def label(self) -> str:
        """'a10g-large · 1× A10G 24 GB · $1.50/h' (for the form's dropdown)."""
        parts = [self.name]
        if self.gpus:
            parts.append(f"{self.gpus}× {self.gpu or 'GPU'}" + (f" {self.memory_gb:g} GB" if self.memory_gb else ""))
        else:
            parts.append("CPU only")
        if self.price_per_hour is not None:
            parts.append(f"${self.price_per_hour:.2f}/h")
        return " · ".join(parts)


_PER_HOUR = {"second": 3600, "minute": 60, "hour": 1}


def gpus_in_name(name: str) -> int:
    """GPUs a flavor's name promises: 'a10g-largex2' -> 2, 'l4x4' -> 4, 'a10g-large' -> 1, 'cpu-basic' -> 0."""
    if name.startswith("cpu"):
        return 0
    m = re.search(r"x(\d+)$", name)
    return int(m.group(1)) if m else 1


def _flavor(info) -> Flavor:
    acc = info.accelerator
    gpus = int(acc.quantity) if acc is not None and str(acc.quantity).isdigit() else gpus_in_name(info.name)
    memory = None
    if acc is not None:
        m = re.match(r"([\d.]+)\s*GB", str(acc.vram or ""))
        # The Hub gives a flavor's total GPU memory (4x L4: 96 GB); each process of a data-parallel run has one GPU.
        memory = float(m.group(1)) / max(gpus, 1) if m else None
    per_hour = _PER_HOUR.get(str(info.unit_label).lower())
    price = round(info.unit_cost_usd * per_hour, 4) if per_hour and info.unit_cost_usd is not None else None
    return Flavor(info.name, gpus, acc.model if acc is not None else "", memory, price)


_hardware: tuple[float, list[Flavor]] | None = None
_hardware_lock = threading.Lock()
HARDWARE_TTL_S = 3600


def hardware(token: str | None = None) -> list[Flavor]:
    """The Jobs flavors with their prices (asked of the Hub at most once an hour). When the Hub cannot be asked,
    the flavor names huggingface_hub knows, without prices (and asked again a minute later)."""
    global _hardware
    with _hardware_lock:
        if _hardware and time.time() < _hardware[0]:
            return _hardware[1]
    from huggingface_hub import HfApi

    try:
        found = [_flavor(h) for h in HfApi().list_jobs_hardware(token=token or False)]
        ttl = HARDWARE_TTL_S
    except Exception as exc:
        if hub_error(exc, "list Jobs hardware") is None:
            raise
        from huggingface_hub import JobHardware

        found = [Flavor(h.value, gpus_in_name(h.value)) for h in JobHardware]
        ttl = 60
    with _hardware_lock:
        _hardware = (time.time() + ttl, found)
    return found


def find_flavor(name: str, token: str | None = None) -> Flavor:
    """The flavor called ``name``, or one made from its name when the Hub's list does not say (offline)."""
    return next((f for f in hardware(token) if f.name == name), Flavor(name, gpus_in_name(name)))


def check_flavor(name: str, token: str | None) -> Flavor:
    """Raises ConfigError when the Hub's list of flavors is known and ``name`` is not in it."""
    flavors = hardware(token)
    known = [f for f in flavors if f.price_per_hour is not None]
    if known and name not in {f.name for f in known}:
        gpus = [f.name for f in known if f.gpus]
        raise ConfigError([f"compute.flavor: {name!r} is not a Hugging Face Jobs hardware flavor"],
                          f"Use one of: {', '.join(gpus or [f.name for f in known])}.")
    return find_flavor(name, token)


# Rough LoRA throughput of Phi-3-mini per GPU, relative to one H200 (bench/results: ~4,300 tokens/s on ~500-token
# rows, ~9,800 on 2,048-token rows), scaled by each GPU's dense bf16 tensor throughput. An estimate for a price
# tag, not a promise.
H200_TOKENS_PER_S = ((500, 4300.0), (2048, 9800.0))
GPU_SPEED = {"H200": 1.0, "H100": 1.0, "A100": 0.32, "L40S": 0.37, "RTX PRO 6000": 0.5, "A10G": 0.13, "L4": 0.12,
             "T4": 0.066}
QLORA_SPEED = 0.82  # QLoRA / LoRA on the same GPU (bench: ~3,500 vs ~4,300 tokens/s)
DATA_PARALLEL_EFFICIENCY = 0.9
STARTUP_S = 10 * 60  # image pull, model download and load, before the first step


@dataclass
class Estimate:
    flavor: Flavor
    timeout_s: int
    hours: float | None  # training time, startup included; None when the steps are not known yet

    @property
    def cost(self) -> float | None:
        price = self.flavor.price_per_hour
        return None if price is None or self.hours is None else price * min(self.hours, self.timeout_s / 3600)

    @property
    def max_cost(self) -> float | None:
        price = self.flavor.price_per_hour
        return None if price is None else price * self.timeout_s / 3600

    def warnings(self) -> list[str]:
        out = []
        if self.hours is not None and self.hours * 3600 > self.timeout_s:
            out.append(f"the run needs about {_hours(self.hours)} but compute.timeout stops it after "
                       f"{_hours(self.timeout_s / 3600)}: raise the timeout (a stopped run resumes from its last "
                       "pushed checkpoint).")
        if self.flavor.gpus == 0:
            out.append(f"{self.flavor.name} has no GPU: training a Phi-3 on CPUs would take days. Pick a GPU flavor.")
        return out

    def markdown(self) -> str:
        head = f"**Hugging Face Jobs:** {self.flavor.label()}"
        if self.flavor.price_per_hour is None:
            return head + " · price unknown (the Hub's hardware list could not be read)"
        time_part = f" · about {_hours(self.hours)} → **about ${self.cost:.2f}**" if self.hours is not None else ""
        return head + time_part + f" · at most ${self.max_cost:.2f} (timeout {_hours(self.timeout_s / 3600)}), billed to you"


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def estimate(cfg: RunConfig, rows: int | None = None, lengths: list[int] | None = None,
             token: str | None = None) -> Estimate:
    """Time and cost of ``cfg`` on its flavor, from the planned tokens and a per-GPU throughput table."""
    flavor = find_flavor(cfg.compute.flavor, token)
    t = cfg.training
    mean = min(sum(lengths) / len(lengths), t.max_length) if lengths else min(512, t.max_length)
    gpus = max(flavor.gpus, 1)
    if t.max_steps:
        tokens = t.max_steps * t.batch_size * t.grad_accum * gpus * mean
    elif rows:
        tokens = min(rows, cfg.data.max_samples or rows) * (1 - cfg.data.eval_fraction) * t.epochs * mean
    else:
        return Estimate(flavor, timeout_seconds(cfg.compute.timeout) or 0, None)
    (x0, y0), (x1, y1) = H200_TOKENS_PER_S
    per_gpu = min(max(y0 + (mean - x0) * (y1 - y0) / (x1 - x0), y0), y1) * GPU_SPEED.get(flavor.gpu.upper(), 0.13)
    if cfg.model.method == "qlora":
        per_gpu *= QLORA_SPEED
    speed = per_gpu * gpus * (DATA_PARALLEL_EFFICIENCY if gpus > 1 else 1)
    return Estimate(flavor, timeout_seconds(cfg.compute.timeout) or 0, (STARTUP_S + tokens / speed) / 3600)


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


def prepare(cfg: RunConfig, token: str | None) -> Flavor:
    """Everything checked before a job is started: a token, Hub inputs, an image, a known flavor, push access
    (``output.push_to: auto`` is resolved here, so the job and this machine agree on the repo).

    Raises:
        AuthError, ConfigError: what to fix, before anything is billed.
    """
    if not token:
        raise AuthError("training on Hugging Face Jobs needs your Hugging Face token (the job runs as you, billed to you)",
                        "Sign in with Hugging Face (web app), set HF_TOKEN, or run `hf auth login`.")
    local = [f"{key}: {value!r} is a path on this machine; a Hugging Face job cannot read it"
             for key, value in (("data.dataset", cfg.data.dataset), ("model.base", cfg.model.base)) if is_local_ref(value)]
    if local:
        raise ConfigError(local, "Upload it to the Hub and use its ID, e.g. `hf upload you/my-data ./qa.jsonl "
                                 "--repo-type dataset`, then data.dataset: you/my-data.")
    job_image()
    flavor = check_flavor(cfg.compute.flavor, token)
    from .config import auto_repo_name
    from .hub import check_push_access

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
    if constants.ENDPOINT.rstrip("/") != constants._HF_DEFAULT_ENDPOINT:
        env["HF_ENDPOINT"] = constants.ENDPOINT  # a private Hub deployment (or a test's stand-in)
    namespace = whoami(token)["name"]
    register_secret(token)
    try:
        info = HfApi().run_job(image=job_image(), command=launch_command(flavor.gpus, resume), env=env,
                               secrets={"HF_TOKEN": token}, flavor=cfg.compute.flavor, timeout=cfg.compute.timeout,
                               labels={LABEL_ORIGIN: origin(), LABEL_RUN: safe_label(run_id), **(labels or {})},
                               name=safe_label(f"phi3space-{run_id}"), namespace=namespace, token=token)
    except Exception as exc:
        error = start_error(exc, cfg, namespace)
        if error is None:
            raise
        _write_last_word(writer, [("error", {"kind": error.kind, "message": error.message, "hint": error.hint}),
                                  ("run_finished", {"status": "failed", "step": 0, "adapter": None})])
        raise error from None
    ref = JobRef(namespace, info.id)
    price = f", ${flavor.price_per_hour:.2f}/h" if flavor.price_per_hour is not None else ""
    writer.emit("log", message=f"submitted to Hugging Face Jobs: {info.url} ({cfg.compute.flavor}{price}, timeout "
                               f"{cfg.compute.timeout}); waiting for the hardware", job=str(ref), url=info.url)
    return ref


def _copy(cfg: RunConfig) -> RunConfig:
    from . import config

    return config.from_dict(cfg.to_dict())


def start_error(exc: BaseException, cfg: RunConfig, namespace: str) -> Phi3SpaceError | None:
    """The platform's refusal to start a job, with its own words and what to do; None for a bug."""
    from huggingface_hub.errors import HfHubHTTPError

    if not isinstance(exc, HfHubHTTPError):
        return hub_error(exc, "start the job on Hugging Face Jobs")
    status = getattr(exc.response, "status_code", None)
    said = scrub((getattr(exc, "server_message", None) or str(exc).splitlines()[0]).strip())
    prefix = f"Hugging Face Jobs refused to start the job ({status}: {said})"
    if status == 402:
        return JobsError(prefix, f"Jobs are billed to the account that runs them: add a payment method or credits for "
                                 f"{namespace} at {BILLING_URL}, then submit again.")
    if status == 403:
        return AuthError(prefix, "On a Space, sign out and in again so the app may run jobs for you (scope 'jobs'); "
                                 "with a token, use one that may start Jobs in that namespace.")
    if status == 429:
        return JobsError(prefix, "You have reached a limit of Jobs at once: wait for one of your jobs to end, or "
                                 "cancel one, then submit again.")
    if status in (400, 404, 422):
        return JobsError(prefix, f"Check compute.flavor ({cfg.compute.flavor}) and compute.timeout "
                                 f"({cfg.compute.timeout}), and that the image exists ({job_image()}).")
    return hub_error(exc, "start the job on Hugging Face Jobs")


# ---------------------------------------------------------------- following a job

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

    from .hub import call

    return call(lambda: HfApi().inspect_job(job_id=ref.id, namespace=ref.namespace, token=token),
                f"read the state of job {ref}", JobsError)


def cancel(ref: JobRef, token: str | None) -> None:
    from huggingface_hub import HfApi

    from .hub import call

    call(lambda: HfApi().cancel_job(job_id=ref.id, namespace=ref.namespace, token=token), f"cancel job {ref}", JobsError)


def last_word(info, state: RunState, cfg: RunConfig | None = None) -> list[tuple[str, dict]]:
    """The events to append once the platform says the job ended (``info``) and its events say ``state``: none when
    they already tell the truth. A run is completed only when the job completed and the adapter was pushed."""
    stage, said = str(info.status.stage), scrub(info.status.message or "")
    step = {"step": state.step, "adapter": state.adapter_repo if state.status != "failed" else None}
    if stage == "COMPLETED":
        if state.status in ("completed", "cancelled") and (state.adapter_repo or state.status == "cancelled"):
            return []
        if state.status == "failed":
            return []
        what = "completed without pushing an adapter" if state.status == "completed" else "ended without finishing its run"
        return [("error", {"kind": "jobs", "message": f"the Hugging Face job {what}",
                           "hint": f"See its logs: {info.url}"}), ("run_finished", {"status": "failed", **step})]
    if stage == "CANCELED":
        return [] if state.final else [("run_finished", {"status": "cancelled", **step})]
    if state.status == "failed":
        return []  # the trainer said why itself
    kind, how, hint = _diagnose(info, said, state, cfg)
    return [("error", {"kind": kind, "message": f"the Hugging Face job {how}" + (f" ({said})" if said else ""),
                       "hint": hint}), ("run_finished", {"status": "failed", **step})]


def _diagnose(info, said: str, state: RunState, cfg: RunConfig | None) -> tuple[str, str, str]:
    resume = ("Resume continues from the last checkpoint it pushed" + (f" ({state.checkpoint_url})." if state.checkpoint_url
                                                                        else ".")) if state.checkpoint_url else \
        "It pushed no checkpoint: submit it again."
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


def _write_last_word(writer: EventWriter, events: list[tuple[str, dict]]) -> None:
    for type, fields in events:
        writer.emit(type, **fields)


def follow_to_end(ref: JobRef, token: str | None, run: RunDir, writer: EventWriter, cfg: RunConfig | None = None,
                  stop: threading.Event | None = None, on_interrupt: Callable[[], None] | None = None,
                  retry_s: float = 5.0) -> bool:
    """Mirror the job until it ends, then write the platform's last word where the events lack one. Returns False
    when ``stop`` was set first. A dropped stream is followed again (the replay skips what was mirrored).

    Raises:
        AuthError: the token was refused (expired): follow again with a new one.
    """
    mirror = Mirror(run, ref, writer)
    while True:
        try:
            mirror.follow(token, stop)
            if stop is not None and stop.is_set():
                return False
            info = inspect(ref, token)
            if str(info.status.stage) in TERMINAL:
                state = run.state()
                if info.created_at and (state.started or 0) < info.created_at.timestamp() - 5:
                    # what the events say is an earlier attempt's (this job never started training)
                    state = RunState(step=state.step, checkpoint_url=state.checkpoint_url)
                _write_last_word(writer, last_word(info, state, cfg))
                return True
        except KeyboardInterrupt:
            if on_interrupt is None:
                raise
            on_interrupt()
            on_interrupt = None  # a second Ctrl-C leaves at once
        except Exception as exc:
            mapped = hub_error(exc, f"follow job {ref}", error=JobsError)
            if mapped is None or isinstance(mapped, AuthError):
                raise mapped or exc from None
        if stop is None:
            time.sleep(retry_s)
        elif stop.wait(retry_s):
            return False


# ---------------------------------------------------------------- the CLI: submit, follow, exit like a local run

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
        if not resume and (run.holds_run() or earlier.status != "queued"):
            raise ConfigError([f"output.dir: {run.path} already holds a run"],
                              "Add --resume to continue it, or choose another folder with --set output.dir=runs/NEW.")
        if resume and cfg.output.push_to == "auto" and run.config.exists():
            cfg.output.push_to = run.load_config().output.push_to  # the repo whose checkpoints branch it continues
        flavor = prepare(cfg, token)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        ref = start(cfg, token, flavor, uuid.uuid4().hex[:12], writer, resume=resume)

    def interrupt() -> None:
        print(f"stopping: cancelling job {ref} (Ctrl-C again to leave it running)", flush=True)
        cancel(ref, token)

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


# ---------------------------------------------------------------- inside the job

def inside_job(config_arg: str) -> bool:
    return config_arg.startswith("env:")


def job_config(config_arg: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run config a job was given in an environment value; its run folder goes under the container's temp
    folder (the same path in every process of a multi-GPU job)."""
    from . import config

    name = config_arg.removeprefix("env:")
    text = os.environ.get(name, "")
    if not text.strip():
        raise ConfigError([f"{config_arg}: the environment value {name} is empty"],
                          "Inside a Hugging Face job the run config comes in that value; elsewhere pass a YAML file.")
    cfg = config.loads(text, overrides)
    cfg.output.dir = str(Path(tempfile.gettempdir()) / "phi3space" / Path(cfg.output.dir).name)
    return cfg


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


__all__ = ["CONFIG_ARG", "EVENT_PREFIX", "Estimate", "Flavor", "JobRef", "JobsError", "Mirror", "cancel", "estimate",
           "find_flavor", "follow_to_end", "gpus_in_name", "hardware", "inspect", "job_config", "job_echo", "job_image",
           "last_word", "launch_command", "parse_event", "prepare", "start", "train_cli"]
