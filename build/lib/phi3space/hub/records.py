"""The Hub as the record that survives a Space restart.

A Space's disk is wiped when it restarts, so a web app job leaves its trace where the visitor can always read it:
its adapter repo. At submit the repo gets a card whose front matter carries a *record* (``phi3space:`` job id,
owner, Space, status) and the tag ``phi3space``; the run's config goes beside it. Each checkpoint is pushed to the
repo's ``checkpoints`` branch together with the run's events (phi3space.push), and the final card carries the
record again with the final status. After a restart, ``hub_runs`` finds a visitor's runs with
``list_models(author=..., filter="phi3space")`` and ``rebuild`` lays their run folders out again, so that the job id
the visitor holds answers once more and an interrupted run resumes from its last pushed checkpoint.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from phi3space.config import RunConfig
from phi3space.errors import ConfigError, Phi3SpaceError
from phi3space.hub.access import namespaces, whoami
from phi3space.hub.card import RECORD_KEY, RECORD_TAG
from phi3space.hub.errors import call
from phi3space.hub.space import space_id
from phi3space.run import RunDir

JOB_ENV = "PHI3SPACE_JOB_ID"  # set by the job runner in a training process: whose job this run is
OWNER_ENV = "PHI3SPACE_JOB_OWNER"
JOB_ID = re.compile(r"[0-9a-f]{12}")  # a job id as phi3space.datadir.new_job_id makes them: a record with another is not ours


def record(job_id: str, owner: str, status: str, step: int | None = None, max_steps: int | None = None,
           metrics: dict | None = None, created: float | None = None) -> dict:
    """A job's record for its card's front matter."""
    fields = {"job": job_id, "owner": owner, "space": space_id(), "status": status, "step": step,
              "max_steps": max_steps, "created": round(created) if created else None,
              "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))} or None}
    return {k: v for k, v in fields.items() if v is not None}


def job_record(status: str, step: int | None = None, max_steps: int | None = None,
               metrics: dict | None = None) -> dict | None:
    """The record of the web app job this process trains (None for a run started from the command line)."""
    job_id = os.environ.get(JOB_ENV)
    if not job_id:
        return None
    return record(job_id, os.environ.get(OWNER_ENV) or "", status, step, max_steps, metrics)


def publish_queued(cfg: RunConfig, repo_id: str, job_id: str, owner: str, token: str, created: float,
                   status: str = "queued") -> None:
    """Put a queued job's record (a pending card) and its config on its repo's main branch, in one commit; again
    with ``status`` cancelled when it is stopped before it starts (a restart must not bring it back as failed).

    Raises:
        HubError / AuthError: the Hub refused or could not be reached.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    from phi3space.hub.card import pending_card

    card = pending_card(cfg, repo_id, record(job_id, owner, status, created=created))
    ops = [CommitOperationAdd(RunDir.CARD, card.encode("utf-8")),
           CommitOperationAdd(RunDir.CONFIG, cfg.to_yaml().encode("utf-8"))]
    api = HfApi(token=token)
    call(lambda: api.create_commit(repo_id, ops, commit_message=f"phi3space: job {job_id} {status}"),
         "record the job on the Hub", ref=repo_id)


@dataclass
class HubRun:
    """One of a visitor's runs found on the Hub: its adapter repo and the record on its card."""

    repo_id: str
    record: dict

    @property
    def job_id(self) -> str:
        """The web app job id the record names."""
        return str(self.record["job"])


def hub_runs(owner: str, token: str) -> list[HubRun]:
    """The web app jobs ``owner`` ran on this Space, as their repos' cards record them (the newest per repo), in
    the user's namespace and their organisations'.

    Raises:
        HubError / AuthError: the Hub refused or could not be reached.
    """
    from huggingface_hub import HfApi

    api, here, found = HfApi(token=token), space_id(), []
    for author in namespaces(whoami(token)):
        models = call(lambda a=author: list(api.list_models(author=a, filter=RECORD_TAG, cardData=True)),
                      "list your runs on the Hub")
        for model in models:
            rec = model.card_data.get(RECORD_KEY) if model.card_data is not None else None
            if (isinstance(rec, dict) and JOB_ID.fullmatch(str(rec.get("job") or "")) and rec.get("owner") == owner
                    and rec.get("space") == here):
                found.append(HubRun(model.id, rec))
    return found


def rebuild(run: RunDir, hub_run: HubRun, token: str) -> None:
    """Lay out a run folder from the Hub: the config, the events pushed with the newest checkpoint, and the last
    word those events lack (completed, as the final card says, or interrupted by the restart).

    Raises:
        HubError: the repo has no config (not a phi3space job's repo). ConfigError: its config is not a valid one.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    from phi3space.hub.push import CHECKPOINT_BRANCH, hub_checkpoint_steps

    repo = hub_run.repo_id

    def pushed_events() -> str | None:
        try:
            return hf_hub_download(repo, RunDir.EVENTS, revision=CHECKPOINT_BRANCH, token=token)
        except (EntryNotFoundError, RevisionNotFoundError):
            return None  # no checkpoint was pushed

    config = call(lambda: hf_hub_download(repo, RunDir.CONFIG, token=token), f"download the config of {repo}", ref=repo)
    cfg = _checked_config(repo, open(config, "rb").read())
    events = call(pushed_events, f"download the events of {repo}", ref=repo)
    run.path.mkdir(parents=True, exist_ok=True)
    cfg.output.dir = str(run.path)  # the server chooses where a run lives, whatever the repo's copy says
    cfg.output.push_to = repo  # and the record speaks for the repo it was read from, and no other
    cfg.save(run.config)
    if events is not None:
        data = open(events, "rb").read()
        run.events.write_bytes(data[: data.rfind(b"\n") + 1])
    state, rec = run.state(), hub_run.record
    if rec.get("status") == "completed":
        run.append("push", what="adapter", repo_id=repo, url=f"{constants.ENDPOINT}/{repo}", commit="")
        run.finish("completed", step=rec.get("step") or state.step, metrics=rec.get("metrics") or {}, adapter=None)
        return
    if rec.get("status") == "cancelled":  # stopped before it started
        run.finish("cancelled", step=state.step, adapter=None)
        return
    pushed = bool(hub_checkpoint_steps(repo, token))
    # The card says queued until the final push; the events pushed with its checkpoints say how far it got.
    doing = f"training (step {state.step})" if state.started is not None or state.step else "waiting in the queue"
    hint = (f"Resume it: it continues from its newest checkpoint on {repo} (branch {CHECKPOINT_BRANCH})." if pushed
            else "Submit it again: it pushed no checkpoint to continue from.")
    run.finish("failed", {"kind": "interrupted", "message": f"the Space restarted while this job was {doing}", "hint": hint},
               step=state.step, adapter=None)


def _checked_config(repo: str, raw: bytes) -> RunConfig:
    """The repo's run config, validated like any visitor's input (it is the visitor's own file: they may have edited
    it). What it may point at is checked again at resume, by the submit pipeline.

    Raises:
        ConfigError: not a valid run config.
    """
    from phi3space import config

    try:
        return config.loads(raw.decode("utf-8", errors="replace"))
    except Phi3SpaceError as exc:
        raise ConfigError([f"{repo} holds no valid run config ({exc.message})"], "It is not listed among your runs.") from None


def created_at(hub_run: HubRun) -> float:
    """When the run's job was submitted, as its record says (now, when it does not)."""
    return float(hub_run.record.get("created") or time.time())


__all__ = ["HubRun", "JOB_ENV", "OWNER_ENV", "RECORD_KEY", "RECORD_TAG", "hub_runs", "job_record",
           "publish_queued", "rebuild", "record"]


def card_config(repo_id: str, token: str | bool | None) -> Path:
    """The run config pushed beside an adapter's card (``config.yaml``): what "Train again" fills the form from
    (``token``: as huggingface_hub takes it; False for none, None for this machine's login).

    Raises:
        HubError / AuthError: no such repo, no access, or it holds no run config (not a phi3space adapter).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from phi3space.errors import HubError
    from phi3space.refs import is_repo_id

    if not is_repo_id(repo_id):
        raise HubError(f"{repo_id!r} is not a Hub repo ID (owner/name)", "Open the link from an adapter's card.")
    def fetch() -> str | None:
        try:
            return hf_hub_download(repo_id, RunDir.CONFIG, token=token)
        except EntryNotFoundError:
            return None

    path = call(fetch, "download run config", ref=repo_id)
    if path is None:
        raise HubError(f"{repo_id} has no {RunDir.CONFIG}: it was not trained with phi3space",
                       "Open Train again from the card of an adapter phi3space trained.")
    return Path(path)
