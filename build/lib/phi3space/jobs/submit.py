"""Submit: the one pipeline every job goes through, whatever its kind and backend, when it is submitted and when it
is resumed. In order:

1. the visitor rules: on a Space a sign-in, and inputs that are Hub IDs (or the visitor's own uploads), never paths
   of the server; the run keeps everything on the Hub (``output.push_to`` defaults to ``auto``, checkpoints pushed);
2. the backend's own checks (this machine can train; a Jobs image, a flavor, no local inputs) and the GPUs it takes;
3. the sign-in lasting until the job can end: the backend's upper bound (for this machine the queue plus the
   estimated training time, for Hugging Face Jobs ``compute.timeout`` plus the platform's scheduling), plus a margin;
4. write access to the destination repo (proven now: create_repo, then auth_check(write=True)), one unfinished job
   per repo;
5. on a Space, the job's record on its repo's card, so that it is found again after a restart.

Nothing here knows the page: errors carry their own message and hint (phi3space.errors).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from phi3space.config import RunConfig, auto_repo_name
from phi3space.errors import AuthError, ConfigError, DataError, Phi3SpaceError, SignInNeeded
from phi3space.jobs.backend import Backend, Task
from phi3space.jobs.spec import JobConfig
from phi3space.jobs.store import Job, JobStore
from phi3space.refs import is_hub_id, is_local_ref, ref_problem
from phi3space.report import human_duration

TOKEN_MARGIN_S = 300  # a sign-in must outlast the job's upper bound by this much


@dataclass(frozen=True)
class Caller:
    """Who submits: the owner of the jobs, their token (None off a Space: the local login acts), and when a page
    sign-in's token expires (Unix time; None when unknown)."""

    owner: str
    token: str | None = None
    expires_at: float | None = None


def check_inputs_allowed(refs: dict[str, str], allowed: tuple[Path, ...] = (), space: bool = False) -> None:
    """A Hub ID or a path each (refs.ref_problem: no control character, no Hub ID the Hub refuses); and on a Space,
    visitors give Hub IDs (or their uploads): paths of the server are refused.

    Args:
        refs: setting name -> value, e.g. {"data.dataset": "./x.jsonl", "model.base": "microsoft/..."}.
        allowed: folders whose files are fine anyway (the visitor's uploads).
    """
    problems = [problem for key, ref in refs.items() if ref and (problem := ref_problem(ref, key))]
    if problems:
        raise ConfigError(problems, "Give a Hub ID (owner/name) or a file or folder name, as typed on the Hub or disk.")
    if not space:
        return
    for key, ref in refs.items():
        if not ref or not is_local_ref(ref):
            continue
        path = Path(ref).expanduser().resolve()
        if not any(path.is_relative_to(a.resolve()) for a in allowed):
            problems.append(f"{key}: {ref!r} is a path on the server; on a Space give a Hub ID (user/name) or upload a file")
    if problems:
        raise ConfigError(problems, "Use a Hub ID such as microsoft/Phi-3-mini-4k-instruct, or the upload box for data.")


def inputs(cfg: RunConfig) -> dict[str, str]:
    """A run's inputs a visitor names (setting -> value), for ``check_inputs_allowed``."""
    return {"data.dataset": cfg.data.dataset, "model.base": cfg.model.base, "model.init_adapter": cfg.model.init_adapter or ""}


def check_token_lasts(longest_s: float | None, expires_at: float | None) -> None:
    """Refuse a sign-in that will expire before the job can end: its checkpoints and final push use it.

    Raises:
        AuthError: expired, or expiring before ``longest_s`` (+ 5 minutes).
    """
    if not expires_at:
        return
    left = expires_at - time.time()
    if left > (longest_s or 0.0) + TOKEN_MARGIN_S:
        return
    hint = ("Sign out and sign in again for a fresh token, then start again"
            + (", or shorten the run (training.max_steps, compute.timeout)." if longest_s else "."))
    if left <= 0:
        raise AuthError("your Hugging Face sign-in has expired", hint)
    raise AuthError(f"your Hugging Face sign-in expires in {human_duration(left)}, before this run can end (up to "
                    f"~{human_duration(longest_s)}): its checkpoints and adapter could not be pushed", hint)


class Pipeline:
    """The checks of submit and resume, for the scheduler that owns ``store``."""

    def __init__(self, store: JobStore, space: bool, uploads):
        self.store, self.space, self.uploads = store, space, uploads  # uploads(owner) -> that visitor's folder

    def defaults(self) -> dict:
        """Settings a config read on this server gets when it leaves them out: on a Space, everything goes to the Hub
        (nothing on its disk survives a restart)."""
        return {"output.push_to": "auto", "output.push_checkpoints": True} if self.space else {}

    def require_sign_in(self, caller: Caller, why: str) -> None:
        """On a Space, a caller without a token is refused (SignInNeeded, saying ``why``)."""
        if self.space and not caller.token:
            raise SignInNeeded(why, "on a Space every run is kept in your Hub account (the Space's own disk does not "
                                    "survive a restart).")

    def check_train(self, cfg: JobConfig, caller: Caller, backend: Backend, slots: int, queue_wait_s: float,
                    job_id: str | None = None) -> int:
        """Steps 1-4 for a training run (resolving ``cfg`` in place); returns the GPU slots it takes."""
        self.require_sign_in(caller, "training here needs you to sign in with Hugging Face")
        check_inputs_allowed(inputs(cfg), (self.uploads(caller.owner),), self.space)
        if self.space:  # nothing on this disk survives a restart: the Hub keeps the run
            cfg.output.push_to = cfg.output.push_to or self.defaults()["output.push_to"]
            cfg.output.push_checkpoints = True
        gpus = backend.check(cfg, caller.token, slots)
        check_token_lasts(backend.longest_s(cfg, queue_wait_s if backend.uses_slots else 0.0), caller.expires_at)
        if cfg.output.push_to and (self.space or backend.needs_hub_destination):
            from phi3space.hub.access import check_push_access

            self.check_dataset(cfg.data.dataset, caller.token if self.space else _local_token(caller.token))

            cfg.output.push_to = check_push_access(cfg.output.push_to, caller.token if self.space else
                                                   _local_token(caller.token), auto_repo_name(cfg), cfg.output.private)
            self.check_repo_free(cfg, caller.owner, job_id)
        return gpus

    def check_task(self, task: Task, caller: Caller, backend: Backend, why: str, queue_wait_s: float) -> Task:
        """Steps 1-3 for an eval or export job (its destination is checked by the caller, which resolves it);
        returns it as the backend resolved it (its flavor)."""
        self.require_sign_in(caller, why)
        check_inputs_allowed({what: ref for what, ref in task.inputs}, (self.uploads(caller.owner),), self.space)
        task = backend.check_task(task, caller.token if self.space else _local_token(caller.token))
        check_token_lasts(backend.task_longest_s(task, queue_wait_s if backend.uses_slots else 0.0), caller.expires_at)
        return task

    @staticmethod
    def check_dataset(dataset: str, token: str | None) -> None:
        """A Hub dataset the caller may read, before anything is created on the Hub for the run (a typo must not
        leave an empty repo behind)."""
        if not is_hub_id(dataset):
            return
        from phi3space.hub.access import check_read_access
        from phi3space.hub.errors import call

        call(lambda: check_read_access(dataset, "dataset", token), f"read the dataset {dataset}", DataError, ref=dataset)

    def check_repo_free(self, cfg: RunConfig, owner: str, job_id: str | None = None) -> None:
        """One unfinished job per repo: the card records one job, and the checkpoints branch holds one run."""
        from phi3space import config

        for other in self.store.list(owner, phase=("queued", "running")):
            if other.id != job_id and other.kind == "train" and \
                    config.load(other.run.config).output.push_to == cfg.output.push_to:
                raise ConfigError([f"{cfg.output.push_to} is the destination of your job {other.id}, which has not "
                                   "finished"], "Wait for it, stop it, or choose another destination repo.")

    def record(self, cfg: RunConfig, job: Job, caller: Caller, backend: Backend) -> None:
        """Step 5: on a Space, the job's record on its repo's card (unless its platform finds it again itself)."""
        if self.space and not backend.survives_restart and job.kind == "train":
            from phi3space.hub.records import publish_queued

            publish_queued(cfg, cfg.output.push_to, job.id, job.owner, caller.token, job.created)

    def record_cancelled(self, job: Job, backend: Backend, token: str | None) -> None:
        """On a Space, a job stopped before it started says so on its card (else a restart brings it back failed).
        A Hub that cannot be reached does not undo the stop: it is reported in the server's log."""
        if not (self.space and token and not backend.survives_restart and job.kind == "train"):
            return
        from phi3space import config
        from phi3space.hub.records import publish_queued

        try:
            cfg = config.load(job.run.config)
            publish_queued(cfg, cfg.output.push_to, job.id, job.owner, token, job.created, status="cancelled")
        except Phi3SpaceError as exc:
            print(f"phi3space: job {job.id} was stopped, but its card could not say so: {exc.message}", file=sys.stderr)


def _local_token(token: str | None) -> str | None:
    from phi3space.hub.auth import acting_token

    return acting_token(token, space=False)
