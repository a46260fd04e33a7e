"""The local backend: each job is ``python -m phi3space <kind> ...`` in its own process group on this machine, on
its GPU slots (one per GPU; several under ``accelerate launch``), its output in the run's log.

A process that ends without a last word (killed, crashed, out of memory), or whose exit code contradicts its
events, gets one from ``last_word``: a run is completed only when its events and its exit code both say so. After a
restart, a process that still runs is adopted (watched through its pid); one that ended while no one watched is
judged by its events alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from phi3space.engine.estimates import training_seconds
from phi3space.engine.hardware import first_gpu_name, training_refusal
from phi3space.errors import ConfigError
from phi3space.hub.auth import token_env
from phi3space.hub.records import JOB_ENV, OWNER_ENV
from phi3space.jobs.backend import Backend, Host, Verdict
from phi3space.jobs.kinds import kind_of
from phi3space.jobs.spec import JobConfig
from phi3space.jobs.store import Job
from phi3space.refs import is_local_ref
from phi3space.run import RunState

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # where `import phi3space` finds this very code


def train_command(config_path: Path, gpus: int = 1) -> list[str]:
    """One training process, or one per GPU under accelerate (data-parallel)."""
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                "--num_machines", "1", "-m", "phi3space", "train", str(config_path)]
    return [sys.executable, "-u", "-m", "phi3space", "train", str(config_path)]


def job_env(token: str | None, space: bool, base: dict | None = None) -> dict[str, str]:
    """The job process's environment: the acting token as HF_TOKEN (on a Space never the owner's), unbuffered."""
    env = token_env(token, space, base)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def last_word(exit_code: int | None, state: RunState, cancel_requested: bool,
              since: float | None = None, kind: str = "train") -> Verdict | None:
    """How a process that ended with ``exit_code`` (None: it ended while no one was watching) ended, when its own
    events say ``state``; None when they already tell the truth. A last word written before ``since`` (an earlier
    attempt of a resumed job) does not count. ``kind``: the job's (train, merge, eval, export), named in the
    message."""
    if since is not None and state.final and (state.finished or 0) < since:
        state = RunState(step=state.step)
    if ((state.status == "completed" and exit_code in (0, None)) or state.status == "failed"
            or (state.status == "cancelled" and exit_code != 0)):
        return None
    if cancel_requested or exit_code == 130:
        return Verdict("cancelled", adapter=state.adapter)
    oom = "Out of memory kills show up like this; see the log below."
    if exit_code is None:
        how, hint = "ended while the server was down", "Resume it from its newest checkpoint, or submit it again."
    elif exit_code < 0:
        how, hint = f"was killed by signal {-exit_code}", oom
    elif exit_code == 0:
        how, hint = "exited without finishing its run", "See the log below."
    else:
        how = f"exited with code {exit_code}" + (" after finishing its run" if state.final else "")
        hint = oom if exit_code == 137 else "See the log below."
    what = {"train": "training", "eval": "evaluation"}.get(kind, kind)
    return Verdict("failed", "crash", f"the {what} process {how}", hint, adapter=state.adapter)


class _Adopted:
    """A process started by an earlier server process: watched through its pid, not waited for."""

    def __init__(self, job: Job):
        self.pid, self._job = job.pid, job

    def poll(self) -> int | None:
        """None while the adopted process still runs; -1 once it is gone (its exit code is unknown here)."""
        return None if _is_our_process(self._job) else -1  # the exit code is unknown: events decide


class LocalBackend(Backend):
    """This machine: a process per job on its GPU slots, in the app's queue."""

    name = "local"
    label = "This machine"
    here = True
    options = ("gpus",)
    limits = "this machine's GPU slots (compute.gpus: 1, N or all)"
    uses_slots = True

    def __init__(self, host: Host, slots: int = 1, grace_s: float | None = None,
                 command: Callable[[Path], list[str]] | None = None, **options):
        super().__init__(host)
        self.slots = slots
        self.grace_s = grace_s if grace_s is not None else float(os.environ.get("PHI3SPACE_STOP_GRACE_S", "60"))
        self.command = command or train_command  # tests stand in their own trainer
        self._procs: dict[str, subprocess.Popen | _Adopted] = {}
        self._kill_at: dict[str, float] = {}

    def check(self, cfg: JobConfig, token: str | None, slots: int) -> int:
        """``Backend.check``: this machine can train (not ZeroGPU, a usable GPU) and has the GPU slots asked for; local
        data and base paths become absolute. Returns the slots the job takes.

        Raises:
            Phi3SpaceError: training is refused here (ZeroGPU, a GPU torch cannot use), or more GPUs than slots."""
        refusal = training_refusal()
        if refusal is not None:
            raise refusal
        for part, key in ((cfg.data, "dataset"), (cfg.model, "base")):  # the job runs elsewhere: no relative paths
            value = getattr(part, key)
            if is_local_ref(value) and Path(value).expanduser().exists():
                setattr(part, key, str(Path(value).expanduser().resolve()))
        gpus = slots if cfg.compute.gpus == "all" else int(cfg.compute.gpus)
        if gpus > slots:
            raise ConfigError([f"compute.gpus: {gpus}, but this server trains on {slots} GPU slot(s)"],
                              "Ask for fewer (or all), or train on Hugging Face Jobs with a multi-GPU flavor.")
        return gpus

    def longest_s(self, cfg: JobConfig, queue_wait_s: float) -> float | None:
        """``Backend.longest_s``: the queue's wait plus the estimated training time on the first GPU; None when unknown."""
        train = training_seconds(cfg, first_gpu_name())
        return None if train is None else queue_wait_s + train

    def start(self, job: Job, token: str | None, slot: int | None) -> Job:
        """``Backend.start``: run the job's command in its own process group (its output into the run's log), on
        ``slot`` and the slots after it."""
        env = job_env(token, self.host.space)
        env[JOB_ENV], env[OWNER_ENV] = job.id, job.owner  # for the record on the final card
        gpus = job.gpus or 1
        if self.slots > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(s) for s in range(slot, slot + gpus))
        kind = kind_of(job)
        if kind.trains:
            command = (self.command(job.run.config) if gpus == 1 else train_command(job.run.config, gpus)) + \
                (["--resume"] if job.resume else [])
        else:
            command = [sys.executable, "-u", "-m", "phi3space", *kind.argv(job)]
        # Taken before the process starts: a fast process may write its last word before Popen returns here, and a
        # last word older than `started` counts as an earlier attempt's (last_word).
        started = time.time()
        with job.run.log.open("ab") as log:
            # cwd: where `import phi3space` finds this code, so the job runs exactly what the server runs
            proc = subprocess.Popen(command, env=env, cwd=PACKAGE_PARENT, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs[job.id] = proc
        self.host.store.update(job.id, phase="running", started=started, pid=proc.pid, slot=slot)
        return self.host.store.get(job.id)

    def stop(self, job: Job) -> None:
        """SIGTERM (the trainer saves and ends), SIGKILL after the grace period."""
        self._signal(job.id, signal.SIGTERM)
        self._kill_at[job.id] = time.time() + self.grace_s

    def recover(self, job: Job) -> None:
        """``Backend.recover``: adopt the job's process when it still runs, else give the job its last word."""
        if job.pid and _is_our_process(job):
            self._procs[job.id] = _Adopted(job)
        else:
            self.host.ended(job, last_word(None, job.run.state(), job.cancel_requested, job.started, job.kind), None)

    def poll(self) -> None:
        """``Backend.poll``: end the jobs whose process exited, and SIGKILL those past their grace period."""
        for job_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is not None:
                self._procs.pop(job_id)
                self._kill_at.pop(job_id, None)
                code = code if isinstance(proc, subprocess.Popen) else None
                job = self.host.store.get(job_id)
                self.host.ended(job, last_word(code, job.run.state(), job.cancel_requested, job.started, job.kind), code)
            elif job_id in self._kill_at and time.time() > self._kill_at[job_id]:
                self._signal(job_id, signal.SIGKILL)
                self._kill_at.pop(job_id)

    def checkpoint_exists(self, job: Job, token: str | None) -> bool:
        """A whole checkpoint in the run folder, else the last one pushed to its repo's checkpoints branch (after a
        Space restart wiped the disk)."""
        if job.run.latest_checkpoint() is not None:
            return True
        from phi3space import config
        from phi3space.hub.push import hub_checkpoint_steps

        cfg = config.load(job.run.config)
        return bool(cfg.output.push_to and cfg.output.push_checkpoints and hub_checkpoint_steps(cfg.output.push_to, token))

    def shutdown(self) -> None:
        """``Backend.shutdown``: kill the process groups this process started (an adopted process is left alone)."""
        for proc in list(self._procs.values()):
            if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)

    def _signal(self, job_id: str, sig: int) -> None:
        proc = self._procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # the whole group: data workers and launchers too
        except ProcessLookupError:
            pass


def _is_our_process(job: Job) -> bool:
    """The pid still runs *this* job's process (its command names the run folder; not a reused pid, nor a zombie)."""
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(job.run.path) in cmdline
